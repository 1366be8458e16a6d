#pragma once
// One tracked connection, split by temperature: Entry is what every packet touches, EntryMeta
// the rest. IPv4 addresses are stored inline; an IPv6 entry keeps its four addresses in the
// table's side pool (so an IPv4 flow costs no 48 bytes of zeros). Read tuples through
// ConnTable::tuple().
#include <cstdint>

#include "table/tcp.hpp"
#include "table/tuple.hpp"
#include "table/types.hpp"

namespace ctsync::table {

inline constexpr uint32_t kNil = 0xffffffffu;
// Entry::refreshAt counts in units of 2^30 ns (about 1.07 s), so that the per-packet check is a
// shift and a compare. Absolute times up to 2^62 ns fit (year 2116 on the Unix epoch).
inline constexpr int kRefreshShift = 30;

// What a packet touches, in exactly two aligned cache lines: the lookup words, status,
// expiry, counters and TCP state. Everything else lives in EntryMeta at the same index.
struct alignas(64) Entry {
  uint32_t addr[4];  // IPv4 in network order: orig src, orig dst, reply src, reply dst.
                     // IPv6: addr[0] is the slot of the four addresses in the side pool.
  uint16_t port[4];  // orig sport, orig dport, reply sport, reply dport (host order)
  L3 l3;
  uint8_t l4;
  uint16_t zone;
  uint32_t status;  // status::* bits
  Nanos expiry;     // absolute time at which the entry dies
  uint64_t packets[2];
  uint64_t bytes[2];
  TcpConn tcp;  // only meaningful for TCP entries
  // REFRESH is due once expiry >> kRefreshShift passes this (see ConnTable::announce).
  uint32_t refreshAt;
};
static_assert(sizeof(Entry) == 128, "Entry must stay two cache lines");

// The rest of an entry: read when it is created, expires, is listed or replicated.
struct EntryMeta {
  Nanos start;  // creation time (kernel: timestamp extension; UDP: stream detection)
  uint32_t mark;
  uint32_t wheelNext;  // timer wheel links (entry indexes); the free list while unused
  uint32_t wheelPrev;  // kNil at a slot's head
  uint32_t filedTick;  // low 32 bits of the timer-wheel tick the entry is filed under
  uint32_t master;     // entry index of the master of a RELATED flow, kNil if none
  // Where replication records the entry's version: a hybrid logical clock, the node that
  // wrote it, and a generation bumped when a closed flow is reopened. The tracker zeroes them.
  uint16_t versionOrigin;
  uint16_t generation;
  uint64_t versionHlc;
};

// The memory target is 192 bytes per IPv4 flow including its share of the hash index.
static_assert(sizeof(Entry) + sizeof(EntryMeta) <= 168, "check the per-flow memory budget");

}  // namespace ctsync::table
