#pragma once
// Hashing that is part of the protocol: key hashes pick digest ranges and digest items are
// summed per range, so every node and every build must compute the same values (std::hash
// promises neither). Internal to replication/.
#include <cstdint>

#include "table/tuple.hpp"

namespace ctsync::replication::wirehash {

// murmur3's finaliser.
inline uint64_t fmix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

inline uint64_t mixIn(uint64_t h, uint64_t word) {
  return fmix64(h ^ (word * 0x9e3779b97f4a7c15ULL)) + 0x632be59bd9b4e019ULL;
}

// Little-endian load from bytes, so the hash does not depend on the host's byte order.
inline uint64_t load64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

inline uint64_t hashTuple(uint64_t h, const table::Tuple& t) {
  h = mixIn(h, uint64_t{static_cast<uint8_t>(t.l3)} | (uint64_t{t.l4} << 8) |
                   (uint64_t{t.sport} << 16) | (uint64_t{t.dport} << 32));
  h = mixIn(h, load64(t.src.bytes.data()));
  h = mixIn(h, load64(t.src.bytes.data() + 8));
  h = mixIn(h, load64(t.dst.bytes.data()));
  return mixIn(h, load64(t.dst.bytes.data() + 8));
}

}  // namespace ctsync::replication::wirehash
