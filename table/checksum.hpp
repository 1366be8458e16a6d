#pragma once
// The Internet checksum (RFC 1071) and its incremental update (RFC 1624, eqn. 3:
// HC' = ~(~HC + ~m + m')), on big-endian 16-bit fields in packet memory. The update gives the
// same bytes as the kernel's csum_replace*/inet_proto_csum_replace* for a packet whose
// checksum is complete (CHECKSUM_NONE), which is every packet ctsync sees.
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ctsync::table::csum {

inline uint16_t load16(const uint8_t* p) {
  return static_cast<uint16_t>((p[0] << 8) | p[1]);
}
inline void store16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}

// Adds 16-bit big-endian words to an unfolded one's complement sum.
inline uint32_t addWords(uint32_t acc, const uint8_t* p, size_t bytes) {
  for (size_t i = 0; i + 1 < bytes; i += 2) acc += load16(p + i);
  if (bytes & 1) acc += uint32_t{p[bytes - 1]} << 8;
  return acc;
}

// Replaces `bytes` (an even count: 2, 4 or 16) of covered data, old -> new, in the checksum at
// `check`. Both spans are big-endian data as it sits in the packet. As the kernel's 32-bit
// csum_sub(~csum_unfold(check), ...) the running sum starts biased by 0xffff0000 (a negative
// zero), so it is never zero and the result is never 0xffff: the same canonical form a full
// recomputation gives.
inline void replace(uint8_t* check, const uint8_t* oldData, const uint8_t* newData, size_t bytes) {
  uint64_t acc = 0xffff0000u + static_cast<uint16_t>(~load16(check));
  for (size_t i = 0; i < bytes; i += 2) {
    acc += static_cast<uint16_t>(~load16(oldData + i));
    acc += load16(newData + i);
  }
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  store16(check, static_cast<uint16_t>(~acc));
}

inline void replace16(uint8_t* check, uint16_t oldValue, uint16_t newValue) {
  uint8_t o[2], n[2];
  store16(o, oldValue);
  store16(n, newValue);
  replace(check, o, n, 2);
}

// The checksum of `bytes` of data plus an already summed (pseudo) header, ready to store.
inline uint16_t compute(const uint8_t* p, size_t bytes, uint32_t pseudo = 0) {
  // Sum in 32-bit chunks of words so a 64 KiB datagram cannot overflow the accumulator.
  uint64_t acc = pseudo;
  for (size_t off = 0; off < bytes; off += 32768) {
    const size_t n = bytes - off < 32768 ? bytes - off : 32768;
    acc += addWords(0, p + off, n);
  }
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  return static_cast<uint16_t>(~acc);
}

}  // namespace ctsync::table::csum
