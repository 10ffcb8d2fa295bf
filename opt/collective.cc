#include "opt/collective.h"

#include <exception>
#include <string>
#include <vector>

#include <c10/util/Exception.h>

#include "absl/strings/str_cat.h"
#include "distributed/distributed_error.h"
#include "opt/errors.h"
#include "serialization/checkpoint_error.h"

namespace mto {
namespace {

// The exception as a type tag and its message.
std::string encode(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const CheckpointError& e) {
    return absl::StrCat("C", e.what());
  } catch (const ConfigError& e) {
    return absl::StrCat("F", e.what());
  } catch (const StateError& e) {
    return absl::StrCat("S", e.what());
  } catch (const ApplyModeError& e) {
    return absl::StrCat("A", e.what());
  } catch (const ModeError& e) {
    return absl::StrCat("M", e.what());
  } catch (const DistributedError& e) {
    return absl::StrCat("D", e.what());
  } catch (const c10::Error& e) {
    // LibTorch's own message, without the C++ stack trace its what() appends.
    return absl::StrCat("R", e.what_without_backtrace());
  } catch (const std::exception& e) {
    return absl::StrCat("R", e.what());
  } catch (...) {
    return "Runknown error";
  }
}

[[noreturn]] void throw_decoded(const std::string& encoded, int rank) {
  const std::string message = absl::StrCat(encoded.substr(1), " (on rank ", rank, ")");
  switch (encoded[0]) {
    case 'C':
      throw CheckpointError(message);
    case 'F':
      throw ConfigError(message);
    case 'S':
      throw StateError(message);
    case 'A':
      throw ApplyModeError(message);
    case 'M':
      throw ModeError(message);
    case 'D':
      throw DistributedError(message);
    default:
      throw std::runtime_error(message);
  }
}

}  // namespace

void run_on_every_rank(Communicator& communicator, const std::function<void()>& step) {
  std::exception_ptr error;
  std::string encoded;
  try {
    step();
  } catch (...) {
    error = std::current_exception();
    encoded = encode(error);
  }
  // A step whose own collective broke the communicator (a peer died) cannot agree with
  // anyone: its error, a timeout naming the collective, is the one to report.
  if (communicator.world_size() > 1 && !(error && communicator.broken())) {
    const std::vector<std::string> outcomes = communicator.all_gather(encoded);
    if (!error) {
      for (size_t r = 0; r < outcomes.size(); ++r) {
        if (!outcomes[r].empty()) throw_decoded(outcomes[r], static_cast<int>(r));
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace mto
