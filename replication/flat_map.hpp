#pragma once
// Flat containers behind ReplicaTable (private to replication/): an open-addressing index from
// 32-bit hashes to 32-bit ids, a slab that gives elements stable ids and never moves them, and
// a timer wheel of (deadline, id) items. None of them knows what an element is: the caller
// compares keys, and checks that a timer it gets back is still current. One thread each.
#include <algorithm>
#include <array>
#include <bit>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "table/big_array.hpp"

namespace ctsync::replication::flat {

// Zeroed memory, aligned to a cache line: from the heap when small (sanitizers see into it),
// from a mapping that asks for transparent huge pages when large (a million-flow index is read
// at random, and with 4 KiB pages nearly every read would also miss the TLB). Mapped pages are
// only backed once written, so reserving costs address space, not memory.
class Block {
 public:
  static constexpr size_t kAlign = 64;

  Block() = default;
  explicit Block(size_t bytes) : bytes_(bytes) {
    if (bytes >= kMapFrom) {
      mapped_ = table::BigArray(bytes);
      data_ = mapped_.data();
    } else if (bytes > 0) {
      heap_.reset(static_cast<std::byte*>(::operator new (bytes, std::align_val_t{kAlign})));
      std::fill_n(heap_.get(), bytes, std::byte{0});
      data_ = heap_.get();
    }
  }
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  static constexpr size_t kMapFrom = size_t{2} << 20;
  struct Free {
    void operator()(std::byte* p) const { ::operator delete (p, std::align_val_t{kAlign}); }
  };
  std::unique_ptr<std::byte, Free> heap_;
  table::BigArray mapped_;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Starts fetching, for writing, every cache line of [p, p + bytes), each once. A hint: it
// changes nothing. (Asking twice for a line already on its way measurably slows a stream of
// random fetches: the requests queue behind each other.)
inline void prefetchForWrite(const void* p, size_t bytes) {
  constexpr uintptr_t kLine = 64;
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) & ~(kLine - 1);
  const uintptr_t last = (reinterpret_cast<uintptr_t>(p) + bytes - 1) & ~(kLine - 1);
  for (uintptr_t a = first; a <= last; a += kLine) {
    __builtin_prefetch(reinterpret_cast<const void*>(a), 1);
  }
}

// A multimap from 32-bit hashes to 32-bit ids (< 2^32 - 1) by open addressing with linear
// probing: 8 bytes a slot, at most 3/4 full, so a lookup reads one or two cache lines and
// compares the stored hash before asking the caller about the id. Erasing shifts the rest of
// the probe run back (no tombstones: runs do not lengthen with churn). The hash's low bits pick
// the slot, so growing needs no access to the elements. Ids under one hash come back in no
// particular order.
class FlatIndex {
 public:
  static constexpr uint32_t kNone = UINT32_MAX;

  FlatIndex() { rehash(kMinCapacity); }

  // Room for `n` ids without growing.
  void reserve(size_t n) {
    const size_t want = std::bit_ceil(n + n / 3 + 1);
    if (want > capacity()) rehash(want);
  }

  // The first id under `hash` for which match(id) is true, or kNone.
  template <typename Match>
  uint32_t find(uint32_t hash, Match&& match) const {
    for (size_t i = hash & mask_;; i = (i + 1) & mask_) {
      const Slot s = slots_[i];
      if (s.idPlus1 == 0) return kNone;
      if (s.hash == hash && match(s.idPlus1 - 1)) return s.idPlus1 - 1;
    }
  }

  // Calls f(id) for every id under `hash`. `f` must not change the index.
  template <typename F>
  void forEach(uint32_t hash, F&& f) const {
    for (size_t i = hash & mask_;; i = (i + 1) & mask_) {
      const Slot s = slots_[i];
      if (s.idPlus1 == 0) return;
      if (s.hash == hash) f(s.idPlus1 - 1);
    }
  }

  // Starts fetching the slot where a lookup of `hash` begins (a hint; changes nothing).
  void prefetch(uint32_t hash) const { __builtin_prefetch(&slots_[hash & mask_]); }

