#pragma once
// The connection table: fixed bucket count and entry limit, both directions hashed, a timer
// wheel for expiry, eviction when full and the event stream. Single-threaded: one table
// belongs to one thread (shard by hash for more).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "table/big_array.hpp"
#include "table/entry.hpp"
#include "table/settings.hpp"
#include "table/tuple.hpp"

namespace ctsync::table {

class ConnTable;

// The hash index is an array of cache lines. Each holds up to 10 nodes (entry index << 1 |
// direction: both tuples of an entry are indexed) with a 16-bit tag from the hash, so a
// lookup reads one line, compares tags, and touches only the entry whose tag matches. A full
// line overflows into the next (linear probing by lines); `overflow` counts the nodes that
// passed over a line, so a lookup stops at the first line without a match and without
// overflow.
struct alignas(64) HashLine {
  static constexpr int kSlots = 10;
  static constexpr uint16_t kStuck = 0xffff;  // overflow saturates there and stays (still correct)
  uint16_t tags[kSlots];                      // 0 = free
  uint16_t overflow;
  uint16_t unused;
  uint32_t nodes[kSlots];
};
static_assert(sizeof(HashLine) == 64);

// Bit 2*s is set for each slot s of `l` whose tag equals `tag`: the eight first tags are
// compared at once with SSE2 (part of every x86-64), the last two one by one.
inline uint32_t tagMatches(const HashLine& l, uint16_t tag) {
#if defined(__SSE2__)
  const __m128i eq = _mm_cmpeq_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(l.tags)),
                                     _mm_set1_epi16(static_cast<short>(tag)));
  uint32_t m = static_cast<uint32_t>(_mm_movemask_epi8(eq)) & 0x5555u;
#else
  uint32_t m = 0;
  for (int s = 0; s < 8; ++s) m |= uint32_t{l.tags[s] == tag} << (2 * s);
#endif
  m |= (uint32_t{l.tags[8] == tag} << 16) | (uint32_t{l.tags[9] == tag} << 18);
  return m;
}

// find() compares (l3, l4, zone) and each direction's ports and IPv4 addresses as packed words.
static_assert(offsetof(Entry, l4) == offsetof(Entry, l3) + 1 &&
              offsetof(Entry, zone) == offsetof(Entry, l3) + 2);

enum class EventType : uint8_t {
  kNew,      // entry confirmed (first packet passed)
  kUpdate,   // state change, first reply, assured, ... (`mask` says which: ev::*)
  kDestroy,  // expired, evicted or deleted; the entry is still readable during the callback
  kRefresh,  // only the expiry moved, by more than TableSettings::refreshPercent (not a kernel
             // event: replication uses it to keep replica timeouts accurate)
};

// Receives every event synchronously, on the table's thread. Must not modify the table.
class EventSink {
 public:
  virtual ~EventSink() = default;
  virtual void onEvent(EventType type, uint32_t mask, const ConnTable& table, uint32_t index,
                       Nanos now) = 0;
};

struct TableCounters {
  uint64_t inserted = 0;
  uint64_t expired = 0;
  uint64_t deleted = 0;       // removed before their time (destroy(): kills, evictions, GC)
  uint64_t earlyDropped = 0;  // entries evicted to make room
  uint64_t insertFailed = 0;  // table full and nothing evictable
  uint64_t gcDropped = 0;     // dropped by the 95 % garbage collector
  uint64_t searched = 0;      // chain nodes visited by lookups
};

class ConnTable {
 public:
  struct Hit {
    uint32_t index;
    Dir dir;
  };

  ConnTable(const TableSettings& settings, uint64_t hashSeed);
  ~ConnTable();
  ConnTable(const ConnTable&) = delete;
  ConnTable& operator=(const ConnTable&) = delete;

  // Not owned; may be null. Events fire from confirm(), notify(), destroy(), expire() and
  // setTimeout().
  void setEventSink(EventSink* sink) { sink_ = sink; }

  uint64_t hash(const Tuple& t, uint16_t zone) const;

