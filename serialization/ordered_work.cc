#include "serialization/ordered_work.h"

#include <atomic>
#include <exception>
#include <map>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace mto {

void run_in_order(size_t count, unsigned threads, const std::function<void(size_t)>& work) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mutex;
  std::map<size_t, std::exception_ptr> errors;
  auto worker = [&] {
    for (size_t i = next++; i < count && !failed; i = next++) {
      try {
        work(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        errors.emplace(i, std::current_exception());
        failed = true;
      }
    }
  };
  std::vector<std::thread> helpers;
  for (unsigned t = 1; t < threads; ++t) {
    try {
      helpers.emplace_back(worker);
    } catch (const std::system_error&) {
      break;  // no thread to be had: the ones started (or this one alone) do the work
    }
  }
  worker();
  for (auto& helper : helpers) helper.join();
  if (!errors.empty()) std::rethrow_exception(errors.begin()->second);
}

}  // namespace mto
