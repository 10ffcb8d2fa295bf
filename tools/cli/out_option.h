#pragma once

#include <string>

#include "distributed/communicator.h"

namespace mto {
namespace cli {

// Checks, before any work, that the save at the end of a command can write `out` (the
// value of its --out) without losing anything, as serialization's check_replaceable does:
// a training or a search must not run for an hour to be refused at its save. Rank 0
// checks; every rank throws its error. Collective over `world`.
void check_out(Communicator& world, const std::string& out);

// Whether `a` and `b` name the same directory (lexically, or as the same existing file).
bool same_directory(const std::string& a, const std::string& b);

}  // namespace cli
}  // namespace mto