  // The packed form of a tuple that find() compares against entries.
  struct Key {
    uint32_t ports;
    uint32_t meta;
    uint64_t addrs;  // IPv4 only
    const Tuple* tuple;
  };
  static Key key(const Tuple& t, uint16_t zone) {
    Key k;
    const uint16_t portPair[2] = {t.sport, t.dport};
    std::memcpy(&k.ports, portPair, 4);
    k.meta = packMeta(t.l3, t.l4, zone);
    k.addrs = 0;
    if (t.l3 == L3::kIpv4) {
      std::memcpy(&k.addrs, t.src.bytes.data(), 4);
      std::memcpy(reinterpret_cast<uint8_t*>(&k.addrs) + 4, t.dst.bytes.data(), 4);
    }
    k.tuple = &t;
    return k;
  }

  // Lookup of a confirmed entry by either of its tuples. Inline: it is most of a packet's cost.
  std::optional<Hit> find(const Tuple& t, uint16_t zone, uint64_t hash) const {
    const Key k = key(t, zone);
    const uint16_t tag = tagOf(hash);
    for (uint64_t line = hash, probes = 0; probes <= lineMask_; ++line, ++probes) {
      const HashLine& l = lines_[line & lineMask_];
      for (uint32_t m = tagMatches(l, tag); m != 0; m &= m - 1) {
        const uint32_t n = l.nodes[__builtin_ctz(m) >> 1];
        if (nodeMatches(entries_[n >> 1], n & 1, k)) return Hit{n >> 1, static_cast<Dir>(n & 1)};
      }
      if (l.overflow == 0) break;
    }
    return std::nullopt;
  }

  // Batch helpers, each a hint for a later find() with the same hash: prefetch() the hash
  // line; prefetchEntry() (once the line has arrived) prefetches the entries whose tag matches.
  [[gnu::always_inline]] void prefetch(uint64_t hash) const {
    __builtin_prefetch(&lines_[hash & lineMask_]);
  }
  [[gnu::always_inline]] void prefetchEntry(uint64_t hash) const {
    const HashLine& l = lines_[hash & lineMask_];
    for (uint32_t m = tagMatches(l, tagOf(hash)); m != 0; m &= m - 1) {
      prefetchWhole(l.nodes[__builtin_ctz(m) >> 1] >> 1);
    }
  }

  // Takes a free entry for a new flow (not yet visible to find()). When the table is full the
  // eviction policy runs, which may destroy other entries. Empty when nothing could be evicted.
  std::optional<uint32_t> allocate(const Tuple& orig, const Tuple& reply, uint16_t zone,
                                   uint64_t origHash, Nanos now);
  // Gives back an entry from allocate() that was never confirmed. No events.
  void discard(uint32_t index);
  // Replaces the reply tuple of an allocated entry that is not yet confirmed (NAT setup).
  // Family and protocol stay as allocated.
  void setReply(uint32_t index, const Tuple& reply);
  // Makes an allocated entry visible, sets its timeout and fires NEW.
  void confirm(uint32_t index, Nanos timeout, Nanos now);
  // Refreshes the entry's timeout (scaled by the adaptive policy); fires REFRESH when due.
  void setTimeout(uint32_t index, Nanos timeout, Nanos now, bool quiet = false) {
    // The per-packet case inline: the expiry moves later and no REFRESH is due.
    Entry& e = entries_[index];
    const Nanos expiry = now + scaled(timeout);
    if (expiry >= e.expiry &&
        (quiet || (static_cast<uint64_t>(expiry) >> kRefreshShift) <= e.refreshAt)) {
      e.expiry = expiry;
      return;
    }
    setTimeoutSlow(index, timeout, now, quiet);
  }
  // Fires UPDATE with `mask` and records the announced expiry.
  void notify(uint32_t index, uint32_t mask, Nanos now);
  // Removes a confirmed entry now (DESTROY).
  void destroy(uint32_t index, Nanos now);
  // Destroys every entry whose expiry is <= now. Cheap when nothing is due.
  void expire(Nanos now);
  // Removes everything (DESTROY for each).
  void clear(Nanos now);

