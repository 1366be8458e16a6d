#include "table/expect.hpp"

#include <algorithm>

namespace ctsync::table {
namespace {

Addr andAddr(const Addr& a, const Addr& m) {
  Addr out;
  for (size_t i = 0; i < out.bytes.size(); ++i) {
    out.bytes[i] = static_cast<uint8_t>(a.bytes[i] & m.bytes[i]);
  }
  return out;
}

// `t` with every field cleared that `mask` does not keep (the destination is always kept).
Tuple masked(const Tuple& t, const Tuple& mask) {
  Tuple out = t;
  out.src = andAddr(t.src, mask.src);
  out.sport = static_cast<uint16_t>(t.sport & mask.sport);
  return out;
}

Tuple intersect(const Tuple& a, const Tuple& b) {
  Tuple out = a;
  out.src = andAddr(a.src, b.src);
  out.sport = static_cast<uint16_t>(a.sport & b.sport);
  return out;
}

}  // namespace

uint64_t ExpectTable::dstKey(const Tuple& t, uint16_t zone) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over what is never masked
  auto mix = [&h](uint8_t b) { h = (h ^ b) * 0x100000001b3ull; };
  for (uint8_t b : t.dst.bytes) mix(b);
  mix(static_cast<uint8_t>(t.dport >> 8));
  mix(static_cast<uint8_t>(t.dport));
  mix(t.l4);
  mix(static_cast<uint8_t>(t.l3));
  mix(static_cast<uint8_t>(zone >> 8));
  mix(static_cast<uint8_t>(zone));
  return h;
}

bool ExpectTable::matches(const Expectation& e, const Tuple& t, uint16_t zone) {
  if (e.zone != zone || (e.flags & 2u) != 0) return false;  // INACTIVE never matches
  return masked(t, e.mask) == e.tuple;
}

bool ExpectTable::sameExpectation(const Expectation& a, const Expectation& b) {
  return a.zone == b.zone && a.tuple == b.tuple && a.mask == b.mask;
}

void ExpectTable::eraseAt(uint64_t key, size_t i) {
  auto it = byDst_.find(key);
  const uint32_t master = it->second[i].e.master;
  it->second.erase(it->second.begin() + static_cast<std::ptrdiff_t>(i));
  if (it->second.empty()) byDst_.erase(it);
  if (auto m = perMaster_.find(master); m != perMaster_.end() && --m->second == 0) {
    perMaster_.erase(m);
  }
  --size_;
}

ExpectInsert ExpectTable::insert(const Expectation& in, uint32_t maxPerMaster, Nanos now) {
  expire(now);
  Expectation e = in;
  e.tuple = masked(in.tuple, in.mask);
  const uint64_t key = dstKey(e.tuple, e.zone);
  ExpectInsert result = ExpectInsert::kInserted;
  if (auto it = byDst_.find(key); it != byDst_.end()) {
    for (size_t i = 0; i < it->second.size(); ++i) {
      const Expectation& held = it->second[i].e;
      if (sameExpectation(held, e)) {
        // The same connection announced again: the master's own replaces it, another's is
        // refused (EALREADY).
        if (held.master != e.master || held.cls != e.cls) return ExpectInsert::kClash;
        eraseAt(key, i);
        result = ExpectInsert::kReplaced;
        break;
      }
      // Overlapping patterns (equal under both masks) for different connections: EBUSY.
      if (held.zone == e.zone &&
          intersect(masked(held.tuple, e.mask), held.mask) ==
              intersect(masked(e.tuple, held.mask), e.mask)) {
        return ExpectInsert::kClash;
      }
    }
  }
  if (maxPerMaster != 0 && countOf(e.master) >= maxPerMaster) {
    // evict_oldest_expect: the master's oldest of the same class makes room.
    uint64_t oldestKey = 0;
    size_t oldestIndex = 0;
    uint64_t oldestSeq = UINT64_MAX;
    for (const auto& [k, v] : byDst_) {
      for (size_t i = 0; i < v.size(); ++i) {
        if (v[i].e.master == e.master && v[i].e.cls == e.cls && v[i].seq < oldestSeq) {
          oldestSeq = v[i].seq;
          oldestKey = k;
          oldestIndex = i;
        }
      }
    }
    if (oldestSeq == UINT64_MAX) return ExpectInsert::kFull;
    eraseAt(oldestKey, oldestIndex);
    if (result == ExpectInsert::kInserted) result = ExpectInsert::kEvicted;
  }
  if (size_ >= maxTotal_) return ExpectInsert::kFull;
  byDst_[key].push_back(Slot{e, nextSeq_++});
  ++perMaster_[e.master];
  ++size_;
  return result;
}

std::optional<Expectation> ExpectTable::take(const Tuple& t, uint16_t zone, Nanos now) {
  const uint64_t key = dstKey(t, zone);
  auto it = byDst_.find(key);
  if (it == byDst_.end()) return std::nullopt;
  for (size_t i = 0; i < it->second.size(); ++i) {
    const Expectation& e = it->second[i].e;
    if (e.expires <= now) {
      eraseAt(key, i);
      return take(t, zone, now);  // the vector changed: look again (bounded by its size)
    }
    if (!matches(e, t, zone)) continue;
    Expectation out = e;
    if ((e.flags & 1u) == 0) eraseAt(key, i);  // used, unless PERMANENT
    return out;
  }
  return std::nullopt;
}

size_t ExpectTable::removeMaster(uint32_t master) {
  size_t removed = 0;
  for (auto it = byDst_.begin(); it != byDst_.end();) {
    auto& v = it->second;
    const size_t before = v.size();
    v.erase(std::remove_if(v.begin(), v.end(), [&](const Slot& s) { return s.e.master == master; }),
            v.end());
    removed += before - v.size();
    it = v.empty() ? byDst_.erase(it) : std::next(it);
  }
  perMaster_.erase(master);
  size_ -= removed;
  return removed;
}

size_t ExpectTable::expire(Nanos now) {
  size_t removed = 0;
  for (auto it = byDst_.begin(); it != byDst_.end();) {
    auto& v = it->second;
    for (size_t i = 0; i < v.size();) {
      if (v[i].e.expires <= now) {
        if (auto m = perMaster_.find(v[i].e.master); m != perMaster_.end() && --m->second == 0) {
          perMaster_.erase(m);
        }
        v.erase(v.begin() + static_cast<std::ptrdiff_t>(i));
        ++removed;
      } else {
        ++i;
      }
    }
    it = v.empty() ? byDst_.erase(it) : std::next(it);
  }
  size_ -= removed;
  return removed;
}

size_t ExpectTable::countOf(uint32_t master) const {
  const auto it = perMaster_.find(master);
  return it == perMaster_.end() ? 0 : it->second;
}

}  // namespace ctsync::table
