#pragma once

#include <functional>

#include "distributed/communicator.h"

namespace mto {

// Runs `step` on every rank of `communicator` and makes its outcome common: if `step`
// throws on any rank, every rank throws. The failing rank rethrows its own exception; the
// others throw the same mto error type with the lowest failing rank's message and
// "(on rank R)" appended. Collective: keeps ranks from waiting forever in a later
// collective for a rank that failed alone. A step that broke the communicator (a collective
// of its own timed out) rethrows that error at once.
void run_on_every_rank(Communicator& communicator, const std::function<void()>& step);

// run_on_every_rank for a step that makes a value (data a rank loads on its own, from its
// own files): returns what `step` returned on this rank, or throws on every rank.
template <typename T, typename Step>
T make_on_every_rank(Communicator& communicator, Step step) {
  T out{};
  run_on_every_rank(communicator, [&] { out = step(); });
  return out;
}

}  // namespace mto
