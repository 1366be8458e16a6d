// Convergence property: replicas fed the same records in any order, with any duplication, end
// identical, field by field, to each other, to a replica fed in version order, and to the merge
// rules evaluated directly on the set of records (the model below).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <variant>
#include <vector>

#include "replication/hlc.hpp"
#include "replication/replica_table.hpp"
#include "table/tcp.hpp"

namespace ctsync::replication {
namespace {

using table::seconds;
using table::TcpState;
namespace st = table::status;
using Rec = std::variant<FlowRecord, FlowDelete>;

constexpr Nanos kT0 = seconds(1'000'000);
constexpr int kSeeds = 500;

const Version& versionOf(const Rec& r) {
  return std::visit([](const auto& x) -> const Version& { return x.version; }, r);
}
const FlowKey& keyOf(const Rec& r) {
  return std::visit([](const auto& x) -> const FlowKey& { return x.key; }, r);
}

table::Tuple tcpTuple(uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport) {
  table::Tuple t;
  t.src = table::Addr::v4(src);
  t.dst = table::Addr::v4(dst);
  t.sport = sport;
  t.dport = dport;
  t.l4 = table::proto::kTcp;
  return t;
}

// ---- workload: random histories written by several nodes ----

constexpr uint8_t kProgress[] = {
    static_cast<uint8_t>(TcpState::kSynSent), static_cast<uint8_t>(TcpState::kSynSent2),
    static_cast<uint8_t>(TcpState::kSynRecv), static_cast<uint8_t>(TcpState::kEstablished),
    static_cast<uint8_t>(TcpState::kFinWait), static_cast<uint8_t>(TcpState::kCloseWait),
    static_cast<uint8_t>(TcpState::kLastAck), static_cast<uint8_t>(TcpState::kTimeWait),
    static_cast<uint8_t>(TcpState::kClose)};
constexpr uint32_t kStickyBits[] = {st::kSeenReply, st::kAssured, st::kSrcNat, st::kDstNat,
                                    st::kSrcNatDone};
constexpr uint32_t kOtherBits[] = {st::kFixedTimeout, st::kOffload, st::kHelper};

struct FlowTruth {
  FlowKey key;
  uint32_t gen = 0;
  size_t progress = 0;  // index into kProgress
  uint32_t status = st::kConfirmed;
  table::Tuple reply;
};

class Workload {
 public:
  Workload(uint32_t seed, int nodes, int flows) : rng_(seed), clocks_(static_cast<size_t>(nodes)) {
    for (int n = 0; n < nodes; ++n) physical_.push_back(1'000'000 + pick(0, 50));
    for (int f = 0; f < flows; ++f) {
      FlowTruth t;
      t.key.orig = tcpTuple(0x0a000001 + static_cast<uint32_t>(f % 3),
                            static_cast<uint16_t>(1000 + f), 0xc0a80001, 80);
      t.key.zone = static_cast<uint16_t>(f % 4 == 3 ? 1 : 0);
      t.reply = chooseReply(t.key);
      flows_.push_back(t);
    }
  }

  std::vector<Rec> run(int events) {
    for (int i = 0; i < events; ++i) step();
    return out_;
  }

