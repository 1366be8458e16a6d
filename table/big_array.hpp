#pragma once
// Zeroed memory for the table's large arrays, from anonymous mappings that ask for transparent
// huge pages: a table of a million entries is touched at random, and with 4 KiB pages nearly
// every lookup would also miss the TLB. Pages are only backed once written.
#include <cstddef>
#include <utility>

namespace ctsync::table {

class BigArray {
 public:
  BigArray() = default;
  explicit BigArray(size_t bytes);  // throws std::bad_alloc when the mapping fails
  ~BigArray();
  BigArray(BigArray&& other) noexcept : data_(other.data_), bytes_(other.bytes_) {
    other.data_ = nullptr;
    other.bytes_ = 0;
  }
  BigArray& operator=(BigArray&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(bytes_, other.bytes_);
    return *this;
  }
  BigArray(const BigArray&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace ctsync::table
