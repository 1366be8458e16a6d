#pragma once
// The connection table: fixed bucket count and entry limit, both directions hashed, a timer
// wheel for expiry, eviction when full and the event stream. Single-threaded: one table
// belongs to one thread (shard by hash for more).
#include <cstddef>
#include <cstdint>
#include <cstring>
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
  uint64_t deleted = 0;
  uint64_t earlyDropped = 0;     // entries evicted to make room
  uint64_t insertFailed = 0;     // table full and nothing evictable
  uint64_t gcDropped = 0;        // dropped by the 95 % garbage collector
  uint64_t searched = 0;         // chain nodes visited by lookups
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
    for (uint32_t n = buckets_[hash & mask_]; n != kNil;) {
      const Entry& e = entries_[n >> 1];
      if (nodeMatches(e, n & 1, k)) return Hit{n >> 1, static_cast<Dir>(n & 1)};
      n = e.hnext[n & 1];
    }
    return std::nullopt;
  }

  // Batch helpers, each a hint for a later find() with the same hash: prefetch() the bucket
  // head; prefetchEntry() (once the head has arrived) reads it and prefetches its entry.
  [[gnu::always_inline]] void prefetch(uint64_t hash) const {
    __builtin_prefetch(&buckets_[hash & mask_]);
  }
  void prefetchEntry(uint64_t hash) const;

  // Takes a free entry for a new flow (not yet visible to find()). When the table is full the
  // eviction policy runs, which may destroy other entries. Empty when nothing could be evicted.
  std::optional<uint32_t> allocate(const Tuple& orig, const Tuple& reply, uint16_t zone,
                                   uint64_t origHash, Nanos now);
  // Gives back an entry from allocate() that was never confirmed. No events.
  void discard(uint32_t index);
  // Makes an allocated entry visible, sets its timeout and fires NEW.
  void confirm(uint32_t index, Nanos timeout, Nanos now);
  // Refreshes the entry's timeout (scaled by the adaptive policy); fires REFRESH when due.
  void setTimeout(uint32_t index, Nanos timeout, Nanos now, bool quiet = false);
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
  Tuple tuple(const Entry& e, Dir dir) const;

  uint32_t size() const { return count_; }
  uint32_t capacity() const { return settings_.maxEntries; }
  uint32_t bucketCount() const { return mask_ + 1; }
  const TableCounters& counters() const { return counters_; }
  const TableSettings& settings() const { return settings_; }
  // Bytes held for entries, buckets and the IPv6 pool (for the memory benchmark).
  size_t memoryBytes() const;

  // Calls f(index) for each confirmed entry, in bucket order.
  template <typename F>
  void forEach(F&& f) const {
    for (uint32_t b = 0; b <= mask_; ++b) {
      for (uint32_t n = buckets_[b]; n != kNil; n = entries_[n >> 1].hnext[n & 1]) {
        if ((n & 1) == 0) f(n >> 1);
      }
    }
  }

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
  // A packet touches the whole entry (tuples, counters, TCP state): fetch every cache line.
  // Always inlined: GCC sees a function that only prefetches as free of side effects and
  // deletes calls to it before inlining them.
  [[gnu::always_inline]] void prefetchWhole(uint32_t index) const {
    const char* p = reinterpret_cast<const char*>(&entries_[index]);
    __builtin_prefetch(p);
    __builtin_prefetch(p + 64);
    __builtin_prefetch(p + 128);
    __builtin_prefetch(p + sizeof(Entry) - 1);
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
  void release(uint32_t index);
  bool evict(uint64_t origHash, Nanos now);
  bool evictKernel(uint64_t origHash, Nanos now);
  bool evictClosingFirst(uint64_t origHash, Nanos now);
  void gcStep(Nanos now);
  Nanos scaled(Nanos timeout) const;
  void fire(EventType type, uint32_t mask, uint32_t index, Nanos now);

  // Timer wheel.
  void wheelInsert(uint32_t index);
  void wheelRemove(uint32_t index);
  void processSlot(uint32_t slot, Nanos now);
  void expireAll(Nanos now);

  TableSettings settings_;
  uint64_t seed_[2];
  uint32_t mask_ = 0;
  BigArray bucketMemory_;
  BigArray entryMemory_;
  uint32_t* buckets_ = nullptr;
  Entry* entries_ = nullptr;       // zeroed mapping: pages are touched only when used
  uint32_t highWater_ = 0;         // entries [0, highWater_) have been handed out at least once
  uint32_t freeHead_ = kNil;
  uint32_t count_ = 0;             // confirmed entries
  uint32_t allocated_ = 0;         // confirmed + unconfirmed
  std::vector<std::array<Addr, 4>> v6Pool_;
  std::vector<uint32_t> v6Free_;
  std::unordered_map<uint32_t, std::array<uint8_t, 16>> labels_;

  std::vector<uint32_t> wheel_;    // slot heads
  uint64_t cursorTick_ = 0;        // every tick below this one has been processed
  Nanos currentMin_ = 0;           // lower bound of expiries filed in the cursor's slot
  bool wheelStarted_ = false;
  std::vector<uint32_t> dueScratch_;
  uint32_t gcBucket_ = 0;

  EventSink* sink_ = nullptr;
  TableCounters counters_;
};

}  // namespace ctsync::table