 private:
  int pick(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  bool chance(int percent) { return pick(0, 99) < percent; }

  // Replies come from a small shared pool of NAT mappings so that conflicts are common.
  table::Tuple chooseReply(const FlowKey& k) {
    if (chance(40)) return *table::invertTuple(k.orig);
    return tcpTuple(0xc0a80001, 80, 0xcb007101, static_cast<uint16_t>(40000 + pick(0, 2)));
  }

  Version stamp(size_t node, uint32_t gen) {
    // Physical clocks drift, jump and sometimes step backwards.
    physical_[node] += static_cast<uint64_t>(pick(0, 4));
    if (chance(5)) physical_[node] -= static_cast<uint64_t>(pick(0, 20));
    return Version{gen, clocks_[node].now(physical_[node]), static_cast<uint16_t>(node)};
  }

  void step() {
    const size_t node = static_cast<size_t>(pick(0, static_cast<int>(clocks_.size()) - 1));
    FlowTruth& f = flows_[static_cast<size_t>(pick(0, static_cast<int>(flows_.size()) - 1))];
    const int op = pick(0, 99);
    if (op < 2 && !out_.empty() && std::holds_alternative<FlowRecord>(out_.back())) {
      // Two nodes configured with one id: same version, different content.
      FlowRecord twin = std::get<FlowRecord>(out_.back());
      twin.mark += 10;
      twin.status ^= st::kFixedTimeout | st::kAssured;
      out_.push_back(twin);
    } else if (op < 15 && !out_.empty()) {
      // A record from a peer arrives: causality between nodes.
      const Version& seen =
          versionOf(out_[static_cast<size_t>(pick(0, static_cast<int>(out_.size()) - 1))]);
      physical_[node] += 1;
      clocks_[node].observe(seen.hlc, physical_[node]);
    } else if (op < 25) {
      out_.push_back(FlowDelete{f.key, stamp(node, staleGen(f))});
    } else if (op < 33) {
      // Reopen: a new life with its own reply tuple and flags.
      ++f.gen;
      f.progress = 0;
      f.status = st::kConfirmed;
      f.reply = chooseReply(f.key);
      out_.push_back(upsert(f, node, f.gen));
    } else {
      if (chance(50) && f.progress + 1 < std::size(kProgress)) ++f.progress;
      if (chance(30)) f.status |= kStickyBits[pick(0, std::size(kStickyBits) - 1)];
      out_.push_back(upsert(f, node, staleGen(f)));
    }
  }

  // A node that has not heard of a reopen still writes the old generation (split brain).
  uint32_t staleGen(const FlowTruth& f) { return f.gen > 0 && chance(10) ? f.gen - 1 : f.gen; }

  FlowRecord upsert(const FlowTruth& f, size_t node, uint32_t gen) {
    FlowRecord r;
    r.key = f.key;
    r.reply = chance(5) ? chooseReply(f.key) : f.reply;  // a writer with another mapping
    r.status = f.status;
    r.tcpState = kProgress[f.progress];
    if (chance(20)) {
      // A stale writer: earlier TCP state, fewer flags.
      r.tcpState = kProgress[static_cast<size_t>(pick(0, static_cast<int>(f.progress)))];
      r.status = st::kConfirmed;
    }
    if (chance(30)) r.status |= kOtherBits[pick(0, std::size(kOtherBits) - 1)];
    r.tcpFlags[0] = static_cast<uint8_t>(pick(0, 255));
    r.tcpFlags[1] = static_cast<uint8_t>(pick(0, 255));
    r.tcpScale[0] = static_cast<uint8_t>(pick(0, 14));
    r.timeoutSec = static_cast<uint32_t>(pick(60, 432000));
    r.mark = static_cast<uint32_t>(pick(0, 3));
    r.labels[static_cast<size_t>(pick(0, 15))] = static_cast<uint8_t>(pick(0, 255));
    r.helper = static_cast<uint8_t>(pick(0, 2));
    if (chance(20)) r.master = tcpTuple(0x0a000009, 2121, 0xc0a80001, 21);
    r.version = stamp(node, gen);
    return r;
  }

  std::mt19937 rng_;
  std::vector<HybridClock> clocks_;
  std::vector<uint64_t> physical_;
  std::vector<FlowTruth> flows_;
  std::vector<Rec> out_;
};

// ---- the merge rules evaluated directly on a set of records ----

struct Expected {
  bool live = false;
  FlowRecord record;
  uint64_t createdHlc = 0;
  uint16_t createdNode = 0;
  bool natShadowed = false;
  std::optional<Version> tombstone;
};

struct KeyLess {
  bool operator()(const FlowKey& a, const FlowKey& b) const { return flowKeyLess(a, b); }
};
using State = std::map<FlowKey, Expected, KeyLess>;

State model(const std::vector<Rec>& recs) {
  std::map<FlowKey, std::vector<const Rec*>, KeyLess> byKey;
  for (const Rec& r : recs) byKey[keyOf(r)].push_back(&r);
  State out;
  for (const auto& [key, rs] : byKey) {
    uint32_t gen = 0;
    for (const Rec* r : rs) gen = std::max(gen, versionOf(*r).generation);
    const FlowRecord* base = nullptr;
    std::optional<Version> maxDel;
    uint32_t sticky = 0;
    uint8_t tcp = 0;
    Version creator{0, UINT64_MAX, UINT16_MAX};
    for (const Rec* r : rs) {
      if (versionOf(*r).generation != gen) continue;
      if (const auto* d = std::get_if<FlowDelete>(r)) {
        if (!maxDel || d->version > *maxDel) maxDel = d->version;
        continue;
      }
      const FlowRecord& u = std::get<FlowRecord>(*r);
      if (!base || u.version > base->version ||
          (u.version == base->version && contentLess(*base, u))) {
        base = &u;
      }
      sticky |= u.status & kStickyStatus;
      if (tcpProgress(u.tcpState) > tcpProgress(tcp)) tcp = u.tcpState;
      if (std::tie(u.version.hlc, u.version.node) < std::tie(creator.hlc, creator.node)) {
        creator = u.version;
      }
    }
    Expected e;
    e.live = base && (!maxDel || base->version > *maxDel);
    if (e.live) {
      e.record = *base;
      e.record.status |= sticky;
      e.record.tcpState = tcp;
      e.createdHlc = creator.hlc;
      e.createdNode = creator.node;
    } else {
      e.tombstone = maxDel;
    }
    out[key] = e;
  }
  // NAT: among live flows with one (zone, reply), the smallest (creator, key) wins.
  for (auto& [key, e] : out) {
    if (!e.live) continue;
    for (const auto& [other, o] : out) {
      if (!o.live || other == key || o.record.reply != e.record.reply || other.zone != key.zone) {
        continue;
      }
      if (std::make_tuple(o.createdHlc, o.createdNode) <
              std::make_tuple(e.createdHlc, e.createdNode) ||
          (o.createdHlc == e.createdHlc && o.createdNode == e.createdNode &&
           flowKeyLess(other, key))) {
        e.natShadowed = true;
      }
    }
  }
  return out;
}

State snapshot(const ReplicaTable& t, const State& keys) {
  State out;
  for (const auto& [key, unused] : keys) {
    Expected e;
    if (const auto f = t.get(key)) {
      e.live = true;
      e.record = f->record;
      e.createdHlc = f->createdHlc;
      e.createdNode = f->createdNode;
      e.natShadowed = f->natShadowed;
    } else {
      e.tombstone = t.tombstone(key);
    }
    out[key] = e;
  }
  return out;
}

std::string describe(const Version& v) {
  std::ostringstream s;
  s << "(" << v.generation << "," << v.hlc << "," << v.node << ")";
  return s.str();
}

// Field names that differ, or "" when equal.
std::string diff(const Expected& a, const Expected& b) {
  std::ostringstream s;
  if (a.live != b.live) s << " live " << a.live << "/" << b.live;
  if (a.tombstone != b.tombstone) s << " tombstone";
  if (a.natShadowed != b.natShadowed) s << " natShadowed " << a.natShadowed << "/" << b.natShadowed;
  if (a.createdHlc != b.createdHlc || a.createdNode != b.createdNode) s << " created";
  const FlowRecord &x = a.record, &y = b.record;
  if (!(x.reply == y.reply)) s << " reply";
  if (x.status != y.status) s << " status " << std::hex << x.status << "/" << y.status << std::dec;
  if (x.tcpState != y.tcpState) s << " tcpState " << int{x.tcpState} << "/" << int{y.tcpState};
  if (x.tcpFlags[0] != y.tcpFlags[0] || x.tcpFlags[1] != y.tcpFlags[1]) s << " tcpFlags";
  if (x.tcpScale[0] != y.tcpScale[0] || x.tcpScale[1] != y.tcpScale[1]) s << " tcpScale";
  if (x.timeoutSec != y.timeoutSec) s << " timeoutSec";
  if (x.mark != y.mark) s << " mark";
  if (x.labels != y.labels) s << " labels";
  if (x.helper != y.helper) s << " helper";
  if (x.master != y.master) s << " master";
  if (!(x.version == y.version))
    s << " version " << describe(x.version) << "/" << describe(y.version);
  if (!(x == y) && s.str().empty()) s << " record";
  return s.str();
}

// Reports the first difference; true when equal.
bool sameState(const State& want, const State& got, const std::string& what) {
  for (const auto& [key, e] : want) {
    const std::string d = diff(e, got.at(key));
    if (!d.empty()) {
      ADD_FAILURE() << what << ": flow sport " << key.orig.sport << " zone " << key.zone << ":"
                    << d;
      return false;
    }
  }
  return true;
}

void feed(ReplicaTable& t, const Rec& r, Nanos now) {
  std::visit([&](const auto& x) { t.apply(x, now); }, r);
}

// Shuffled, with random duplicates; applies one record per millisecond of local time and runs
// expiry now and then (nothing may expire: every timeout and the tombstone TTL outlast it).
void replay(ReplicaTable& t, std::vector<Rec> recs, std::mt19937& rng) {
  const size_t n = recs.size();
  for (size_t i = 0; i < n; ++i) {
    if (rng() % 100 < 30) recs.push_back(recs[rng() % n]);
  }
  std::shuffle(recs.begin(), recs.end(), rng);
  Nanos now = kT0;
  for (const Rec& r : recs) {
    feed(t, r, now);
    now += 1'000'000;
    if (rng() % 16 == 0) {
      const ExpireResult ex = t.expire(now);
      EXPECT_EQ(ex.flows + ex.tombstones, 0u);
    }
  }
}

ReplicaSettings settings() {
  ReplicaSettings s;
  s.tombstoneTtl = seconds(3600);  // far longer than the reordering window
  s.digestRanges = 8;
  return s;
}

TEST(ConvergenceTest, AnyOrderAnyDuplicationSameReplica) {
  size_t records = 0, conflicts = 0, deleted = 0, live = 0;
  for (uint32_t seed = 1; seed <= kSeeds; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937 rng(seed * 7919u);
    Workload w(seed, /*nodes=*/3 + static_cast<int>(seed % 3), /*flows=*/6);
    const std::vector<Rec> recs = w.run(40 + static_cast<int>(rng() % 120));
    records += recs.size();
    const State want = model(recs);

    // In version order, once each.
    std::vector<Rec> ordered = recs;
    std::sort(ordered.begin(), ordered.end(),
              [](const Rec& a, const Rec& b) { return versionOf(a) < versionOf(b); });
    ReplicaTable reference(settings());
    for (const Rec& r : ordered) feed(reference, r, kT0);
    if (!sameState(want, snapshot(reference, want), "version order vs model")) {
      ADD_FAILURE() << "failing seed " << seed;
      return;
    }
    for (int replica = 0; replica < 4; ++replica) {
      ReplicaTable t(settings());
      replay(t, recs, rng);
      if (!sameState(want, snapshot(t, want), "replica " + std::to_string(replica)) ||
          t.digests() != reference.digests() || t.size() != reference.size() ||
          t.natShadowedCount() != reference.natShadowedCount() ||
          t.tombstoneCount() != reference.tombstoneCount()) {
        ADD_FAILURE() << "failing seed " << seed << " (replica " << replica << ")";
        return;
      }
    }
    for (const auto& [key, e] : want) {
      live += e.live ? 1 : 0;
      deleted += e.tombstone ? 1 : 0;
      conflicts += e.natShadowed ? 1 : 0;
    }
  }
  // The workload must exercise what it claims to.
  EXPECT_GT(conflicts, 100u);
  EXPECT_GT(deleted, 200u);
  EXPECT_GT(live, 1000u);
  std::printf("[ convergence ] %d seeds, %zu records, %zu live, %zu tombstoned, %zu NAT-shadowed\n",
              kSeeds, records, live, deleted, conflicts);
}

TEST(ConvergenceTest, AntiEntropyRepairsLoss) {
  // A replica that lost 30 % of the records converges on a full one by resending only the
  // ranges whose digests differ. The creator (and so NAT shadowing) is left out of the check:
  // records do not carry their creation version, so a lost creation record cannot be repaired.
  for (uint32_t seed = 1; seed <= kSeeds / 5; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937 rng(seed * 104729u);
    Workload w(seed + 100000, 3, 8);
    const std::vector<Rec> recs = w.run(150);
    ReplicaTable full(settings()), lossy(settings());
    replay(full, recs, rng);
    std::vector<Rec> kept;
    for (const Rec& r : recs) {
      if (rng() % 100 >= 30) kept.push_back(r);
    }
    replay(lossy, kept, rng);
    for (uint32_t r = 0; r < full.rangeCount(); ++r) {
      if (full.digest(r) == lossy.digest(r)) continue;
      const RangeContents c = full.flowsInRange(r);
      for (const FlowRecord& f : c.flows) lossy.apply(f, kT0);
      for (const FlowDelete& d : c.tombstones) lossy.apply(d, kT0);
    }
    const State keys = model(recs);
    State a = snapshot(full, keys), b = snapshot(lossy, keys);
    for (auto* s : {&a, &b}) {
      for (auto& [key, e] : *s) {
        e.createdHlc = 0;
        e.createdNode = 0;
        e.natShadowed = false;
        e.tombstone.reset();  // lossy may not know deletes of flows it never had
      }
    }
    if (!sameState(a, b, "after repair") || full.digests() != lossy.digests()) {
      ADD_FAILURE() << "failing seed " << seed;
      return;
    }
  }
}

}  // namespace
}  // namespace ctsync::replication
