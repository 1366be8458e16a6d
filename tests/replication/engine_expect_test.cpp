// Expectations end to end over the simulated network: they reach every replica, follow their
// masters, converge under loss, reordering, partitions and restarts, and get repaired.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <random>
#include <unordered_map>

#include "sim.hpp"
#include "table/tcp.hpp"

namespace ctsync::replication {
namespace {

using sim::Cluster;
using table::kMillisecond;
using table::kSecond;

table::Tuple tcp4(uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport) {
  table::Tuple t;
  t.src = table::Addr::v4(src);
  t.dst = table::Addr::v4(dst);
  t.sport = sport;
  t.dport = dport;
  t.l4 = table::proto::kTcp;
  return t;
}

FlowRecord control(uint16_t owner, uint32_t n) {
  FlowRecord f;
  f.key.orig = tcp4(0x0a000000u | (uint32_t{owner} << 16) | (n & 0xffff), 0xc6336401,
                    static_cast<uint16_t>(1024 + n % 60000), 21);
  f.reply = *table::invertTuple(f.key.orig);
  f.status = table::status::kConfirmed | table::status::kSeenReply;
  f.tcpState = static_cast<uint8_t>(table::TcpState::kEstablished);
  f.timeoutSec = 3600;
  f.helper = 1;
  return f;
}

ExpectRecord expectOf(const FlowRecord& m, uint16_t port) {
  ExpectRecord e;
  e.master = m.key.orig;
  e.key.zone = m.key.zone;
  e.key.expected = tcp4(0, 0, 0, port);
  e.key.expected.src = m.key.orig.dst;
  e.key.expected.dst = m.key.orig.src;
  e.mask = tcp4(0xffffffff, 0xffffffff, 0, 0xffff);
  e.timeoutSec = 3000;
  e.helper = 1;
  e.fn = 1;
  return e;
}

bool sameContent(const ExpectRecord& a, const ExpectRecord& b) {
  return !expectContentLess(a, b) && !expectContentLess(b, a) && a.key == b.key;
}

TEST(EngineExpectTest, ReachesPeersFollowsItsMasterAndIsReported) {
  Cluster c(2, 1);
  std::vector<ExpectKey> seen;
  c.node(1).onExpectChange([&](const ExpectKey& k) { seen.push_back(k); });
  const FlowRecord m = control(1, 1);
  const ExpectRecord e = expectOf(m, 50000);
  c.node(0).upsert(m, c.now());
  c.node(0).upsertExpect(e, c.now());
  ASSERT_TRUE(c.settle(5 * kSecond)) << c.describe();
  const auto got = c.node(1).replica().getExpect(e.key);
  ASSERT_TRUE(got);
  EXPECT_TRUE(got->masterLive);
  EXPECT_TRUE(sameContent(got->record, e));
  EXPECT_EQ(got->record.version.node, 1);
  EXPECT_EQ(got->record, *c.node(0).localExpect(e.key));
  EXPECT_EQ(c.node(1).replica().expectCount(), 1u);
  EXPECT_EQ(c.node(0).replica().expectCount(), 1u);  // its own, in its replica too
  EXPECT_EQ(c.node(0).localExpects(), 1u);
  EXPECT_EQ(c.node(0).counters().expectUpsertsSent, 1u);
  EXPECT_EQ(c.node(1).counters().expectUpsertsReceived, 1u);
  EXPECT_EQ(c.node(1).counters().expectApplied[static_cast<size_t>(ApplyOutcome::kInserted)], 1u);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], e.key);

  // Updates coalesce while queued; the newer state arrives.
  ExpectRecord e2 = e;
  e2.timeoutSec = 10;
  c.node(0).upsertExpect(e2, c.now());
  e2.flags = expectflag::kPermanent;
  c.node(0).upsertExpect(e2, c.now());
  ASSERT_TRUE(c.settle(5 * kSecond));
  EXPECT_EQ(c.node(0).counters().expectUpsertsSent, 2u);
  EXPECT_EQ(c.node(1).replica().getExpect(e.key)->record.flags, expectflag::kPermanent);

  // Removed: a delete goes out.
  seen.clear();
  c.node(0).removeExpect(e.key, c.now());
  ASSERT_TRUE(c.settle(5 * kSecond));
  EXPECT_FALSE(c.node(1).replica().getExpect(e.key));
  EXPECT_TRUE(c.node(1).replica().expectTombstone(e.key));
  EXPECT_EQ(c.node(0).counters().expectDeletesSent, 1u);
  EXPECT_EQ(c.node(1).counters().expectDeletesReceived, 1u);
  EXPECT_EQ(seen, std::vector<ExpectKey>{e.key});
  c.node(0).removeExpect(e.key, c.now());  // no longer live: nothing to do
  EXPECT_EQ(c.node(0).localExpects(), 0u);
}