  // Adds (hash, id). The caller keeps pairs unique.
  void insert(uint32_t hash, uint32_t id) {
    assert(id != kNone);
    if ((size_ + 1) * 4 > capacity() * 3) rehash(capacity() * 2);
    place(hash, id);
    ++size_;
  }

  // Removes (hash, id), which must be present.
  void erase(uint32_t hash, uint32_t id) {
    size_t hole = hash & mask_;
    while (!(slots_[hole].hash == hash && slots_[hole].idPlus1 == id + 1)) {
      assert(slots_[hole].idPlus1 != 0);  // absent
      hole = (hole + 1) & mask_;
    }
    // Every later slot of the run whose home is not in (hole, j] may move back into the hole.
    for (size_t j = (hole + 1) & mask_; slots_[j].idPlus1 != 0; j = (j + 1) & mask_) {
      const size_t home = slots_[j].hash & mask_;
      if (((j - home) & mask_) >= ((j - hole) & mask_)) {
        slots_[hole] = slots_[j];
        hole = j;
      }
    }
    slots_[hole] = Slot{};
    --size_;
  }

  size_t size() const { return size_; }
  size_t capacity() const { return mask_ + 1; }
  size_t memoryBytes() const { return block_.bytes(); }

 private:
  static constexpr size_t kMinCapacity = 16;
  struct Slot {
    uint32_t hash = 0;
    uint32_t idPlus1 = 0;  // 0: empty, so zeroed memory is an empty index
  };

  void place(uint32_t hash, uint32_t id) {
    size_t i = hash & mask_;
    while (slots_[i].idPlus1 != 0) i = (i + 1) & mask_;
    slots_[i] = Slot{hash, id + 1};
  }

  void rehash(size_t capacity) {
    Block old = std::move(block_);
    const Slot* oldSlots = slots_;
    const size_t oldCapacity = slots_ == nullptr ? 0 : mask_ + 1;
    block_ = Block(capacity * sizeof(Slot));
    slots_ = static_cast<Slot*>(block_.data());
    mask_ = capacity - 1;
    for (size_t i = 0; i < oldCapacity; ++i) {
      if (oldSlots[i].idPlus1 != 0) place(oldSlots[i].hash, oldSlots[i].idPlus1 - 1);
    }
  }

  Block block_;
  Slot* slots_ = nullptr;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// Elements addressed by 32-bit ids that never move, so references stay valid while others are
// added. Freed ids are reused, last freed first; a freed element stays in place, readable,
// until its id is allocated again, for the caller to mark unused (stale ids held elsewhere can
// then be recognised). Storage grows in blocks of doubling size (the first holds 256
// elements): a small slab stays small and a large one is never copied.
template <typename T>
class Slab {
  static_assert(std::is_trivially_destructible_v<T> && alignof(T) <= Block::kAlign);

 public:
  // An id whose element is value-initialised: a freed one when there is one, else a new one.
  uint32_t allocate() {
    uint32_t id;
    if (!free_.empty()) {
      id = free_.back();
      free_.pop_back();
    } else {
      assert(end_ < UINT32_MAX - 1);
      id = end_++;
      if (base_[locate(id).first] == nullptr) addBlock(locate(id).first);
    }
    const auto [b, offset] = locate(id);
    ::new (static_cast<void*>(base_[b] + offset)) T();
    return id;
  }
  void free(uint32_t id) {
    assert(id < end_);
    free_.push_back(id);
  }

  // Starts fetching, for writing, the element that the allocation `ahead` allocations from now
  // will return (0: the next one), unless that needs a block not there yet. A hint: an element
  // read right after allocate() wrote it would otherwise wait for memory.
  void prefetchAllocation(size_t ahead) const {
    uint64_t id;
    if (ahead < free_.size()) {
      id = free_[free_.size() - 1 - ahead];
    } else {
      id = uint64_t{end_} + (ahead - free_.size());
      if (id >= UINT32_MAX) return;
    }
    const auto [b, offset] = locate(static_cast<uint32_t>(id));
    if (base_[b] != nullptr) prefetchForWrite(base_[b] + offset, sizeof(T));
  }

