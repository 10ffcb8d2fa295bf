#include "serialization/write_behind.h"

#include "serialization/local_cores.h"

namespace mto {

WriteBehind::WriteBehind() : thread_([this] { run(); }) {}

WriteBehind::~WriteBehind() {
  {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [this] { return !busy_; });
    stop_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

void WriteBehind::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    changed_.wait(lock, [this] { return busy_ || stop_; });
    if (!busy_) return;
    lock.unlock();
    std::exception_ptr error;
    try {
      file_->write_at(data_, size_, offset_);
      file_->start_writeback_of_windows(offset_, size_);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    error_ = error;
    busy_ = false;
    changed_.notify_all();
  }
}

void WriteBehind::drain() {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [this] { return !busy_; });
  if (error_) {
    std::exception_ptr error = error_;
    error_ = nullptr;
    std::rethrow_exception(error);
  }
}

void WriteBehind::submit(File& file, const char* data, size_t size, uint64_t offset) {
  drain();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    file_ = &file;
    data_ = data;
    size_ = size;
    offset_ = offset;
    busy_ = true;
  }
  changed_.notify_all();
}

bool WriteBehind::worthwhile() { return cores_per_local_rank() >= 2; }

}  // namespace mto