TEST(EngineExpectTest, RemovingTheMasterRemovesItsExpectations) {
  Cluster c(2, 2);
  std::vector<ExpectKey> seen;
  c.node(1).onExpectChange([&](const ExpectKey& k) { seen.push_back(k); });
  const FlowRecord m = control(1, 1);
  const FlowRecord other = control(1, 2);
  c.node(0).upsert(m, c.now());
  c.node(0).upsert(other, c.now());
  const ExpectRecord a = expectOf(m, 50001), b = expectOf(m, 50002), d = expectOf(other, 50003);
  for (const auto& e : {a, b, d}) c.node(0).upsertExpect(e, c.now());
  ASSERT_TRUE(c.settle(5 * kSecond));
  EXPECT_EQ(c.node(1).replica().expectCount(), 3u);
  seen.clear();
  c.node(0).remove(m.key, c.now());
  EXPECT_EQ(c.node(0).localExpects(), 1u);
  ASSERT_TRUE(c.settle(5 * kSecond));
  EXPECT_FALSE(c.node(1).replica().getExpect(a.key));
  EXPECT_FALSE(c.node(1).replica().getExpect(b.key));
  EXPECT_TRUE(c.node(1).replica().getExpect(d.key));
  EXPECT_EQ(std::count(seen.begin(), seen.end(), a.key), 1);
  EXPECT_EQ(c.node(0).counters().expectDeletesSent, 2u);

  // A master that dies at the replica on its own (it was never refreshed there) takes its
  // expectations with it, reported as such.
  seen.clear();
  c.node(1).replicaForTesting().apply(FlowDelete{other.key, Version{99, 0, 7}}, c.now());
  c.node(1).poll(c.now());
  EXPECT_FALSE(c.node(1).replica().getExpect(d.key));
  EXPECT_EQ(c.node(1).replica().stats().expectsDiedWithMaster, 1u);
}

TEST(EngineExpectTest, AnExpectationInOurNameWeNeverWroteIsDeleted) {
  // A replica holds an expectation in node 1's name that node 1 does not have (a previous life
  // of it, or corruption). Anti-entropy finds it; node 1 writes a delete over it.
  Cluster c(2, 3);
  const FlowRecord m = control(1, 1);
  c.node(0).upsert(m, c.now());
  ASSERT_TRUE(c.settle(5 * kSecond));
  ExpectRecord ghost = expectOf(m, 50004);
  ghost.version = Version{0, c.node(1).replica().get(m.key)->record.version.hlc + 1, 1};
  c.node(1).replicaForTesting().apply(ghost, c.now());
  c.runFor(10 * kSecond);  // digest rounds
  ASSERT_TRUE(c.settle(5 * kSecond));
  EXPECT_FALSE(c.node(1).replica().getExpect(ghost.key));
  EXPECT_FALSE(c.node(0).replica().getExpect(ghost.key));
  EXPECT_GE(c.node(0).counters().ownerReasserts, 1u);
  EXPECT_GE(c.node(1).counters().rangesRepaired, 1u);
}

TEST(EngineExpectTest, AdoptAllTakesExpectationsOver) {
  Cluster c(2, 4);
  const FlowRecord m = control(1, 1);
  const ExpectRecord e = expectOf(m, 50005);
  c.node(0).upsert(m, c.now());
  c.node(0).upsertExpect(e, c.now());
  ASSERT_TRUE(c.settle(5 * kSecond));
  c.stop(0);
  c.node(1).adoptAll(c.now());
  ASSERT_TRUE(c.node(1).localExpect(e.key));
  EXPECT_EQ(c.node(1).replica().getExpect(e.key)->record.version.node, 2);
  // Adopted, the flow's removal takes the expectation along.
  c.node(1).remove(m.key, c.now());
  EXPECT_FALSE(c.node(1).localExpect(e.key));
  EXPECT_FALSE(c.node(1).replica().getExpect(e.key));
}