  T& operator[](uint32_t id) {
    assert(id < end_);
    const auto [b, offset] = locate(id);
    return base_[b][offset];
  }
  const T& operator[](uint32_t id) const {
    assert(id < end_);
    const auto [b, offset] = locate(id);
    return base_[b][offset];
  }

  // Ids below end() have been allocated at least once (freed ones included).
  uint32_t end() const { return end_; }
  size_t size() const { return end_ - free_.size(); }  // ids in use

  // Maps the blocks for ids below `n` (backed by memory once written).
  void reserve(size_t n) {
    for (uint32_t b = 0; n > 0 && b < kBlocks && blockStart(b) < n; ++b) {
      if (base_[b] == nullptr) addBlock(b);
    }
  }

  // Calls f(id, element) for every id below end(), in id order (memory order). `f` may change
  // elements and free ids, but not allocate.
  template <typename F>
  void forEach(F&& f) {
    for (uint32_t b = 0; b < kBlocks && blockStart(b) < end_; ++b) {
      const uint32_t n = std::min<uint32_t>(blockSize(b), end_ - blockStart(b));
      for (uint32_t i = 0; i < n; ++i) f(blockStart(b) + i, base_[b][i]);
    }
  }
  template <typename F>
  void forEach(F&& f) const {
    for (uint32_t b = 0; b < kBlocks && blockStart(b) < end_; ++b) {
      const uint32_t n = std::min<uint32_t>(blockSize(b), end_ - blockStart(b));
      for (uint32_t i = 0; i < n; ++i) f(blockStart(b) + i, std::as_const(base_[b][i]));
    }
  }

  size_t memoryBytes() const {
    size_t bytes = free_.capacity() * sizeof(uint32_t);
    for (const Block& b : blocks_) bytes += b.bytes();
    return bytes;
  }

 private:
  static constexpr int kFirstBits = 8;
  static constexpr uint32_t kBlocks = 32 - kFirstBits + 1;  // covers every uint32_t id

  // Block 0 holds ids [0, 256); block b >= 1 holds [2^(b+7), 2^(b+8)).
  static std::pair<uint32_t, uint32_t> locate(uint32_t id) {
    if (id < (1u << kFirstBits)) return {0, id};
    const int msb = std::bit_width(id) - 1;
    return {static_cast<uint32_t>(msb - kFirstBits + 1), id - (1u << msb)};
  }
  static uint32_t blockStart(uint32_t b) { return b == 0 ? 0 : 1u << (b + kFirstBits - 1); }
  static uint32_t blockSize(uint32_t b) {
    return b == 0 ? 1u << kFirstBits : 1u << (b + kFirstBits - 1);
  }
  void addBlock(uint32_t b) {
    blocks_.emplace_back(size_t{blockSize(b)} * sizeof(T));
    base_[b] = static_cast<T*>(blocks_.back().data());
  }

  std::vector<Block> blocks_;
  std::array<T*, kBlocks> base_{};
  std::vector<uint32_t> free_;
  uint32_t end_ = 0;
};

// Timers as (deadline, id) items in a hashed wheel of 2^tickShift-nanosecond ticks. A push
// is an append; popDue visits the slot of each tick that passed (each slot once after a long
// jump) and, every half revolution, the items beyond the wheel's horizon, which wait in a list
// of their own. Items are never taken out early: like a lazily-deleted heap, the caller checks
// that an item it gets back is still current.
class DeadlineWheel {
 public:
  struct Item {
    int64_t at;
    uint32_t id;
  };

  // Default: ticks of ~1.07 s, a revolution of ~73 minutes.
  explicit DeadlineWheel(int tickShift = 30, uint32_t slots = 4096)
      : shift_(tickShift), slots_(slots) {
    assert(std::has_single_bit(slots) && slots >= 2 && tickShift >= 0 && tickShift < 63);
  }

  // `now` matters only to the first push: the wheel starts at its tick.
  void push(const Item& item, int64_t now) {
    if (popping_) {
      deferred_.push_back(item);
      return;
    }
    if (!started_) start(now);
    const int64_t t = tickOf(item.at);
    if (t >= horizon_) {
      far_.push_back(item);
    } else {
      place(item, t);
    }
  }