  Entry& entry(uint32_t index) { return entries_[index]; }
  const Entry& entry(uint32_t index) const { return entries_[index]; }
  EntryMeta& meta(uint32_t index) { return metas_[index]; }
  const EntryMeta& meta(uint32_t index) const { return metas_[index]; }
  Tuple tuple(const Entry& e, Dir dir) const;

  uint32_t size() const { return count_; }
  uint32_t capacity() const { return settings_.maxEntries; }
  uint64_t hashSlots() const { return uint64_t{lineMask_ + 1} * HashLine::kSlots; }
  const TableCounters& counters() const { return counters_; }
  const TableSettings& settings() const { return settings_; }
  // Bytes held for entries, buckets and the IPv6 pool (for the memory benchmark).
  size_t memoryBytes() const;

  // Calls f(index) for each confirmed entry, in hash order. `f` must not change the table.
  template <typename F>
  void forEach(F&& f) const {
    for (uint32_t i = 0; i <= lineMask_; ++i) {
      const HashLine& l = lines_[i];
      for (int s = 0; s < HashLine::kSlots; ++s) {
        if (l.tags[s] != 0 && (l.nodes[s] & 1) == 0) f(l.nodes[s] >> 1);
      }
    }
  }

  // The by-source index NAT keeps as the kernel's nf_nat_bysource: every confirmed entry with
  // status::kSrcNat, keyed by its original source (address, port, protocol, zone). Calls
  // f(index) for each entry whose original tuple has `orig`'s source, protocol and `zone`,
  // newest first, until f returns false. `f` must not change the table.
  template <typename F>
  void forEachSameSource(const Tuple& orig, uint16_t zone, F&& f) const {
    if (srcHeads_.empty()) return;
    for (uint32_t i = srcHeads_[sourceHash(orig, zone) & srcMask_]; i != kNil; i = srcNext_[i]) {
      const Entry& e = entries_[i];
      if (e.l4 != orig.l4 || e.zone != zone || e.l3 != orig.l3 || e.port[0] != orig.sport) continue;
      const bool same = e.l3 == L3::kIpv4 ? std::memcmp(&e.addr[0], orig.src.bytes.data(), 4) == 0
                                          : v6Pool_[e.addr[0]][0] == orig.src;
      if (same && !f(i)) return;
    }
  }
  // A hint for a later forEachSameSource(orig, zone): fetches its chain head.
  void prefetchSource(const Tuple& orig, uint16_t zone) const {
    if (!srcHeads_.empty()) __builtin_prefetch(&srcHeads_[sourceHash(orig, zone) & srcMask_]);
  }
  // Entries in the by-source index (for tests and the memory benchmark).
  uint32_t sourceIndexed() const { return srcCount_; }

  // Labels live in a side store: they are rare and set by rules, not by packets.
  void setLabels(uint32_t index, const std::array<uint8_t, 16>& labels);
  std::array<uint8_t, 16> labels(uint32_t index) const;

