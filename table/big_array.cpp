#include "table/big_array.hpp"

#include <sys/mman.h>

#include <new>

namespace ctsync::table {

BigArray::BigArray(size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  // Advice only: where transparent huge pages are off this changes nothing.
  if (bytes >= (size_t{2} << 20)) madvise(p, bytes, MADV_HUGEPAGE);
  data_ = p;
}

BigArray::~BigArray() {
  if (data_ != nullptr) munmap(data_, bytes_);
}

}  // namespace ctsync::table