  // Calls f(item) for every item with at <= now, and drops it; later items stay. `f` may push:
  // items it pushes are placed after the call (due ones come back from the next popDue).
  template <typename F>
  void popDue(int64_t now, F&& f) {
    if (!started_) start(now);
    assert(!popping_);
    popping_ = true;
    const int64_t nowTick = tickOf(now);
    const int64_t revolution = static_cast<int64_t>(slots_.size());
    while (cur_ < nowTick) {
      if (near_ == 0 || nowTick - cur_ >= revolution) {
        // Every item in the slots is due: empty them all, then jump.
        if (near_ != 0) {
          for (uint32_t s = 0; s < slots_.size(); ++s) popSlot(s, now, f);
        }
        cur_ = nowTick;
        refill();
        break;
      }
      popSlot(slotOf(cur_), now, f);
      ++cur_;
      if (horizon_ - cur_ < revolution / 2) refill();
    }
    popSlot(slotOf(cur_), now, f);
    popping_ = false;
    for (const Item& item : deferred_) push(item, now);
    deferred_.clear();
  }

  size_t size() const { return near_ + far_.size() + deferred_.size(); }

  // Drops every item; the wheel keeps its position. Not from within popDue.
  void clear() {
    assert(!popping_);
    for (std::vector<Item>& s : slots_) std::vector<Item>().swap(s);
    std::vector<Item>().swap(far_);
    near_ = 0;
  }

  size_t memoryBytes() const {
    size_t bytes = (slots_.capacity() + 1) * sizeof(std::vector<Item>) +
                   (far_.capacity() + deferred_.capacity()) * sizeof(Item);
    for (const std::vector<Item>& s : slots_) bytes += s.capacity() * sizeof(Item);
    return bytes;
  }

 private:
  int64_t tickOf(int64_t at) const { return at >> shift_; }
  size_t slotOf(int64_t tick) const {
    return static_cast<size_t>(static_cast<uint64_t>(tick) & (slots_.size() - 1));
  }
  void start(int64_t now) {
    started_ = true;
    cur_ = tickOf(now);
    horizon_ = cur_ + static_cast<int64_t>(slots_.size());
  }
  // Items of ticks already passed go to the current tick's slot, visited by every popDue.
  void place(const Item& item, int64_t tick) {
    slots_[slotOf(std::max(tick, cur_))].push_back(item);
    ++near_;
  }
  // Moves the items now within one revolution of cur_ from the far list into the slots.
  void refill() {
    horizon_ = cur_ + static_cast<int64_t>(slots_.size());
    size_t kept = 0;
    for (const Item& item : far_) {
      const int64_t t = tickOf(item.at);
      if (t < horizon_) {
        place(item, t);
      } else {
        far_[kept++] = item;
      }
    }
    far_.resize(kept);
    if (far_.capacity() > 4096 && kept < far_.capacity() / 4) far_.shrink_to_fit();
  }
  template <typename F>
  void popSlot(size_t s, int64_t now, F& f) {
    std::vector<Item>& items = slots_[s];
    size_t kept = 0;
    for (const Item& item : items) {
      if (item.at <= now) {
        f(item);
      } else {
        items[kept++] = item;
      }
    }
    near_ -= items.size() - kept;
    items.resize(kept);
    if (items.capacity() > 4096 && kept < items.capacity() / 4) items.shrink_to_fit();
  }

  int shift_;
  std::vector<std::vector<Item>> slots_;  // slot of tick t: t mod size
  std::vector<Item> far_;                 // items of ticks >= horizon_
  std::vector<Item> deferred_;            // pushed during popDue
  int64_t cur_ = 0;      // the slots hold ticks [cur_, horizon_); cur_'s may be partly popped
  int64_t horizon_ = 0;  // <= cur_ + slots_.size()
  size_t near_ = 0;      // items in the slots
  bool started_ = false;
  bool popping_ = false;
};

}  // namespace ctsync::replication::flat