// Runs one seed; returns the first difference found, or "" when converged. `checked` counts
// the expectations compared, so that a run that made none does not pass as converged.
std::string runSeed(uint64_t seed, size_t& checked) {
  std::mt19937_64 rng(seed);
  const size_t n = 2 + seed % 3;
  Cluster c(n, seed * 104729);
  c.faults().loss = 0.1 * static_cast<double>(seed % 4);
  c.faults().duplicate = 0.05;
  c.faults().reorder = 0.2;
  std::vector<std::unordered_map<FlowKey, FlowRecord, FlowKeyHasher>> flows(n);
  std::vector<std::unordered_map<ExpectKey, ExpectRecord, ExpectKeyHasher>> expects(n);
  uint32_t serial = 0;
  for (int step = 0; step < 300; ++step) {
    c.runFor(static_cast<Nanos>(rng() % (5 * kMillisecond)));
    const size_t who = rng() % n;
    if (!c.running(who)) continue;
    Engine& e = c.node(who);
    const unsigned op = rng() % 100;
    auto pickFlow = [&]() -> const FlowRecord* {
      if (flows[who].empty()) return nullptr;
      auto it = flows[who].begin();
      std::advance(it, static_cast<long>(rng() % flows[who].size()));
      return &it->second;
    };
    if (op < 25) {
      const FlowRecord f = control(static_cast<uint16_t>(who + 1), ++serial);
      flows[who][f.key] = f;
      e.upsert(f, c.now());
    } else if (op < 60) {
      if (const FlowRecord* f = pickFlow()) {
        ExpectRecord x = expectOf(*f, static_cast<uint16_t>(1024 + rng() % 4));
        x.timeoutSec = static_cast<uint32_t>(600 + rng() % 600);
        x.flags = static_cast<uint32_t>(rng() % 2);
        if (rng() % 3 == 0) x.natTuple = tcp4(0, 0xcb007100u + static_cast<uint32_t>(who), 0, 7);
        expects[who][x.key] = x;
        e.upsertExpect(x, c.now());
      }
    } else if (op < 75) {
      if (!expects[who].empty()) {
        auto it = expects[who].begin();
        std::advance(it, static_cast<long>(rng() % expects[who].size()));
        e.removeExpect(it->first, c.now());
        expects[who].erase(it);
      }
    } else if (op < 88) {
      if (const FlowRecord* f = pickFlow()) {
        const FlowKey k = f->key;
        e.remove(k, c.now());
        flows[who].erase(k);
        std::erase_if(expects[who], [&](const auto& kv) {
          return kv.second.master == k.orig && kv.second.key.zone == k.zone;
        });
      }
    } else if (op < 95) {
      std::vector<size_t> group;
      for (size_t i = 0; i < n; ++i) {
        if (rng() % 2) group.push_back(i);
      }
      c.heal();
      if (rng() % 2) c.partition(group);
    } else {
      // The daemon restarts; the kernel keeps flows and expectations, dumped again.
      c.stop(who);
      c.runFor(static_cast<Nanos>(rng() % (3 * kSecond)));
      c.start(who);
      for (const auto& [k, f] : flows[who]) c.node(who).upsert(f, c.now());
      for (const auto& [k, x] : expects[who]) c.node(who).upsertExpect(x, c.now());
    }
  }
  c.heal();
  if (!c.settle(120 * kSecond)) return "did not settle:\n" + c.describe();
  c.runFor(5 * kSecond);  // digest rounds
  if (!c.settle(60 * kSecond)) return "did not settle after digests:\n" + c.describe();

  size_t total = 0;
  for (size_t i = 0; i < n; ++i) total += expects[i].size();
  for (size_t i = 0; i < n; ++i) {
    const ReplicaTable& r = c.node(i).replica();
    if (r.expectCount() != total) {
      return "node " + std::to_string(i + 1) + " holds " + std::to_string(r.expectCount()) +
             " expectations, the sources " + std::to_string(total) + "\n" + c.describe();
    }
    for (size_t o = 0; o < n; ++o) {
      for (const auto& [k, x] : expects[o]) {
        const auto got = r.getExpect(k);
        if (!got) return "node " + std::to_string(i + 1) + " lacks an expectation";
        const auto mine = c.node(o).localExpect(k);
        if (!mine || got->record != *mine || !sameContent(*mine, x)) {
          return "node " + std::to_string(i + 1) + ": an expectation differs from its owner's";
        }
        if (!got->masterLive) return "node " + std::to_string(i + 1) + ": master not live";
        ++checked;
      }
    }
  }
  return "";
}

TEST(EngineExpectTest, ConvergeUnderLossReorderPartitionsAndRestarts) {
  size_t checked = 0;
  for (uint64_t seed = 1; seed <= 40; ++seed) {
    EXPECT_EQ(runSeed(seed, checked), "") << "seed " << seed;
  }
  EXPECT_GT(checked, 1000u);
}

}  // namespace
}  // namespace ctsync::replication
