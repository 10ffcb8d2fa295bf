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

// Whether `inner` is the directory `outer` or lies inside it, once the symbolic links of the
// parts of both paths that exist are resolved.
bool is_within(const std::string& inner, const std::string& outer);

}  // namespace cli
}  // namespace mto
