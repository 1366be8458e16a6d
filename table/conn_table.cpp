#include "table/conn_table.hpp"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

namespace ctsync::table {
namespace {

constexpr int kTickShift = 25;          // a wheel tick is 2^25 ns, about 33.5 ms
constexpr uint32_t kWheelSlots = 8192;  // horizon about 275 s; later expiries are re-filed
constexpr uint32_t kEvictionLines = 8;  // as NF_CT_EVICTION_RANGE buckets, with a line as bucket
constexpr uint32_t kSmartEvictionLines = 4;
constexpr uint32_t kGcLinesPerStep = 8;
constexpr Nanos kNever = std::numeric_limits<Nanos>::max();

inline uint64_t mum(uint64_t a, uint64_t b) {
  const __uint128_t r = static_cast<__uint128_t>(a) * b;
  return static_cast<uint64_t>(r >> 64) ^ static_cast<uint64_t>(r);
}
inline uint32_t load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline uint64_t tickOf(Nanos t) {
  return t <= 0 ? 0 : static_cast<uint64_t>(t) >> kTickShift;
}
uint32_t roundUpPow2(uint32_t v) {
  uint32_t p = 1;
  while (p < v && p < (1u << 30)) p <<= 1;
  return p;
}

}  // namespace

ConnTable::ConnTable(const TableSettings& settings, uint64_t hashSeed) : settings_(settings) {
  if (settings_.maxEntries == 0) settings_.maxEntries = 1;
  if (settings_.maxEntries > (1u << 30)) settings_.maxEntries = 1u << 30;
  seed_[0] = mum(hashSeed ^ 0x9e3779b97f4a7c15ull, 0xbf58476d1ce4e5b9ull) | 1;
  seed_[1] = mum(hashSeed ^ 0x94d049bb133111ebull, 0x2545f4914f6cdd1dull) | 1;
  // At least `buckets` slots, and room for both nodes of every entry at 80 % of the slots.
  const uint64_t wantSlots =
      std::max<uint64_t>(settings_.buckets, uint64_t{settings_.maxEntries} * 2 * 10 / 8);
  const uint32_t lines = roundUpPow2(static_cast<uint32_t>(
      std::min<uint64_t>((wantSlots + HashLine::kSlots - 1) / HashLine::kSlots, 1u << 30)));
  lineMask_ = lines - 1;
  lineMemory_ = BigArray(size_t{lines} * sizeof(HashLine));  // zeroed: every slot free
  lines_ = static_cast<HashLine*>(lineMemory_.data());
  // Zeroed pages are handed out lazily, so an idle table costs no resident memory.
  entryMemory_ = BigArray(size_t{settings_.maxEntries} * sizeof(Entry));
  entries_ = static_cast<Entry*>(entryMemory_.data());
  metaMemory_ = BigArray(size_t{settings_.maxEntries} * sizeof(EntryMeta));
  metas_ = static_cast<EntryMeta*>(metaMemory_.data());
  wheel_.assign(kWheelSlots, kNil);
  srcNextMemory_ = BigArray(size_t{settings_.maxEntries} * sizeof(uint32_t));
  srcNext_ = static_cast<uint32_t*>(srcNextMemory_.data());
}

ConnTable::~ConnTable() = default;

uint64_t ConnTable::hash(const Tuple& t, uint16_t zone) const {
  uint64_t a;
  if (t.l3 == L3::kIpv4) {
    a = (uint64_t{load32(t.src.bytes.data())} << 32) | load32(t.dst.bytes.data());
  } else {
    a = mum(load64(t.src.bytes.data()) ^ seed_[1], load64(t.src.bytes.data() + 8) ^ seed_[0]) ^
        mum(load64(t.dst.bytes.data()) ^ seed_[0], load64(t.dst.bytes.data() + 8) ^ seed_[1]);
  }
  const uint64_t b = (uint64_t{t.sport} << 48) | (uint64_t{t.dport} << 32) |
                     (uint64_t{t.l4} << 24) | (uint64_t{static_cast<uint8_t>(t.l3)} << 16) | zone;
  return mum(a ^ seed_[0], b ^ seed_[1]);
}

Tuple ConnTable::tuple(const Entry& e, Dir dir) const {
  Tuple t;
  const int i = index(dir) * 2;
  t.l3 = e.l3;
  t.l4 = e.l4;
  t.sport = e.port[i];
  t.dport = e.port[i + 1];
  if (e.l3 == L3::kIpv4) {
    std::memcpy(t.src.bytes.data(), &e.addr[i], 4);
    std::memcpy(t.dst.bytes.data(), &e.addr[i + 1], 4);
  } else {
    t.src = v6Pool_[e.addr[0]][i];
    t.dst = v6Pool_[e.addr[0]][i + 1];
  }
  return t;
}

std::optional<uint32_t> ConnTable::allocate(const Tuple& orig, const Tuple& reply, uint16_t zone,
                                            uint64_t origHash, Nanos now) {
  if (allocated_ >= settings_.maxEntries && !evict(origHash, now)) {
    ++counters_.insertFailed;
    return std::nullopt;
  }
  uint32_t idx;
  if (freeHead_ != kNil) {
    idx = freeHead_;
    freeHead_ = metas_[idx].wheelNext;
  } else {
    idx = highWater_++;
  }
  ++allocated_;
  Entry& e = entries_[idx];
  e = Entry{};
  EntryMeta& m = metas_[idx];
  m = EntryMeta{};
  m.wheelNext = m.wheelPrev = kNil;
  m.master = kNil;
  m.start = now;
  e.l3 = orig.l3;
  e.l4 = orig.l4;
  e.zone = zone;
  e.port[0] = orig.sport;
  e.port[1] = orig.dport;
  e.port[2] = reply.sport;
  e.port[3] = reply.dport;
  if (orig.l3 == L3::kIpv4) {
    e.addr[0] = load32(orig.src.bytes.data());
    e.addr[1] = load32(orig.dst.bytes.data());
    e.addr[2] = load32(reply.src.bytes.data());
    e.addr[3] = load32(reply.dst.bytes.data());
  } else {
    uint32_t slot;
    if (!v6Free_.empty()) {
      slot = v6Free_.back();
      v6Free_.pop_back();
    } else {
      slot = static_cast<uint32_t>(v6Pool_.size());
      v6Pool_.emplace_back();
    }
    v6Pool_[slot] = {orig.src, orig.dst, reply.src, reply.dst};
    e.addr[0] = slot;
  }
  return idx;
}

void ConnTable::setReply(uint32_t idx, const Tuple& reply) {
  Entry& e = entries_[idx];
  e.port[2] = reply.sport;
  e.port[3] = reply.dport;
  if (e.l3 == L3::kIpv4) {
    e.addr[2] = load32(reply.src.bytes.data());
    e.addr[3] = load32(reply.dst.bytes.data());
  } else {
    v6Pool_[e.addr[0]][2] = reply.src;
    v6Pool_[e.addr[0]][3] = reply.dst;
  }
}

uint64_t ConnTable::sourceHash(const Tuple& orig, uint16_t zone) const {
  uint64_t a;
  if (orig.l3 == L3::kIpv4) {
    a = load32(orig.src.bytes.data());
  } else {
    a = mum(load64(orig.src.bytes.data()) ^ seed_[1], load64(orig.src.bytes.data() + 8) ^ seed_[0]);
  }
  const uint64_t b = (uint64_t{orig.sport} << 32) | (uint64_t{orig.l4} << 16) | zone;
  return mum(a ^ seed_[1], b ^ seed_[0]);
}

void ConnTable::sourceLink(uint32_t idx) {
  if (srcHeads_.empty()) {
    // As many heads as half the entry limit: chains stay short even when every flow is NATed.
    const uint32_t heads = roundUpPow2(std::max<uint32_t>(settings_.maxEntries / 2, 64));
    srcHeads_.assign(heads, kNil);
    srcMask_ = heads - 1;
  }
  uint32_t& head =
      srcHeads_[sourceHash(tuple(entries_[idx], Dir::kOriginal), entries_[idx].zone) & srcMask_];
  srcNext_[idx] = head;
  head = idx;
  ++srcCount_;
}

void ConnTable::sourceUnlink(uint32_t idx) {
  uint32_t* link =
      &srcHeads_[sourceHash(tuple(entries_[idx], Dir::kOriginal), entries_[idx].zone) & srcMask_];
  while (*link != kNil && *link != idx) link = &srcNext_[*link];
  if (*link == idx) {
    *link = srcNext_[idx];
    --srcCount_;
  }
}

void ConnTable::release(uint32_t idx) {
  Entry& e = entries_[idx];
  if (e.l3 == L3::kIpv6) v6Free_.push_back(e.addr[0]);
  if (e.status & status::kHasLabels) {
    labels_.erase(idx);
  }
  e.status = 0;
  metas_[idx].wheelNext = freeHead_;
  freeHead_ = idx;
  --allocated_;
}

void ConnTable::discard(uint32_t idx) {
  release(idx);
}

void ConnTable::link(uint32_t idx) {
  Entry& e = entries_[idx];
  for (uint32_t d = 0; d < 2; ++d) {
    const uint64_t h = hash(tuple(e, static_cast<Dir>(d)), e.zone);
    const uint16_t tag = tagOf(h);
    // There is always a free slot: the index holds 2 * maxEntries nodes at 80 % load.
    for (uint64_t line = h;; ++line) {
      HashLine& l = lines_[line & lineMask_];
      const auto free = std::find(std::begin(l.tags), std::end(l.tags), uint16_t{0});
      if (free != std::end(l.tags)) {
        *free = tag;
        l.nodes[free - std::begin(l.tags)] = (idx << 1) | d;
        break;
      }
      if (l.overflow != HashLine::kStuck) ++l.overflow;
    }
  }
}

void ConnTable::unlink(uint32_t idx) {
  Entry& e = entries_[idx];
  for (uint32_t d = 0; d < 2; ++d) {
    const uint32_t node = (idx << 1) | d;
    const uint64_t h = hash(tuple(e, static_cast<Dir>(d)), e.zone);
    const uint16_t tag = tagOf(h);
    for (uint64_t line = h, probes = 0; probes <= lineMask_; ++line, ++probes) {
      HashLine& l = lines_[line & lineMask_];
      int slot = -1;
      for (int s = 0; s < HashLine::kSlots; ++s) {
        if (l.tags[s] == tag && l.nodes[s] == node) slot = s;
      }
      if (slot >= 0) {
        l.tags[slot] = 0;
        // The lines before this one no longer have this node passing over them.
        for (uint64_t back = h; back != line; ++back) {
          HashLine& b = lines_[back & lineMask_];
          if (b.overflow != HashLine::kStuck) --b.overflow;
        }
        break;
      }
    }
  }
}

Nanos ConnTable::scaledAdaptive(Nanos timeout) const {
  const auto& s = settings_;
  if (s.adaptiveEnd <= s.adaptiveStart) return timeout;
  const double fill = 100.0 * count_ / s.maxEntries;
  if (fill <= s.adaptiveStart) return timeout;
  const double factor = (s.adaptiveEnd - fill) / (s.adaptiveEnd - s.adaptiveStart);
  if (factor <= 0) return 0;
  return static_cast<Nanos>(static_cast<double>(timeout) * factor);
}

void ConnTable::fire(EventType type, uint32_t mask, uint32_t idx, Nanos now) {
  if (sink_ != nullptr) sink_->onEvent(type, mask, *this, idx, now);
}

void ConnTable::confirm(uint32_t idx, Nanos timeout, Nanos now) {
  Entry& e = entries_[idx];
  e.status |= status::kConfirmed;
  const Nanos t = scaled(timeout);
  e.expiry = now + t;
  announce(e, t);
  if (!wheelStarted_) {
    wheelStarted_ = true;
    cursorTick_ = tickOf(now);
    currentMin_ = kNever;
  }
  link(idx);
  if (e.status & status::kSrcNat) sourceLink(idx);
  wheelInsert(idx);
  ++count_;
  ++counters_.inserted;
  fire(EventType::kNew, ev::kNew, idx, now);
}

void ConnTable::setTimeoutSlow(uint32_t idx, Nanos timeout, Nanos now, bool quiet) {
  Entry& e = entries_[idx];
  const Nanos t = scaled(timeout);
  const Nanos old = e.expiry;
  e.expiry = now + t;
  if (e.expiry < old) {
    // Shrinking: the entry may be filed too late; move it. Growing needs nothing: the wheel
    // re-files entries whose expiry moved when it reaches their slot.
    const uint64_t tick = std::max(tickOf(e.expiry), cursorTick_);
    const uint32_t filed = metas_[idx].filedTick;
    if (static_cast<int32_t>(static_cast<uint32_t>(tick) - filed) < 0) {
      wheelRemove(idx);
      wheelInsert(idx);
    } else if (filed == static_cast<uint32_t>(cursorTick_)) {
      currentMin_ = std::min(currentMin_, e.expiry);
    }
  }
  if (quiet || (static_cast<uint64_t>(e.expiry) >> kRefreshShift) <= e.refreshAt) return;
  announce(e, t);
  fire(EventType::kRefresh, 0, idx, now);
}

void ConnTable::notify(uint32_t idx, uint32_t mask, Nanos now) {
  Entry& e = entries_[idx];
  announce(e, e.expiry - now);
  fire(EventType::kUpdate, mask, idx, now);
}

// Listeners now know the entry's expiry; the next REFRESH is due once it moves on by more than
// refreshPercent of `timeout`.
void ConnTable::announce(Entry& e, Nanos timeout) const {
  if (settings_.refreshPercent == 0) {
    e.refreshAt = 0xffffffffu;
    return;
  }
  const Nanos due = e.expiry + timeout / 100 * settings_.refreshPercent;
  e.refreshAt =
      static_cast<uint32_t>(static_cast<uint64_t>(std::max<Nanos>(due, 0)) >> kRefreshShift);
}

void ConnTable::destroy(uint32_t idx, Nanos now) {
  wheelRemove(idx);
  destroyDetached(idx, now);
  ++counters_.deleted;
}

// DESTROY for an entry no longer in the wheel, then unindex and free it.
void ConnTable::destroyDetached(uint32_t idx, Nanos when) {
  entries_[idx].status |= status::kDying;
  fire(EventType::kDestroy, ev::kDestroy, idx, when);
  unlink(idx);
  if (entries_[idx].status & status::kSrcNat) sourceUnlink(idx);
  --count_;
  release(idx);
}

// --- timer wheel ---------------------------------------------------------------------------

void ConnTable::wheelInsert(uint32_t idx) {
  const Nanos expiry = entries_[idx].expiry;
  EntryMeta& m = metas_[idx];
  uint64_t tick = std::max(tickOf(expiry), cursorTick_);
  if (tick >= cursorTick_ + kWheelSlots) tick = cursorTick_ + kWheelSlots - 1;
  const uint32_t slot = static_cast<uint32_t>(tick) & (kWheelSlots - 1);
  m.filedTick = static_cast<uint32_t>(tick);
  m.wheelPrev = kNil;
  m.wheelNext = wheel_[slot];
  if (m.wheelNext != kNil) metas_[m.wheelNext].wheelPrev = idx;
  wheel_[slot] = idx;
  if (tick == cursorTick_) currentMin_ = std::min(currentMin_, expiry);
}

void ConnTable::wheelRemove(uint32_t idx) {
  EntryMeta& m = metas_[idx];
  if (m.wheelPrev != kNil) {
    metas_[m.wheelPrev].wheelNext = m.wheelNext;
  } else {
    wheel_[m.filedTick & (kWheelSlots - 1)] = m.wheelNext;
  }
  if (m.wheelNext != kNil) metas_[m.wheelNext].wheelPrev = m.wheelPrev;
  m.wheelNext = m.wheelPrev = kNil;
}

// Detaches the slot's list; due entries go to dueScratch_, the rest are filed again.
void ConnTable::processSlot(uint32_t slot, Nanos now) {
  uint32_t n = wheel_[slot];
  wheel_[slot] = kNil;
  while (n != kNil) {
    const uint32_t next = metas_[n].wheelNext;
    fileOrDue(n, now);
    n = next;
  }
}

void ConnTable::expire(Nanos now) {
  if (!wheelStarted_) return;
  const uint64_t nowTick = tickOf(now);
  const bool advanced = nowTick > cursorTick_;
  if (advanced) {
    if (nowTick - cursorTick_ >= kWheelSlots) {
      expireAll(now);
    } else {
      while (cursorTick_ < nowTick) {
        const uint32_t slot = static_cast<uint32_t>(cursorTick_) & (kWheelSlots - 1);
        ++cursorTick_;
        currentMin_ = kNever;
        processSlot(slot, now);
      }
      // The new current slot holds entries filed while it was in the future: their earliest
      // expiry is unknown, so look at it once.
      currentMin_ = now;
    }
  }
  if (now >= currentMin_) {
    currentMin_ = kNever;
    processSlot(static_cast<uint32_t>(cursorTick_) & (kWheelSlots - 1), now);
  }
  if (!dueScratch_.empty()) {
    // Fire DESTROY in expiry order, as a kernel that reaped at the exact time would.
    std::sort(dueScratch_.begin(), dueScratch_.end(), [this](uint32_t a, uint32_t b) {
      return entries_[a].expiry != entries_[b].expiry ? entries_[a].expiry < entries_[b].expiry
                                                      : a < b;
    });
    for (uint32_t idx : dueScratch_) {
      destroyDetached(idx, entries_[idx].expiry);
      ++counters_.expired;
    }
    dueScratch_.clear();
  }
  if (advanced) gcStep(now);
}

void ConnTable::expireAll(Nanos now) {
  std::vector<uint32_t> live;
  for (uint32_t s = 0; s < kWheelSlots; ++s) {
    for (uint32_t n = wheel_[s]; n != kNil;) {
      const uint32_t next = metas_[n].wheelNext;
      live.push_back(n);
      n = next;
    }
    wheel_[s] = kNil;
  }
  cursorTick_ = tickOf(now);
  currentMin_ = kNever;
  for (uint32_t idx : live) fileOrDue(idx, now);
}

// For an entry taken off the wheel: due now, or filed again where its expiry belongs.
void ConnTable::fileOrDue(uint32_t idx, Nanos now) {
  metas_[idx].wheelNext = metas_[idx].wheelPrev = kNil;
  if (entries_[idx].expiry <= now) {
    dueScratch_.push_back(idx);
  } else {
    wheelInsert(idx);
  }
}

void ConnTable::clear(Nanos now) {
  std::vector<uint32_t> all;
  forEach([&all](uint32_t idx) { all.push_back(idx); });
  for (uint32_t idx : all) destroy(idx, now);
}

// --- eviction ------------------------------------------------------------------------------

bool ConnTable::evict(uint64_t origHash, Nanos now) {
  return settings_.eviction == EvictionPolicy::kKernel ? evictKernel(origHash, now)
                                                       : evictClosingFirst(origHash, now);
}

// Entries that an eviction or the garbage collector may take: any entry under the kernel's
// policy; under closing-first only those past their minimum lifetime.
bool ConnTable::oldEnough(uint32_t idx, Nanos now) const {
  return settings_.eviction == EvictionPolicy::kKernel ||
         now - metas_[idx].start >= settings_.minLifetime;
}

bool ConnTable::evictKernel(uint64_t origHash, Nanos now) {
  // One line holds at most kSlots nodes, so at most kSlots distinct entries.
  std::array<uint32_t, HashLine::kSlots> victims;
  size_t count = 0;
  for (uint32_t i = 0; i < std::min(kEvictionLines, lineMask_ + 1) && count == 0; ++i) {
    forLines(origHash + i, 1, [&](uint32_t idx) {
      if ((entries_[idx].status & status::kAssured) != 0) return;
      if (std::find(victims.begin(), victims.begin() + count, idx) == victims.begin() + count) {
        victims[count++] = idx;
      }
    });
  }
  for (size_t i = 0; i < count; ++i) destroy(victims[i], now);
  counters_.earlyDropped += count;
  return count != 0;
}

bool ConnTable::evictClosingFirst(uint64_t origHash, Nanos now) {
  uint32_t closing = kNil;
  uint32_t unassured = kNil;
  forLines(origHash, kSmartEvictionLines, [&](uint32_t idx) {
    const Entry& e = entries_[idx];
    if (!oldEnough(idx, now)) return;
    if (e.l4 == proto::kTcp && tcpCanEarlyDrop(e.tcp)) {
      if (closing == kNil || e.expiry < entries_[closing].expiry) closing = idx;
    } else if ((e.status & status::kAssured) == 0) {
      if (unassured == kNil || metas_[idx].start < metas_[unassured].start) unassured = idx;
    }
  });
  const uint32_t victim = closing != kNil ? closing : unassured;
  if (victim == kNil) return false;
  destroy(victim, now);
  ++counters_.earlyDropped;
  return true;
}

// As the kernel's gc_worker once the table is 95 % full: drop what early drop could drop and
// TCP flows that are closing, a few lines per expiry step that advanced the wheel. Under
// closing-first the minimum lifetime holds here too.
void ConnTable::gcStep(Nanos now) {
  if (uint64_t{count_} * 100 < uint64_t{settings_.maxEntries} * 95) return;
  std::array<uint32_t, kGcLinesPerStep * HashLine::kSlots> doomed;
  size_t count = 0;
  const uint32_t steps = std::min(kGcLinesPerStep, lineMask_ + 1);
  forLines(gcLine_, steps, [&](uint32_t idx) {
    const Entry& e = entries_[idx];
    if (!oldEnough(idx, now)) return;
    if ((e.status & status::kAssured) == 0 || (e.l4 == proto::kTcp && tcpCanEarlyDrop(e.tcp))) {
      if (std::find(doomed.begin(), doomed.begin() + count, idx) == doomed.begin() + count) {
        doomed[count++] = idx;
      }
    }
  });
  gcLine_ = (gcLine_ + steps) & lineMask_;
  for (size_t i = 0; i < count; ++i) destroy(doomed[i], now);
  counters_.gcDropped += count;
}

// --- side stores ---------------------------------------------------------------------------

void ConnTable::setLabels(uint32_t idx, const std::array<uint8_t, 16>& labels) {
  labels_[idx] = labels;
  entries_[idx].status |= status::kHasLabels;
}

std::array<uint8_t, 16> ConnTable::labels(uint32_t idx) const {
  const auto it = labels_.find(idx);
  return it == labels_.end() ? std::array<uint8_t, 16>{} : it->second;
}

size_t ConnTable::memoryBytes() const {
  return size_t{settings_.maxEntries} * (sizeof(Entry) + sizeof(EntryMeta)) +
         size_t{lineMask_ + 1} * sizeof(HashLine) +
         v6Pool_.capacity() * sizeof(std::array<Addr, 4>) + wheel_.size() * sizeof(uint32_t) +
         (srcHeads_.empty() ? 0 : srcHeads_.size() * sizeof(uint32_t) + srcNextMemory_.bytes());
}

}  // namespace ctsync::table