 private:
  bool nodeMatches(const Entry& e, uint32_t d, const Key& k) const {
    uint32_t ep, em;
    std::memcpy(&ep, &e.port[2 * d], 4);
    std::memcpy(&em, &e.l3, 4);
    if (ep != k.ports || em != k.meta) return false;
    if (e.l3 == L3::kIpv4) {
      uint64_t ea;
      std::memcpy(&ea, &e.addr[2 * d], 8);
      return ea == k.addrs;
    }
    const auto& a = v6Pool_[e.addr[0]];
    return a[2 * d] == k.tuple->src && a[2 * d + 1] == k.tuple->dst;
  }
  // A packet touches the whole Entry (tuples, counters, TCP state): fetch both its lines.
  // Always inlined: GCC sees a function that only prefetches as free of side effects and
  // deletes calls to it before inlining them.
  [[gnu::always_inline]] void prefetchWhole(uint32_t index) const {
    const char* p = reinterpret_cast<const char*>(&entries_[index]);
    __builtin_prefetch(p);
    __builtin_prefetch(p + 64);
  }
  static uint16_t tagOf(uint64_t hash) {
    const auto t = static_cast<uint16_t>(hash >> 48);
    return t == 0 ? 1 : t;  // 0 marks a free slot
  }
  // Calls f(index) for each node in lines [first, first + count): an entry whose two nodes
  // both lie there comes twice.
  template <typename F>
  void forLines(uint64_t first, uint32_t count, F&& f) const {
    count = std::min(count, lineMask_ + 1);
    for (uint32_t i = 0; i < count; ++i) {
      const HashLine& l = lines_[(first + i) & lineMask_];
      for (int s = 0; s < HashLine::kSlots; ++s) {
        if (l.tags[s] != 0) f(l.nodes[s] >> 1);
      }
    }
  }
  static uint32_t packMeta(L3 l3, uint8_t l4, uint16_t zone) {
    uint8_t b[4] = {static_cast<uint8_t>(l3), l4, 0, 0};
    std::memcpy(b + 2, &zone, 2);
    uint32_t v;
    std::memcpy(&v, b, 4);
    return v;
  }
  void link(uint32_t index);
  void unlink(uint32_t index);
  uint64_t sourceHash(const Tuple& orig, uint16_t zone) const;
  void sourceLink(uint32_t index);
  void sourceUnlink(uint32_t index);
  void release(uint32_t index);
  bool evict(uint64_t origHash, Nanos now);
  bool evictKernel(uint64_t origHash, Nanos now);
  bool evictClosingFirst(uint64_t origHash, Nanos now);
  void gcStep(Nanos now);
  Nanos scaled(Nanos timeout) const {
    return settings_.adaptiveEnd == 0 ? timeout : scaledAdaptive(timeout);
  }
  Nanos scaledAdaptive(Nanos timeout) const;
  void setTimeoutSlow(uint32_t index, Nanos timeout, Nanos now, bool quiet);
  void announce(Entry& e, Nanos timeout) const;
  void fire(EventType type, uint32_t mask, uint32_t index, Nanos now);

  // Timer wheel.
  void wheelInsert(uint32_t index);
  void wheelRemove(uint32_t index);
  void processSlot(uint32_t slot, Nanos now);
  void expireAll(Nanos now);
  void fileOrDue(uint32_t index, Nanos now);
  void destroyDetached(uint32_t index, Nanos when);
  bool oldEnough(uint32_t index, Nanos now) const;

  TableSettings settings_;
  uint64_t seed_[2];
  uint32_t lineMask_ = 0;
  BigArray lineMemory_;
  BigArray entryMemory_;
  BigArray metaMemory_;
  HashLine* lines_ = nullptr;
  EntryMeta* metas_ = nullptr;
  Entry* entries_ = nullptr;  // zeroed mapping: pages are touched only when used
  uint32_t highWater_ = 0;    // entries [0, highWater_) have been handed out at least once
  uint32_t freeHead_ = kNil;
  uint32_t count_ = 0;      // confirmed entries
  uint32_t allocated_ = 0;  // confirmed + unconfirmed
  std::vector<std::array<Addr, 4>> v6Pool_;
  std::vector<uint32_t> v6Free_;
  std::unordered_map<uint32_t, std::array<uint8_t, 16>> labels_;
  // By-source index: chains of entry indexes through srcNext_ (one word per entry, pages
  // touched only by NAT), heads allocated at the first source-NATed entry.
  std::vector<uint32_t> srcHeads_;
  uint32_t srcMask_ = 0;
  uint32_t srcCount_ = 0;
  BigArray srcNextMemory_;
  uint32_t* srcNext_ = nullptr;

  std::vector<uint32_t> wheel_;  // slot heads
  uint64_t cursorTick_ = 0;      // every tick below this one has been processed
  Nanos currentMin_ = 0;         // lower bound of expiries filed in the cursor's slot
  bool wheelStarted_ = false;
  std::vector<uint32_t> dueScratch_;
  uint32_t gcLine_ = 0;

  EventSink* sink_ = nullptr;
  TableCounters counters_;
};

}  // namespace ctsync::table
