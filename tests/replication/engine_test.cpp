// The sync protocol engine over the simulated network (sim.hpp): replication, loss, gaps,
// bulks, sweeps, digests, ownership, pacing and hostile datagrams.
#include "replication/engine.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <random>

#include "sim.hpp"
#include "table/tcp.hpp"

namespace ctsync::replication {
namespace {

using sim::Cluster;
using table::kMillisecond;
using table::kSecond;

FlowRecord flow(uint16_t owner, uint32_t i) {
  FlowRecord f;
  f.key.orig.l3 = table::L3::kIpv4;
  f.key.orig.l4 = table::proto::kTcp;
  f.key.orig.src = table::Addr::v4(0x0a000000u + (uint32_t{owner} << 16) + (i >> 16));
  f.key.orig.dst = table::Addr::v4(0xc6336401u);
  f.key.orig.sport = static_cast<uint16_t>(1024 + (i & 0xffff) % 60000);
  f.key.orig.dport = 443;
  f.reply = *table::invertTuple(f.key.orig);
  // Masquerade: the reply comes back to the firewall's outside address and a mapped port.
  f.reply.dst = table::Addr::v4(0xcb007101u);
  f.reply.dport = static_cast<uint16_t>(20000 + i % 40000);
  f.status = table::status::kConfirmed | table::status::kSrcNat | table::status::kSeenReply;
  f.tcpState = static_cast<uint8_t>(table::TcpState::kEstablished);
  f.tcpScale[0] = 7;
  f.tcpScale[1] = 9;
  f.timeoutSec = 432000;
  return f;
}

// Every running node's replica holds exactly `expect` (owner's local records), field by field.
void expectReplicas(Cluster& c, const std::vector<FlowRecord>& expect, const char* what) {
  for (size_t n = 0; n < c.size(); ++n) {
    if (!c.running(n)) continue;
    const ReplicaTable& r = c.node(n).replica();
    EXPECT_EQ(r.size(), expect.size()) << what << ": node " << n + 1;
    size_t wrong = 0;
    for (const FlowRecord& f : expect) {
      const auto got = r.get(f.key);
      if (!got || got->record != f) ++wrong;
    }
    EXPECT_EQ(wrong, 0u) << what << ": node " << n + 1;
  }
}

std::vector<FlowRecord> localsOf(Cluster& c) {
  std::vector<FlowRecord> out;
  for (size_t n = 0; n < c.size(); ++n) {
    if (c.running(n)) c.node(n).forEachLocal([&](const FlowRecord& f) { out.push_back(f); });
  }
  return out;
}

TEST(EngineTest, TwoNodesReplicateEveryFlowLosslessly) {
  Cluster c(2, 1);
  c.runFor(10 * kMillisecond);
  for (uint32_t i = 0; i < 2000; ++i) c.node(0).upsert(flow(1, i), c.now());
  ASSERT_TRUE(c.settle(5 * kSecond));
  expectReplicas(c, localsOf(c), "lossless");
  const EngineCounters& tx = c.node(0).counters();
  EXPECT_EQ(tx.upsertsSent, 2000u);
  EXPECT_EQ(tx.resentRecords, 0u);
  EXPECT_EQ(c.node(1).counters().upsertsReceived, 2000u);
  // Datagrams are filled: about 38 NAT'd IPv4 flows in each.
  EXPECT_LE(tx.reliableDatagramsSent, 2000u / 30);
  const auto peers = c.node(0).peers(c.now());
  ASSERT_EQ(peers.size(), 1u);
  EXPECT_TRUE(peers[0].up);
  EXPECT_EQ(peers[0].lag, 0u);
}

TEST(EngineTest, UpdatesToOneFlowCoalesceAndDeletesReplicate) {
  Cluster c(2, 2);
  c.runFor(10 * kMillisecond);
  FlowRecord f = flow(1, 7);
  for (int i = 0; i < 10; ++i) {
    f.mark = static_cast<uint32_t>(i);
    c.node(0).upsert(f, c.now());
  }
  ASSERT_TRUE(c.settle(kSecond));
  EXPECT_EQ(c.node(0).counters().upsertsSent, 1u);  // ten updates before the flush: one record
  ASSERT_TRUE(c.node(1).replica().get(f.key));
  EXPECT_EQ(c.node(1).replica().get(f.key)->record.mark, 9u);
  c.node(0).remove(f.key, c.now());
  ASSERT_TRUE(c.settle(kSecond));
  EXPECT_FALSE(c.node(1).replica().get(f.key));
  EXPECT_TRUE(c.node(1).replica().tombstone(f.key));
  EXPECT_EQ(c.node(0).counters().deletesSent, 1u);
}

TEST(EngineTest, LossDuplicationAndReorderingAreRepaired) {
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    Cluster c(3, seed);
    c.faults().loss = 0.2;
    c.faults().duplicate = 0.1;
    c.faults().reorder = 0.2;
    for (uint32_t i = 0; i < 600; ++i) {
      c.node(i % 3).upsert(flow(static_cast<uint16_t>(i % 3 + 1), i), c.now());
      if (i % 50 == 0) c.runFor(3 * kMillisecond);
    }
    ASSERT_TRUE(c.settle(30 * kSecond)) << "seed " << seed << "\n" << c.describe();
    expectReplicas(c, localsOf(c), "lossy");
    uint64_t nacks = 0, gaps = 0, duplicates = 0;
    for (size_t n = 0; n < 3; ++n) {
      nacks += c.node(n).counters().nacksSent;
      gaps += c.node(n).counters().gaps;
      duplicates += c.node(n).counters().authDrops[static_cast<size_t>(DropReason::kReplay)];
    }
    EXPECT_GT(duplicates, 0u) << "seed " << seed;
    EXPECT_GT(gaps, 0u) << "seed " << seed;
    EXPECT_GT(nacks, 0u) << "seed " << seed;
  }
}

TEST(EngineTest, TailLossIsNoticedThroughAlive) {
  Cluster c(2, 3);
  c.runFor(10 * kMillisecond);
  c.cut(0, 1, false);  // node 1 -> node 2 only
  for (uint32_t i = 0; i < 10; ++i) c.node(0).upsert(flow(1, i), c.now());
  c.runFor(2 * kMillisecond);  // the only datagram is lost
  c.heal();
  EXPECT_EQ(c.node(1).replica().size(), 0u);
  ASSERT_TRUE(c.settle(kSecond));
  expectReplicas(c, localsOf(c), "tail loss");
  EXPECT_GE(c.node(1).counters().nacksSent, 1u);
  EXPECT_GE(c.node(0).counters().coveredSent, 1u);
  EXPECT_EQ(c.node(0).counters().bulksSent, 0u);  // the resend queue had it: no bulk
}

// Node 1 replicates `before` flows and restarts; only the first `after` survived meanwhile
// (its source dumps them again). `started` runs between the restart and the dump.
void restartOwner(Cluster& c, uint32_t before, uint32_t after,
                  const std::function<void()>& started = nullptr) {
  c.runFor(10 * kMillisecond);
  for (uint32_t i = 0; i < before; ++i) c.node(0).upsert(flow(1, i), c.now());
  ASSERT_TRUE(c.settle(kSecond));
  ASSERT_EQ(c.node(1).replica().size(), before);
  c.stop(0);
  c.runFor(100 * kMillisecond);
  c.start(0);
  if (started) started();
  for (uint32_t i = 0; i < after; ++i) c.node(0).upsert(flow(1, i), c.now());
}

TEST(EngineTest, ALostBulkEndIsSentAgainAndTheSweepHappens) {
  Cluster c(2, 5);
  int dropped = 0;
  restartOwner(c, 300, 295, [&] {
    c.dropIf = [&](size_t from, size_t to, const Decoded& d) {
      for (const Record& r : d.records) {
        if (from == 0 && to == 1 && dropped == 0 && std::holds_alternative<BulkEnd>(r)) {
          ++dropped;
          return true;
        }
      }
      return false;
    };
  });
  ASSERT_TRUE(c.settle(10 * kSecond)) << c.describe();
  EXPECT_EQ(dropped, 1);
  expectReplicas(c, localsOf(c), "lost BulkEnd");
  EXPECT_EQ(c.node(1).counters().sweptFlows, 5u);
  EXPECT_GE(c.node(0).counters().bulkEndsResent, 1u);
}

TEST(EngineTest, ExpiredFlowsAreNotRenewedByCopiesFromOtherReplicas) {
  // The owner is gone; two replicas got its short-lived flow 1.5 s apart. When the first one
  // expires it, the other's digest repair must not bring it back with a fresh timeout (the two
  // would keep renewing it for each other for ever).
  Cluster c(3, 11);
  c.runFor(10 * kMillisecond);
  FlowRecord f = flow(1, 1);
  f.timeoutSec = 5;
  c.cut(0, 2, false);
  c.node(0).upsert(f, c.now());
  c.runFor(1500 * kMillisecond);
  c.heal();
  ASSERT_TRUE(c.settle(kSecond));
  ASSERT_TRUE(c.node(1).replica().get(f.key));
  ASSERT_TRUE(c.node(2).replica().get(f.key));
  c.stop(0);
  c.runFor(30 * kSecond);  // many digest rounds
  EXPECT_FALSE(c.node(1).replica().get(f.key));
  EXPECT_FALSE(c.node(2).replica().get(f.key));
  EXPECT_GT(c.node(1).counters().sweptRelaysBlocked + c.node(2).counters().sweptRelaysBlocked, 0u);
}

TEST(EngineTest, GapOlderThanTheResendLogIsFilledByABulk) {
  EngineSettings s = Cluster::defaults();
  s.resendLogFlows = 50;
  Cluster c(2, 4, s);
  c.runFor(10 * kMillisecond);
  c.node(0).upsert(flow(1, 999), c.now());
  ASSERT_TRUE(c.settle(kSecond));
  c.cut(0, 1, false);
  for (uint32_t i = 0; i < 500; ++i) c.node(0).upsert(flow(1, i), c.now());
  c.runFor(50 * kMillisecond);
  c.heal();
  ASSERT_TRUE(c.settle(5 * kSecond));
  expectReplicas(c, localsOf(c), "after bulk");
  EXPECT_GE(c.node(0).counters().bulksSent, 1u);
  EXPECT_GE(c.node(1).counters().bulksReceived, 1u);
}

TEST(EngineTest, RestartedSenderIsResyncedAndItsStaleFlowsSwept) {
  Cluster c(2, 5);
  restartOwner(c, 300, 100);
  ASSERT_TRUE(c.settle(10 * kSecond));
  expectReplicas(c, localsOf(c), "after restart");
  EXPECT_EQ(c.node(1).replica().size(), 100u);
  EXPECT_EQ(c.node(1).counters().peerRestarts, 1u);
  EXPECT_GE(c.node(1).counters().resyncRequestsSent, 1u);
  EXPECT_GE(c.node(1).counters().sweeps, 1u);
  EXPECT_EQ(c.node(1).counters().sweptFlows, 200u);
}

TEST(EngineTest, RestartedReceiverGetsEverythingBack) {
  Cluster c(3, 6);
  c.faults().loss = 0.1;
  c.runFor(10 * kMillisecond);
  for (uint32_t i = 0; i < 400; ++i) c.node(i % 2).upsert(flow(uint16_t(i % 2 + 1), i), c.now());
  ASSERT_TRUE(c.settle(10 * kSecond));
  c.stop(2);
  c.runFor(3 * kSecond);  // long enough to be declared gone; the others trim their logs
  for (uint32_t i = 400; i < 500; ++i) c.node(0).upsert(flow(1, i), c.now());
  c.runFor(100 * kMillisecond);
  c.start(2);
  ASSERT_TRUE(c.settle(20 * kSecond));
  expectReplicas(c, localsOf(c), "restarted receiver");
  EXPECT_EQ(c.node(2).replica().size(), 500u);
}

TEST(EngineTest, DigestsRepairAReplicaThatSilentlyLostFlows) {
  Cluster c(2, 7);
  c.runFor(10 * kMillisecond);
  for (uint32_t i = 0; i < 500; ++i) c.node(0).upsert(flow(1, i), c.now());
  ASSERT_TRUE(c.settle(kSecond));
  // Corrupt node 2's replica behind the protocol's back: an empty "bulk" from node 1 sweeps
  // every flow node 1 owns.
  ReplicaTable& r = c.node(1).replicaForTesting();
  r.beginBulk(1, 0xdead);
  ASSERT_EQ(r.endBulk(1, 0xdead), 500u);
  ASSERT_EQ(r.size(), 0u);
  c.runFor(5 * kSecond);  // two digest rounds
  ASSERT_TRUE(c.settle(kSecond));
  expectReplicas(c, localsOf(c), "digest repair");
  // Nearly every range differed: the nodes exchanged bulks rather than repair range by range.
  EXPECT_GT(c.node(0).counters().digestBulks + c.node(1).counters().digestBulks, 0u);
  EXPECT_GT(c.node(0).counters().bulksSent, 0u);

  // A few flows lost: those ranges alone are resent.
  const uint64_t bulksBefore = c.node(0).counters().bulksSent;
  std::vector<FlowRecord> lost;
  for (uint32_t i = 0; i < 5; ++i) lost.push_back(*c.node(0).local(flow(1, i * 7).key));
  // A fake bulk from node 1 that "carried" everything else sweeps exactly these five.
  r.beginBulk(1, 0xbeef);
  c.node(0).forEachLocal([&](const FlowRecord& f) {
    if (std::find(lost.begin(), lost.end(), f) == lost.end()) r.apply(f, c.now());
  });
  ASSERT_EQ(r.endBulk(1, 0xbeef), 5u);
  c.runFor(5 * kSecond);
  ASSERT_TRUE(c.settle(kSecond));
  expectReplicas(c, localsOf(c), "range repair");
  EXPECT_GT(c.node(0).counters().rangesRepaired, 0u);
  EXPECT_LE(c.node(0).counters().rangesRepaired, 10u);
  EXPECT_EQ(c.node(0).counters().bulksSent, bulksBefore);
}

TEST(EngineTest, RecordsInOurNameThatWeNeverWroteAreCorrected) {
  Cluster c(2, 8);
  c.runFor(10 * kMillisecond);
  for (uint32_t i = 0; i < 20; ++i) c.node(0).upsert(flow(1, i), c.now());
  ASSERT_TRUE(c.settle(kSecond));
  // Node 2 holds a forged-looking record of node 1 for a flow node 1 never had, and a changed
  // copy of a real one with the same version; both spread at the next digest round.
  ReplicaTable& r = c.node(1).replicaForTesting();
  FlowRecord ghost = flow(1, 5000);
  ghost.version = Version{0, c.node(0).replica().get(flow(1, 0).key)->record.version.hlc, 1};
  r.apply(ghost, c.now());
  FlowRecord bent = *c.node(0).local(flow(1, 3).key);
  bent.mark = 0xbad;
  bent.timeoutSec += 1000;  // larger content wins a version clash
  r.apply(bent, c.now());
  c.runFor(5 * kSecond);
  ASSERT_TRUE(c.settle(kSecond));
  expectReplicas(c, localsOf(c), "owner authority");
  EXPECT_FALSE(c.node(1).replica().get(ghost.key));
  EXPECT_EQ(c.node(1).replica().get(bent.key)->record.mark, 0u);
  EXPECT_GE(c.node(0).counters().ownerReasserts, 1u);
}

TEST(EngineTest, SplitBrainHealsToTheSameTableEverywhere) {
  Cluster c(2, 9);
  c.runFor(10 * kMillisecond);
  for (uint32_t i = 0; i < 50; ++i) c.node(0).upsert(flow(1, i), c.now());
  ASSERT_TRUE(c.settle(kSecond));
  c.partition({0});
  // Both believe they are active (node 2 was promoted: it owns its copies now) and write the
  // same flows differently.
  c.node(1).adoptAll(c.now());
  for (uint32_t i = 0; i < 50; ++i) {
    FlowRecord a = flow(1, i);
    a.mark = 1;
    c.node(0).upsert(a, c.now());
    c.runFor(kMillisecond);
    FlowRecord b = flow(1, i);
    b.mark = 2;
    if (i % 5 == 0) {
      c.node(1).remove(b.key, c.now());
    } else {
      c.node(1).upsert(b, c.now());
    }
    c.runFor(kMillisecond);
  }
  c.runFor(3 * kSecond);
  c.heal();
  ASSERT_TRUE(c.settle(20 * kSecond));
  // Later writes won: node 2's, so its marks and its deletes.
  for (size_t n = 0; n < 2; ++n) {
    const ReplicaTable& r = c.node(n).replica();
    for (uint32_t i = 0; i < 50; ++i) {
      const auto got = r.get(flow(1, i).key);
      if (i % 5 == 0) {
        EXPECT_FALSE(got) << i;
      } else {
        ASSERT_TRUE(got) << i;
        EXPECT_EQ(got->record.mark, 2u);
        EXPECT_EQ(got->record.version.node, 2u);
      }
    }
  }
  EXPECT_EQ(c.node(0).replica().digests(), c.node(1).replica().digests());
}

TEST(EngineTest, PacingSpreadsABulkOverTime) {
  EngineSettings s = Cluster::defaults();
  s.paceBytesPerSecond = 1 << 20;  // 1 MiB/s
  s.paceBurstBytes = 16 << 10;
  Cluster c(2, 10, s);
  c.runFor(10 * kMillisecond);
  for (uint32_t i = 0; i < 20000; ++i) c.node(0).upsert(flow(1, i), c.now());
  const Nanos start = c.now();
  ASSERT_TRUE(c.settle(10 * kSecond));
  const double seconds = static_cast<double>(c.now() - start) / kSecond;
  const double bytes = static_cast<double>(c.node(0).counters().bytesSent);
  // About 0.8 MB at 1 MiB/s.
  EXPECT_GT(seconds, bytes / (1 << 20) * 0.9);
  EXPECT_LT(seconds, bytes / (1 << 20) * 1.3 + 0.1);
  EXPECT_GT(c.node(0).counters().pacingWaits, 0u);
  expectReplicas(c, localsOf(c), "paced");
}

// Node 0 creates `a`, then node 1, cut off from it, creates `b` with the same reply tuple
// (same server, same outside address and port): conflicting NAT mappings, `a` the earlier.
std::pair<FlowRecord, FlowRecord> makeNatConflict(Cluster& c) {
  c.runFor(10 * kMillisecond);
  c.partition({0});
  FlowRecord a = flow(1, 1);
  c.node(0).upsert(a, c.now());
  c.runFor(5 * kMillisecond);
  FlowRecord b = flow(2, 2);
  b.reply = a.reply;
  c.node(1).upsert(b, c.now());
  c.runFor(10 * kMillisecond);
  c.heal();
  return {a, b};
}

TEST(EngineTest, NatConflictsResolveToTheEarliestCreatorAndAreReported) {
  Cluster c(2, 11);
  std::vector<FlowKey> losers;
  c.node(1).onNatConflict([&](const FlowKey& k) { losers.push_back(k); });
  const auto [a, b] = makeNatConflict(c);
  ASSERT_TRUE(c.settle(5 * kSecond));
  for (size_t n = 0; n < 2; ++n) {
    EXPECT_FALSE(c.node(n).replica().get(a.key)->natShadowed);
    EXPECT_TRUE(c.node(n).replica().get(b.key)->natShadowed);
  }
  ASSERT_EQ(losers.size(), 1u);
  EXPECT_EQ(losers[0], b.key);
}

// When the winner of a NAT conflict goes away, the loser becomes committable again: a node
// that keeps its kernel in step must hear about it, although nothing was written to it.
TEST(EngineTest, ALiftedNatShadowIsReportedAsAReplicaChange) {
  Cluster c(3, 12);
  std::vector<FlowKey> changed;
  c.node(2).onReplicaChange([&](const FlowKey& k) { changed.push_back(k); });
  const auto [a, b] = makeNatConflict(c);
  ASSERT_TRUE(c.settle(5 * kSecond));
  ASSERT_TRUE(c.node(2).replica().get(b.key)->natShadowed);
  changed.clear();
  c.node(0).remove(a.key, c.now());
  ASSERT_TRUE(c.settle(5 * kSecond));
  ASSERT_FALSE(c.node(2).replica().get(b.key)->natShadowed);
  EXPECT_NE(std::find(changed.begin(), changed.end(), a.key), changed.end());
  EXPECT_NE(std::find(changed.begin(), changed.end(), b.key), changed.end())
      << "the flow freed from its NAT shadow was not reported";
}

// Hostile datagrams: every kind is dropped, counted under its reason, and changes nothing.
TEST(EngineTest, ForgedReplayedTruncatedFlippedAndOversizedDatagramsAreDropped) {
  std::vector<std::vector<uint8_t>> wire;
  EngineSettings s = Cluster::defaults();
  s.node = 1;
  s.bootEpoch = 77;
  const Key key = sim::testKey();
  Engine tx(
      s, key, [&](std::span<const uint8_t> d) { wire.emplace_back(d.begin(), d.end()); }, 0);
  tx.upsert(flow(1, 1), 0);
  tx.poll(10 * kMillisecond);
  ASSERT_FALSE(wire.empty());
  const std::vector<uint8_t> good = wire.back();

  s.node = 2;
  s.bootEpoch = 78;
  Engine rx(
      s, key, [](std::span<const uint8_t>) {}, 0);
  auto count = [&](DropReason r) { return rx.counters().authDrops[static_cast<size_t>(r)]; };

  std::array<uint8_t, kKeySize> otherBytes{};
  otherBytes.fill(0x42);
  const Key other = Key::fromBytes(otherBytes);
  std::vector<uint8_t> forged;
  Engine forger(
      s, other, [&](std::span<const uint8_t> d) { forged.assign(d.begin(), d.end()); }, 0);
  forger.upsert(flow(1, 2), 0);
  forger.poll(10 * kMillisecond);
  rx.receive(forged, 1);
  EXPECT_EQ(count(DropReason::kBadMac), 1u);

  std::vector<uint8_t> flipped = good;
  flipped[flipped.size() / 2] ^= 0x10;
  rx.receive(flipped, 2);
  EXPECT_EQ(count(DropReason::kBadMac), 2u);

  rx.receive(std::span(good).first(good.size() - 1), 3);
  EXPECT_EQ(count(DropReason::kBadMac), 3u);
  rx.receive(std::span(good).first(20), 4);
  EXPECT_EQ(count(DropReason::kTooShort), 1u);

  std::vector<uint8_t> huge(kMaxDatagramSize + 1, 0);
  rx.receive(huge, 5);
  EXPECT_EQ(count(DropReason::kOversized), 1u);

  std::vector<uint8_t> wrongCluster = good;
  wrongCluster[2] ^= 1;  // cluster id is in the cleartext header
  rx.receive(wrongCluster, 6);
  EXPECT_EQ(count(DropReason::kWrongCluster), 1u);

  EXPECT_EQ(rx.replica().size(), 0u);
  rx.receive(good, 7);
  EXPECT_EQ(rx.replica().size(), 1u);
  rx.receive(good, 8);  // replayed
  EXPECT_EQ(count(DropReason::kReplay), 1u);
  EXPECT_EQ(rx.counters().datagramsReceived, 1u);
  EXPECT_EQ(rx.replica().size(), 1u);
}

// The hook that keeps a backup's kernel in step: every change of a peer's flow in the replica
// (insert, update, delete) is reported with its key, and replica().get() shows the new state.
TEST(EngineTest, ReplicaChangesAreReportedToTheOwner) {
  Cluster c(2, 3);
  std::vector<std::pair<FlowKey, bool>> seen;  // key, live after the change
  c.node(1).onReplicaChange([&](const FlowKey& key) {
    seen.emplace_back(key, c.node(1).replica().get(key).has_value());
  });
  c.runFor(10 * kMillisecond);
  FlowRecord f = flow(1, 3);
  c.node(0).upsert(f, c.now());
  ASSERT_TRUE(c.settle(kSecond));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].first, f.key);
  EXPECT_TRUE(seen[0].second);
  f.mark = 42;
  c.node(0).upsert(f, c.now());
  ASSERT_TRUE(c.settle(kSecond));
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen[1].second);
  EXPECT_EQ(c.node(1).replica().get(f.key)->record.mark, 42u);
  c.node(0).remove(f.key, c.now());
  ASSERT_TRUE(c.settle(kSecond));
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_FALSE(seen[2].second);
  // A flow that expires in the replica is reported too.
  FlowRecord g = flow(1, 4);
  g.timeoutSec = 1;
  c.node(0).upsert(g, c.now());
  ASSERT_TRUE(c.settle(kSecond));
  ASSERT_EQ(seen.size(), 4u);
  c.runFor(3 * kSecond);
  ASSERT_GE(seen.size(), 5u);
  EXPECT_EQ(seen[4].first, g.key);
  EXPECT_FALSE(seen[4].second);
}

}  // namespace
}  // namespace ctsync::replication
