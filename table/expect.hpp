#pragma once
// The tracker's expectations: connections a helper announced (an FTP PORT, a TFTP request) that
// are RELATED to their master when they open. The rules of Linux's nf_conntrack_expect.c:
//  - An expectation matches a tuple when every field its mask keeps equals the tuple's, in its
//    zone. The destination (address, port, protocol) is never masked, so the table is indexed
//    by it; the source may be (FTP: any port of the server; TFTP: any port at all).
//  - A new expectation that matches the same tuples as one already held (same tuple and mask
//    under both masks) replaces it when both have the same master, and is refused (kClash)
//    otherwise; a helper may hold at most `maxPerMaster` (its policy's max_expected) per master
//    and class: the oldest of that master is evicted first; the table holds at most `maxTotal`
//    (nf_conntrack_expect_max): past it a new one is refused (kFull).
//  - One that matches a new flow's first packet is used: removed, unless PERMANENT; an
//    INACTIVE one never matches. All end with their master and on their timeout.
// One instance per tracker; no locks, no I/O. An insert scans the table (expiry, the master's
// oldest), which the bound keeps small (4 096); a wheel comes with the tracker's use of it.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "table/tuple.hpp"
#include "table/types.hpp"

namespace ctsync::table {

struct Expectation {
  Tuple tuple;  // the expected connection's original tuple; fields the mask clears are zero
  Tuple mask;   // all-ones where the field must match
  uint32_t master = 0;  // the master's entry index in its ConnTable
  uint16_t zone = 0;
  uint8_t helper = 0;  // table::helperCode()
  uint8_t cls = 0;     // the helper's expectation class
  uint32_t flags = 0;  // NF_CT_EXPECT_* (1 permanent, 2 inactive, 4 userspace)
  Nanos expires = 0;
  // NAT of the RELATED flow (nf_nat_follow_master): the saved address and port, their direction.
  std::optional<Tuple> nat;
  uint8_t natDir = 0;
};

enum class ExpectInsert : uint8_t { kInserted, kReplaced, kEvicted, kClash, kFull };

class ExpectTable {
 public:
  static constexpr uint32_t kDefaultMax = 4096;  // nf_conntrack_expect_max on this kernel

  explicit ExpectTable(uint32_t maxTotal = kDefaultMax) : maxTotal_(maxTotal) {}

  // nf_ct_expect_related: see the top of the file. `maxPerMaster` 0 means no limit.
  ExpectInsert insert(const Expectation& e, uint32_t maxPerMaster, Nanos now);
  // The expectation `t` (a new flow's original tuple) matches in `zone`, taken: removed unless
  // permanent. Expired ones are dropped on the way.
  std::optional<Expectation> take(const Tuple& t, uint16_t zone, Nanos now);
  // The master ended: its expectations go. Returns how many.
  size_t removeMaster(uint32_t master);
  // Drops the expectations whose timeout passed; returns how many.
  size_t expire(Nanos now);

  size_t size() const { return size_; }
  size_t countOf(uint32_t master) const;
  // Calls f(const Expectation&) for each live one, in no order.
  template <typename F>
  void forEach(F&& f) const {
    for (const auto& [k, v] : byDst_) {
      for (const Slot& s : v) f(s.e);
    }
  }

 private:
  struct Slot {
    Expectation e;
    uint64_t seq;  // insertion order, for evicting the oldest of a master
  };
  static uint64_t dstKey(const Tuple& t, uint16_t zone);
  static bool matches(const Expectation& e, const Tuple& t, uint16_t zone);
  static bool sameExpectation(const Expectation& a, const Expectation& b);
  void eraseAt(uint64_t key, size_t i);

  uint32_t maxTotal_;
  size_t size_ = 0;
  uint64_t nextSeq_ = 1;
  // Destination key -> the expectations for it (a handful at most: one per source pattern).
  std::unordered_map<uint64_t, std::vector<Slot>> byDst_;
  std::unordered_map<uint32_t, uint32_t> perMaster_;
};

}  // namespace ctsync::table
