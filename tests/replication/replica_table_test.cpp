#include "replication/replica_table.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <vector>

#include "replication/hlc.hpp"
#include "table/tcp.hpp"

namespace ctsync::replication {
namespace {

using table::seconds;
using table::TcpState;
namespace st = table::status;

constexpr Nanos kT0 = seconds(1'000'000);

FlowKey key(uint16_t sport, uint16_t zone = 0) {
  FlowKey k;
  k.orig.src = table::Addr::v4(0x0a000001);
  k.orig.dst = table::Addr::v4(0xc0a80001);
  k.orig.sport = sport;
  k.orig.dport = 80;
  k.orig.l4 = table::proto::kTcp;
  k.zone = zone;
  return k;
}

// Reply as the kernel would build it without NAT; `natPort` != 0 puts it behind an SNAT.
table::Tuple replyOf(const FlowKey& k, uint16_t natPort = 0) {
  table::Tuple r = *table::invertTuple(k.orig);
  if (natPort != 0) {
    r.dst = table::Addr::v4(0xcb007101);
    r.dport = natPort;
  }
  return r;
}

uint8_t tcp(TcpState s) {
  return static_cast<uint8_t>(s);
}

FlowRecord rec(const FlowKey& k, Version v, TcpState s = TcpState::kEstablished,
               uint32_t status = st::kConfirmed, uint32_t timeoutSec = 300) {
  FlowRecord r;
  r.key = k;
  r.reply = replyOf(k);
  r.status = status;
  r.tcpState = tcp(s);
  r.timeoutSec = timeoutSec;
  r.version = v;
  return r;
}

Version ver(uint32_t gen, uint64_t hlc, uint16_t node) {
  return Version{gen, hlc, node};
}

ReplicaSettings settings(Nanos ttl = seconds(60), uint32_t ranges = 16) {
  ReplicaSettings s;
  s.tombstoneTtl = ttl;
  s.digestRanges = ranges;
  return s;
}

// ---- hybrid logical clock (lives here: it has no other user yet) ----

TEST(HybridClockTest, LocalEventsFollowPhysicalTimeAndStayMonotonic) {
  HybridClock c;
  EXPECT_EQ(c.now(1000), HybridClock::pack(1000, 0));
  EXPECT_EQ(c.now(1000), HybridClock::pack(1000, 1));
  EXPECT_EQ(c.now(1005), HybridClock::pack(1005, 0));
  // Physical time steps back (NTP): the clock keeps counting on its last millisecond.
  EXPECT_EQ(c.now(900), HybridClock::pack(1005, 1));
  EXPECT_EQ(c.now(900), HybridClock::pack(1005, 2));
  EXPECT_EQ(c.now(2000), HybridClock::pack(2000, 0));
}

TEST(HybridClockTest, ObserveJumpsPastRemoteAndLocal) {
  HybridClock c;
  c.now(1000);
  // Remote ahead of us and of physical time.
  EXPECT_EQ(c.observe(HybridClock::pack(1500, 7), 1001), HybridClock::pack(1500, 8));
  // Remote behind: local counter continues.
  EXPECT_EQ(c.observe(HybridClock::pack(1200, 3), 1001), HybridClock::pack(1500, 9));
  // Physical time ahead of both: counter resets.
  EXPECT_EQ(c.observe(HybridClock::pack(1500, 50), 1600), HybridClock::pack(1600, 0));
  // Same millisecond everywhere: max of both counters plus one.
  EXPECT_EQ(c.observe(HybridClock::pack(1600, 40), 1600), HybridClock::pack(1600, 41));
}

TEST(HybridClockTest, LogicalOverflowCarriesIntoMilliseconds) {
  HybridClock c;
  c.observe(HybridClock::pack(1000, 0xfffe), 1000);  // -> (1000, 0xffff)
  EXPECT_EQ(c.last(), HybridClock::pack(1000, 0xffff));
  const uint64_t next = c.now(1000);
  EXPECT_EQ(next, HybridClock::pack(1001, 0));
  EXPECT_GT(next, HybridClock::pack(1000, 0xffff));
  EXPECT_EQ(c.now(1001), HybridClock::pack(1001, 1));
}

TEST(HybridClockTest, StrictlyIncreasingUnderRandomInput) {
  HybridClock c;
  uint64_t prev = 0;
  uint64_t seed = 12345;
  for (int i = 0; i < 100000; ++i) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    const uint64_t phys = 10'000 + (seed >> 40) % 50;  // jitters back and forth
    const uint64_t v = (seed & 1) ? c.now(phys) : c.observe(HybridClock::pack(phys + 3, 9), phys);
    ASSERT_GT(v, prev) << "step " << i;
    prev = v;
  }
}

TEST(HybridClockTest, RefusesRemoteFarInTheFuture) {
  HybridClock c(/*maxForwardMs=*/60'000);
  EXPECT_EQ(c.observe(HybridClock::pack(1'000'000, 0), 1000), HybridClock::pack(1000, 0));
  EXPECT_EQ(c.rejected(), 1u);
  EXPECT_EQ(c.observe(HybridClock::pack(30'000, 0), 1000), HybridClock::pack(30'000, 1));
}

// ---- newer wins ----

TEST(ReplicaTableTest, InsertUpdateOlderDuplicate) {
  ReplicaTable t(settings());
  const FlowKey k = key(1000);
  EXPECT_EQ(t.apply(rec(k, ver(0, 10, 1)), kT0).outcome, ApplyOutcome::kInserted);
  FlowRecord newer = rec(k, ver(0, 20, 1));
  newer.mark = 7;
  EXPECT_EQ(t.apply(newer, kT0).outcome, ApplyOutcome::kUpdated);
  FlowRecord older = rec(k, ver(0, 15, 2));
  older.mark = 9;
  EXPECT_EQ(t.apply(older, kT0).outcome, ApplyOutcome::kIgnoredOlder);
  EXPECT_EQ(t.apply(newer, kT0).outcome, ApplyOutcome::kIgnoredDuplicate);
  ASSERT_TRUE(t.get(k));
  EXPECT_EQ(t.get(k)->record.mark, 7u);
  EXPECT_EQ(t.get(k)->record.version, ver(0, 20, 1));
  EXPECT_EQ(t.size(), 1u);
}

TEST(ReplicaTableTest, SplitBrainSameWinnerWhateverTheOrder) {
  // Two actives write the same flow; node id breaks an hlc tie.
  const FlowKey k = key(1001);
  FlowRecord a = rec(k, ver(0, 50, 1));
  a.mark = 1;
  FlowRecord b = rec(k, ver(0, 50, 2));
  b.mark = 2;
  FlowRecord c = rec(k, ver(0, 49, 3));
  c.mark = 3;
  std::vector<FlowRecord> recs{a, b, c};
  std::sort(recs.begin(), recs.end(),
            [](const FlowRecord& x, const FlowRecord& y) { return x.mark < y.mark; });
  do {
    ReplicaTable t(settings());
    for (const FlowRecord& r : recs) t.apply(r, kT0);
    ASSERT_TRUE(t.get(k));
    EXPECT_EQ(t.get(k)->record.mark, 2u);
    EXPECT_EQ(t.get(k)->record.version.node, 2);
  } while (std::next_permutation(
      recs.begin(), recs.end(),
      [](const FlowRecord& x, const FlowRecord& y) { return x.mark < y.mark; }));
}

TEST(ReplicaTableTest, VersionClashIsTieBrokenByContent) {
  const FlowKey k = key(1002);
  FlowRecord a = rec(k, ver(0, 50, 1));
  a.mark = 1;
  FlowRecord b = a;
  b.mark = 2;
  ReplicaTable t1(settings()), t2(settings());
  t1.apply(a, kT0);
  EXPECT_EQ(t1.apply(b, kT0).outcome, ApplyOutcome::kVersionClash);
  t2.apply(b, kT0);
  EXPECT_EQ(t2.apply(a, kT0).outcome, ApplyOutcome::kVersionClash);
  EXPECT_EQ(t1.get(k)->record, t2.get(k)->record);
  EXPECT_EQ(t1.get(k)->record.mark, 2u);
}

TEST(ReplicaTableTest, LowerGenerationIgnoredHigherReplaces) {
  ReplicaTable t(settings());
  const FlowKey k = key(1003);
  t.apply(rec(k, ver(2, 10, 1), TcpState::kTimeWait, st::kConfirmed | st::kAssured), kT0);
  EXPECT_EQ(t.apply(rec(k, ver(1, 99, 1)), kT0).outcome, ApplyOutcome::kIgnoredOlder);
  // Reopened: a new life, earlier state and flags do not carry over.
  EXPECT_EQ(t.apply(rec(k, ver(3, 5, 2), TcpState::kSynSent), kT0).outcome, ApplyOutcome::kUpdated);
  EXPECT_EQ(t.get(k)->record.tcpState, tcp(TcpState::kSynSent));
  EXPECT_EQ(t.get(k)->record.status & st::kAssured, 0u);
}

// ---- set-only flags and TCP progress within a generation ----

TEST(ReplicaTableTest, StickyStatusBitsNeverGoAway) {
  ReplicaTable t(settings());
  const FlowKey k = key(1004);
  t.apply(rec(k, ver(0, 10, 1), TcpState::kEstablished,
              st::kConfirmed | st::kSeenReply | st::kAssured | st::kSrcNat | st::kFixedTimeout),
          kT0);
  // Newer record without them (a stale writer in a split brain): sticky bits stay, other
  // bits follow the newer record.
  EXPECT_EQ(t.apply(rec(k, ver(0, 20, 2), TcpState::kEstablished, st::kConfirmed), kT0).outcome,
            ApplyOutcome::kUpdated);
  const uint32_t s = t.get(k)->record.status;
  EXPECT_EQ(s, st::kConfirmed | st::kSeenReply | st::kAssured | st::kSrcNat);
  // An older record can still add a sticky bit.
  EXPECT_EQ(t.apply(rec(k, ver(0, 5, 1), TcpState::kEstablished, st::kDstNat), kT0).outcome,
            ApplyOutcome::kMerged);
  EXPECT_TRUE(t.get(k)->record.status & st::kDstNat);
  EXPECT_EQ(t.get(k)->record.version, ver(0, 20, 2));
}

TEST(ReplicaTableTest, TcpStateNeverGoesBackwardsButNewerTimeoutWins) {
  ReplicaTable t(settings());
  const FlowKey k = key(1005);
  t.apply(rec(k, ver(0, 10, 1), TcpState::kTimeWait, st::kConfirmed, 120), kT0);
  EXPECT_EQ(
      t.apply(rec(k, ver(0, 20, 2), TcpState::kEstablished, st::kConfirmed, 432000), kT0).outcome,
      ApplyOutcome::kUpdated);
  EXPECT_EQ(t.get(k)->record.tcpState, tcp(TcpState::kTimeWait));
  EXPECT_EQ(t.get(k)->record.timeoutSec, 432000u);
  // A late, older CLOSE still advances the state, without touching the timeout.
  EXPECT_EQ(t.apply(rec(k, ver(0, 15, 1), TcpState::kClose, st::kConfirmed, 10), kT0).outcome,
            ApplyOutcome::kMerged);
  EXPECT_EQ(t.get(k)->record.tcpState, tcp(TcpState::kClose));
  EXPECT_EQ(t.get(k)->record.timeoutSec, 432000u);
}

TEST(ReplicaTableTest, TcpProgressOrder) {
  const TcpState order[] = {TcpState::kNone,      TcpState::kSynSent,     TcpState::kSynSent2,
                            TcpState::kSynRecv,   TcpState::kEstablished, TcpState::kFinWait,
                            TcpState::kCloseWait, TcpState::kLastAck,     TcpState::kTimeWait,
                            TcpState::kClose};
  for (size_t i = 1; i < std::size(order); ++i) {
    EXPECT_LT(tcpProgress(tcp(order[i - 1])), tcpProgress(tcp(order[i]))) << i;
  }
  EXPECT_GT(tcpProgress(200), tcpProgress(tcp(TcpState::kClose)));
}

TEST(ReplicaTableTest, MergeIsOrderIndependent) {
  const FlowKey k = key(1006);
  std::vector<FlowRecord> recs{
      rec(k, ver(0, 10, 1), TcpState::kSynSent, st::kConfirmed, 120),
      rec(k, ver(0, 11, 2), TcpState::kEstablished, st::kConfirmed | st::kSeenReply, 300),
      rec(k, ver(0, 12, 1), TcpState::kFinWait, st::kConfirmed | st::kAssured, 120),
      rec(k, ver(0, 13, 3), TcpState::kEstablished, st::kConfirmed, 432000),
  };
  std::vector<int> order{0, 1, 2, 3};
  std::optional<FlowRecord> first;
  do {
    ReplicaTable t(settings());
    for (int i : order) t.apply(recs[static_cast<size_t>(i)], kT0);
    const FlowRecord got = t.get(k)->record;
    if (!first) first = got;
    EXPECT_EQ(got, *first);
  } while (std::next_permutation(order.begin(), order.end()));
  EXPECT_EQ(first->tcpState, tcp(TcpState::kFinWait));
  EXPECT_EQ(first->status, st::kConfirmed | st::kSeenReply | st::kAssured);
  EXPECT_EQ(first->timeoutSec, 432000u);
  EXPECT_EQ(first->version, ver(0, 13, 3));
}

TEST(ReplicaTableTest, ResentMergedRecordIsADuplicate) {
  // Anti-entropy resends the merged state under the base's version: not a clash.
  ReplicaTable a(settings()), b(settings());
  const FlowKey k = key(1007);
  const FlowRecord r1 = rec(k, ver(0, 10, 1), TcpState::kClose, st::kAssured);
  const FlowRecord r2 = rec(k, ver(0, 20, 1), TcpState::kEstablished, st::kConfirmed);
  a.apply(r1, kT0);
  a.apply(r2, kT0);
  b.apply(r2, kT0);
  EXPECT_EQ(b.apply(a.get(k)->record, kT0).outcome, ApplyOutcome::kMerged);
  EXPECT_EQ(b.get(k)->record, a.get(k)->record);
  EXPECT_EQ(b.apply(a.get(k)->record, kT0).outcome, ApplyOutcome::kIgnoredDuplicate);
}

// ---- deletes and tombstones ----

TEST(ReplicaTableTest, DeleteLeavesTombstoneThatBlocksLateUpserts) {
  ReplicaTable t(settings(seconds(60)));
  const FlowKey k = key(1010);
  t.apply(rec(k, ver(0, 10, 1)), kT0);
  EXPECT_EQ(t.apply(FlowDelete{k, ver(0, 30, 1)}, kT0).outcome, ApplyOutcome::kDeleted);
  EXPECT_FALSE(t.get(k));
  EXPECT_EQ(t.size(), 0u);
  EXPECT_EQ(t.tombstoneCount(), 1u);
  EXPECT_EQ(t.tombstone(k), ver(0, 30, 1));
  EXPECT_EQ(t.apply(rec(k, ver(0, 20, 2)), kT0).outcome, ApplyOutcome::kResurrectionBlocked);
  EXPECT_EQ(t.apply(FlowDelete{k, ver(0, 30, 1)}, kT0).outcome, ApplyOutcome::kIgnoredDuplicate);
  EXPECT_EQ(t.apply(FlowDelete{k, ver(0, 25, 1)}, kT0).outcome, ApplyOutcome::kIgnoredOlder);
  EXPECT_FALSE(t.get(k));
}

TEST(ReplicaTableTest, DeleteArrivingFirstStillBlocks) {
  ReplicaTable t(settings());
  const FlowKey k = key(1011);
  EXPECT_EQ(t.apply(FlowDelete{k, ver(0, 30, 1)}, kT0).outcome, ApplyOutcome::kTombstoned);
  EXPECT_EQ(t.apply(rec(k, ver(0, 10, 1)), kT0).outcome, ApplyOutcome::kResurrectionBlocked);
  EXPECT_EQ(t.apply(rec(k, ver(0, 30, 1)), kT0).outcome, ApplyOutcome::kResurrectionBlocked);
  EXPECT_FALSE(t.get(k));
  EXPECT_EQ(t.size(), 0u);
}

TEST(ReplicaTableTest, ReopenedFlowResurrects) {
  ReplicaTable t(settings());
  const FlowKey k = key(1012);
  t.apply(rec(k, ver(0, 10, 1), TcpState::kTimeWait, st::kAssured), kT0);
  t.apply(FlowDelete{k, ver(0, 30, 1)}, kT0);
  // Reopened by another node whose clock is behind: the generation decides.
  EXPECT_EQ(t.apply(rec(k, ver(1, 5, 2), TcpState::kSynSent, st::kConfirmed), kT0).outcome,
            ApplyOutcome::kInserted);
  ASSERT_TRUE(t.get(k));
  EXPECT_EQ(t.get(k)->record.tcpState, tcp(TcpState::kSynSent));
  EXPECT_EQ(t.get(k)->record.status, st::kConfirmed);
  // The old generation's delete, late, changes nothing.
  EXPECT_EQ(t.apply(FlowDelete{k, ver(0, 40, 1)}, kT0).outcome, ApplyOutcome::kIgnoredOlder);
  EXPECT_TRUE(t.get(k));
}

TEST(ReplicaTableTest, NewerSameGenerationUpsertBeatsOlderDelete) {
  // Split brain: A deleted at hlc 30, B kept writing at hlc 40. Newer wins: live, and the
  // sticky bits of the upserts before the delete come back with it whatever the order.
  const FlowKey k = key(1013);
  const FlowRecord early = rec(k, ver(0, 10, 1), TcpState::kEstablished, st::kAssured);
  const FlowDelete del{k, ver(0, 30, 1)};
  const FlowRecord late = rec(k, ver(0, 40, 2), TcpState::kEstablished, st::kConfirmed);
  ReplicaTable t1(settings()), t2(settings());
  t1.apply(early, kT0);
  EXPECT_EQ(t1.apply(del, kT0).outcome, ApplyOutcome::kDeleted);
  EXPECT_EQ(t1.apply(late, kT0).outcome, ApplyOutcome::kInserted);
  t2.apply(late, kT0);
  EXPECT_EQ(t2.apply(del, kT0).outcome, ApplyOutcome::kIgnoredOlder);
  EXPECT_EQ(t2.apply(early, kT0).outcome, ApplyOutcome::kMerged);
  ASSERT_TRUE(t1.get(k) && t2.get(k));
  EXPECT_EQ(t1.get(k)->record, t2.get(k)->record);
  EXPECT_EQ(t1.get(k)->record.status, st::kConfirmed | st::kAssured);
}

TEST(ReplicaTableTest, TombstonesExpire) {
  ReplicaTable t(settings(seconds(60)));
  const FlowKey k = key(1014);
  t.apply(FlowDelete{k, ver(0, 30, 1)}, kT0);
  EXPECT_EQ(t.expire(kT0 + seconds(59)).tombstones, 0u);
  EXPECT_EQ(t.tombstoneCount(), 1u);
  EXPECT_EQ(t.expire(kT0 + seconds(60)).tombstones, 1u);
  EXPECT_EQ(t.tombstoneCount(), 0u);
  EXPECT_EQ(t.stats().tombstonesExpired, 1u);
  // Past the TTL a stale upsert gets in: the TTL must outlast any reordering.
  EXPECT_EQ(t.apply(rec(k, ver(0, 10, 1)), kT0 + seconds(61)).outcome, ApplyOutcome::kInserted);
}

// ---- timeouts ----

TEST(ReplicaTableTest, ReplicaTimeoutsAgeAndExpire) {
  ReplicaTable t(settings());
  const FlowKey a = key(1020), b = key(1021);
  t.apply(rec(a, ver(0, 10, 1), TcpState::kEstablished, st::kConfirmed, 100), kT0);
  t.apply(rec(b, ver(0, 10, 1), TcpState::kEstablished, st::kConfirmed, 50), kT0);
  EXPECT_EQ(t.get(a)->remaining(kT0 + seconds(30)), seconds(70));
  EXPECT_EQ(t.get(b)->remaining(kT0 + seconds(80)), 0);
  // A refresh at +40 s restarts a's clock; b shrinks to 10 s at +10 s.
  t.apply(rec(a, ver(0, 20, 1), TcpState::kEstablished, st::kConfirmed, 100), kT0 + seconds(40));
  t.apply(rec(b, ver(0, 20, 1), TcpState::kClose, st::kConfirmed, 10), kT0 + seconds(10));
  EXPECT_EQ(t.expire(kT0 + seconds(19)).flows, 0u);
  EXPECT_EQ(t.expire(kT0 + seconds(20)).flows, 1u);
  EXPECT_FALSE(t.get(b));
  EXPECT_EQ(t.expire(kT0 + seconds(139)).flows, 0u);
  EXPECT_TRUE(t.get(a));
  EXPECT_EQ(t.expire(kT0 + seconds(140)).flows, 1u);
  EXPECT_EQ(t.size(), 0u);
  EXPECT_EQ(t.stats().flowsExpired, 2u);
  EXPECT_EQ(t.tombstoneCount(), 0u);
  // An ignored duplicate does not restart the clock.
  t.apply(rec(a, ver(0, 30, 1), TcpState::kEstablished, st::kConfirmed, 100), kT0 + seconds(200));
  t.apply(rec(a, ver(0, 30, 1), TcpState::kEstablished, st::kConfirmed, 100), kT0 + seconds(250));
  EXPECT_EQ(t.get(a)->received, kT0 + seconds(200));
  EXPECT_EQ(t.expire(kT0 + seconds(300)).flows, 1u);
}

// ---- NAT conflicts ----

TEST(ReplicaTableTest, NatConflictEarliestCreatorWinsInEitherOrder) {
  const FlowKey k1 = key(2001), k2 = key(2002);
  FlowRecord r1 = rec(k1, ver(0, 200, 1), TcpState::kEstablished, st::kSrcNat);
  FlowRecord r2 = rec(k2, ver(0, 100, 2), TcpState::kEstablished, st::kSrcNat);
  r1.reply = replyOf(k1, 40000);
  r2.reply = replyOf(k2, 40000);
  ASSERT_EQ(r1.reply, r2.reply);

  ReplicaTable t1(settings());
  EXPECT_FALSE(t1.apply(r1, kT0).natLoser);
  const ApplyResult res = t1.apply(r2, kT0);
  EXPECT_EQ(res.outcome, ApplyOutcome::kInserted);
  EXPECT_EQ(res.natLoser, k1);
  EXPECT_TRUE(t1.get(k1)->natShadowed);
  EXPECT_FALSE(t1.get(k2)->natShadowed);
  EXPECT_EQ(t1.stats().natConflicts, 1u);
  EXPECT_EQ(t1.natShadowedCount(), 1u);

  ReplicaTable t2(settings());
  t2.apply(r2, kT0);
  EXPECT_EQ(t2.apply(r1, kT0).natLoser, k1);
  EXPECT_TRUE(t2.get(k1)->natShadowed);
  EXPECT_FALSE(t2.get(k2)->natShadowed);

  // A later update of the winner is no new conflict.
  r2.version = ver(0, 300, 2);
  EXPECT_FALSE(t2.apply(r2, kT0).natLoser);
  EXPECT_EQ(t2.stats().natConflicts, 1u);
  // Same zone only: the same reply in another zone is no conflict.
  FlowRecord r3 = rec(key(2001, 5), ver(0, 50, 3));
  r3.reply = r1.reply;
  EXPECT_FALSE(t2.apply(r3, kT0).natLoser);
  EXPECT_FALSE(t2.get(r3.key)->natShadowed);
}

TEST(ReplicaTableTest, NatLoserComesBackWhenWinnerGoes) {
  const FlowKey k1 = key(2011), k2 = key(2012);
  FlowRecord r1 = rec(k1, ver(0, 200, 1));
  FlowRecord r2 = rec(k2, ver(0, 100, 2));
  r1.reply = replyOf(k1, 40001);
  r2.reply = replyOf(k2, 40001);
  ReplicaTable t(settings());
  t.apply(r1, kT0);
  t.apply(r2, kT0);
  ASSERT_TRUE(t.get(k1)->natShadowed);
  t.apply(FlowDelete{k2, ver(0, 300, 2)}, kT0);
  EXPECT_FALSE(t.get(k1)->natShadowed);
  EXPECT_EQ(t.natShadowedCount(), 0u);

  // A winner that changes its reply tuple away also frees the loser.
  ReplicaTable u(settings());
  u.apply(r1, kT0);
  u.apply(r2, kT0);
  FlowRecord moved = r2;
  moved.version = ver(0, 150, 2);
  moved.reply = replyOf(k2, 40002);
  u.apply(moved, kT0);
  EXPECT_FALSE(u.get(k1)->natShadowed);
  EXPECT_FALSE(u.get(k2)->natShadowed);
}

TEST(ReplicaTableTest, NatCreatorIsEarliestRecordSeenOfTheGeneration) {
  const FlowKey k1 = key(2021), k2 = key(2022);
  FlowRecord r1 = rec(k1, ver(0, 200, 1));
  FlowRecord r2late = rec(k2, ver(0, 300, 2));
  FlowRecord r2early = rec(k2, ver(0, 100, 2));
  for (FlowRecord* r : {&r1, &r2late, &r2early}) r->reply = replyOf(k1, 40003);
  ReplicaTable t(settings());
  t.apply(r1, kT0);
  EXPECT_EQ(t.apply(r2late, kT0).natLoser, k2);
  // k2's creation record arrives late: k2 was first after all.
  const ApplyResult res = t.apply(r2early, kT0);
  EXPECT_EQ(res.outcome, ApplyOutcome::kIgnoredOlder);
  EXPECT_EQ(res.natLoser, k1);
  EXPECT_EQ(t.get(k2)->createdHlc, 100u);
  EXPECT_FALSE(t.get(k2)->natShadowed);
  EXPECT_TRUE(t.get(k1)->natShadowed);
  EXPECT_EQ(t.stats().natConflicts, 2u);
}

// ---- bulk sweep ----

TEST(ReplicaTableTest, BulkSweepRemovesWhatTheOwnerNoLongerHas) {
  ReplicaTable t(settings());
  for (uint16_t p = 0; p < 6; ++p) t.apply(rec(key(3000 + p), ver(0, 10, p < 4 ? 1 : 2)), kT0);
  t.beginBulk(1, 7);
  t.apply(rec(key(3000), ver(0, 20, 1)), kT0);  // refreshed
  t.apply(rec(key(3001), ver(0, 10, 1)), kT0);  // same version: still proof of life
  t.apply(rec(key(3004), ver(0, 20, 2)), kT0);  // another node's traffic: no mark for node 1
  EXPECT_EQ(t.endBulk(1, 6), std::nullopt);
  EXPECT_EQ(t.endBulk(1, 7), 2u);
  EXPECT_TRUE(t.get(key(3000)));
  EXPECT_TRUE(t.get(key(3001)));
  EXPECT_FALSE(t.get(key(3002)));
  EXPECT_FALSE(t.get(key(3003)));
  EXPECT_TRUE(t.get(key(3004)));  // node 2's flows are not node 1's bulk's business
  EXPECT_TRUE(t.get(key(3005)));
  EXPECT_EQ(t.stats().swept, 2u);
  EXPECT_EQ(t.endBulk(1, 7), std::nullopt);  // already ended
  // A flow taken over by another node since is not swept by its old owner's bulk.
  t.apply(rec(key(3001), ver(0, 30, 2)), kT0);
  t.beginBulk(1, 8);
  EXPECT_EQ(t.endBulk(1, 8), 1u);  // key 3000
  EXPECT_TRUE(t.get(key(3001)));
  EXPECT_EQ(t.size(), 3u);
}

TEST(ReplicaTableTest, RepeatedBulkBeginKeepsTheBulkOpen) {
  // The sender repeats BulkBegin in every datagram of a bulk, so that the bulk opens even when
  // the first datagram is lost: a repeat must keep the marks made so far.
  ReplicaTable t(settings());
  for (uint16_t p = 0; p < 4; ++p) t.apply(rec(key(3100 + p), ver(0, 10, 1)), kT0);
  t.beginBulk(1, 9);
  t.apply(rec(key(3100), ver(0, 10, 1)), kT0);
  t.beginBulk(1, 9);  // the next datagram
  t.apply(rec(key(3101), ver(0, 10, 1)), kT0);
  t.beginBulk(1, 9);
  EXPECT_EQ(t.endBulk(1, 9), 2u);
  EXPECT_TRUE(t.get(key(3100)));
  EXPECT_TRUE(t.get(key(3101)));
  EXPECT_FALSE(t.get(key(3102)));
  EXPECT_FALSE(t.get(key(3103)));
  // Another id still abandons the open bulk, and its own marks start from nothing.
  t.beginBulk(1, 10);
  t.apply(rec(key(3100), ver(0, 10, 1)), kT0);
  t.beginBulk(1, 11);
  t.apply(rec(key(3101), ver(0, 10, 1)), kT0);
  EXPECT_EQ(t.endBulk(1, 10), std::nullopt);
  EXPECT_EQ(t.endBulk(1, 11), 1u);
  EXPECT_FALSE(t.get(key(3100)));
  EXPECT_TRUE(t.get(key(3101)));
  // Once ended, the same id opens afresh.
  t.beginBulk(1, 11);
  EXPECT_EQ(t.endBulk(1, 11), 1u);
  EXPECT_EQ(t.size(), 0u);
}

TEST(ReplicaTableTest, SweepSparesFlowsWrittenAfterTheBulkBegan) {
  // The sender's live traffic overtakes its bulk: a flow it wrote after taking the snapshot
  // may arrive before the bulk opens here, unmarked. It must survive the sweep.
  ReplicaTable t(settings());
  t.apply(rec(key(3200), ver(0, 10, 1)), kT0);  // stale: the owner no longer has it
  t.apply(rec(key(3201), ver(0, 60, 1)), kT0);  // written after the snapshot (hlc 50)
  t.beginBulk(1, 4, 50);
  EXPECT_EQ(t.endBulk(1, 4), 1u);
  EXPECT_FALSE(t.get(key(3200)));
  EXPECT_TRUE(t.get(key(3201)));
}

TEST(ReplicaTableTest, DigestsSeeEveryFieldOfTheContent) {
  // Two replicas with the same version but another mark, timeout or reply tuple differ.
  ReplicaTable a(settings()), b(settings());
  FlowRecord r = rec(key(3300), ver(0, 10, 1));
  a.apply(r, kT0);
  r.mark = 5;
  b.apply(r, kT0);
  EXPECT_NE(a.digest(a.rangeOf(r.key)), b.digest(b.rangeOf(r.key)));
  ReplicaTable c(settings());
  r.mark = 0;
  c.apply(r, kT0);
  EXPECT_EQ(a.digest(a.rangeOf(r.key)), c.digest(c.rangeOf(r.key)));
}

TEST(ReplicaTableTest, SeqAdjustSctpAndDccpStateAreContent) {
  // Each of the newer fields alone: another value under the same version is a clash that
  // every node breaks the same way, and digests tell the two replicas apart.
  const std::vector<std::function<void(FlowRecord&)>> changes = {
      [](FlowRecord& r) { r.seqAdj[0].offsetAfter = -12; },
      [](FlowRecord& r) { r.seqAdj[1].correctionPos = 99; },
      [](FlowRecord& r) { r.seqAdj[1].offsetBefore = INT32_MIN; },
      [](FlowRecord& r) { r.sctpState = 4; },
      [](FlowRecord& r) { r.sctpVtag[0] = 7; },
      [](FlowRecord& r) { r.sctpVtag[1] = 7; },
      [](FlowRecord& r) { r.dccpState = 4; },
      [](FlowRecord& r) { r.dccpRole = 1; },
      [](FlowRecord& r) { r.dccpHandshakeSeq = 1; },
  };
  for (size_t i = 0; i < changes.size(); ++i) {
    SCOPED_TRACE(i);
    const FlowRecord a = rec(key(3400), ver(0, 10, 1));
    FlowRecord b = a;
    changes[i](b);
    EXPECT_NE(contentLess(a, b), contentLess(b, a));
    ReplicaTable t1(settings()), t2(settings());
    t1.apply(a, kT0);
    t2.apply(b, kT0);
    EXPECT_NE(t1.digest(t1.rangeOf(a.key)), t2.digest(t2.rangeOf(a.key)));
    EXPECT_EQ(t1.apply(b, kT0).outcome, ApplyOutcome::kVersionClash);
    EXPECT_EQ(t2.apply(a, kT0).outcome, ApplyOutcome::kVersionClash);
    EXPECT_EQ(t1.get(a.key)->record, t2.get(a.key)->record);
    EXPECT_EQ(t1.digest(t1.rangeOf(a.key)), t2.digest(t2.rangeOf(a.key)));
    // A resend of the same content stays a duplicate.
    EXPECT_EQ(t1.apply(t1.get(a.key)->record, kT0).outcome, ApplyOutcome::kIgnoredDuplicate);
  }
}

// ---- the table's own structures under churn ----

FlowKey manyKey(uint32_t i) {
  FlowKey k;
  k.orig.src = table::Addr::v4(0x0a000000 + i);
  k.orig.dst = table::Addr::v4(0xc0a80001 + i % 7);
  k.orig.sport = static_cast<uint16_t>(1024 + i % 50000);
  k.orig.dport = 443;
  k.orig.l4 = table::proto::kTcp;
  k.zone = static_cast<uint16_t>(i % 3 == 0 ? 1 : 0);
  return k;
}

std::vector<FlowKey> liveKeys(const ReplicaTable& t) {
  std::vector<FlowKey> keys;
  t.forEach([&](const ReplicaFlow& f) { keys.push_back(f.record.key); });
  std::sort(keys.begin(), keys.end(), flowKeyLess);
  return keys;
}

TEST(ReplicaTableTest, ChurnThroughExpiryReusesSlotsAndForEachSeesEveryLiveFlow) {
  // Thousands of flows with spread timeouts, deletes, expiry in steps, then a second population
  // in the freed slots: counts, forEach and lookups agree with a plain model at every step.
  ReplicaTable t(settings(seconds(60)));
  constexpr uint32_t kFlows = 6000;
  std::map<uint32_t, Nanos> liveUntil;  // flow index -> deadline
  std::map<uint32_t, Nanos> tombUntil;
  for (uint32_t i = 0; i < kFlows; ++i) {
    const uint32_t timeout = 1 + i % 200;
    ASSERT_EQ(
        t.apply(rec(manyKey(i), ver(0, 10, 1), TcpState::kEstablished, st::kConfirmed, timeout),
                kT0)
            .outcome,
        ApplyOutcome::kInserted);
    liveUntil[i] = kT0 + seconds(timeout);
  }
  for (uint32_t i = 0; i < kFlows; i += 5) {
    t.apply(FlowDelete{manyKey(i), ver(0, 20, 1)}, kT0 + seconds(1) / 2);
    liveUntil.erase(i);
    tombUntil[i] = kT0 + seconds(1) / 2 + seconds(60);
  }
  auto check = [&](Nanos now) {
    ASSERT_EQ(t.size(), liveUntil.size()) << now - kT0;
    ASSERT_EQ(t.tombstoneCount(), tombUntil.size()) << now - kT0;
    std::vector<FlowKey> want;
    for (const auto& [i, until] : liveUntil) want.push_back(manyKey(i));
    std::sort(want.begin(), want.end(), flowKeyLess);
    ASSERT_EQ(liveKeys(t), want);
  };
  check(kT0);
  for (Nanos now = kT0; now <= kT0 + seconds(250); now += seconds(1) / 3) {
    const ExpireResult r = t.expire(now);
    size_t flows = 0, tombs = 0;
    std::erase_if(liveUntil, [&](const auto& p) { return p.second <= now && ++flows; });
    std::erase_if(tombUntil, [&](const auto& p) { return p.second <= now && ++tombs; });
    ASSERT_EQ(r.flows, flows);
    ASSERT_EQ(r.tombstones, tombs);
    if ((now - kT0) % seconds(10) < seconds(1) / 3) check(now);
  }
  check(kT0 + seconds(250));
  EXPECT_EQ(t.size(), 0u);

  // A second population lands in the freed slots; the first one's keys are gone for good.
  const Nanos t1 = kT0 + seconds(300);
  for (uint32_t i = kFlows; i < 2 * kFlows; ++i) {
    ASSERT_EQ(t.apply(rec(manyKey(i), ver(0, 30, 2)), t1).outcome, ApplyOutcome::kInserted);
    liveUntil[i] = t1 + seconds(300);
  }
  check(t1);
  for (uint32_t i = 0; i < 2 * kFlows; i += 97) {
    EXPECT_EQ(t.get(manyKey(i)).has_value(), i >= kFlows) << i;
  }
  EXPECT_EQ(t.expire(t1 + seconds(299)).flows, 0u);
  EXPECT_EQ(t.expire(t1 + seconds(300)).flows, kFlows);
}

TEST(ReplicaTableTest, StaleTimersOfAForgottenFlowDoNotTouchItsSuccessor) {
  ReplicaTable t(settings(seconds(60)));
  const FlowKey a = key(3200), b = key(3201);
  t.apply(rec(a, ver(0, 10, 1), TcpState::kEstablished, st::kConfirmed, 100), kT0);
  t.apply(FlowDelete{a, ver(0, 20, 1)}, kT0);  // timer at +60 s; the one at +100 s is stale
  EXPECT_EQ(t.expire(kT0 + seconds(60)).tombstones, 1u);
  // b takes a's slot, with a deadline at a's stale timer, then is refreshed further.
  t.apply(rec(b, ver(0, 10, 1), TcpState::kEstablished, st::kConfirmed, 40), kT0 + seconds(60));
  t.apply(rec(b, ver(0, 11, 1), TcpState::kEstablished, st::kConfirmed, 100), kT0 + seconds(90));
  EXPECT_EQ(t.expire(kT0 + seconds(100)).flows, 0u);
  EXPECT_EQ(t.expire(kT0 + seconds(189)).flows, 0u);
  EXPECT_TRUE(t.get(b));
  EXPECT_EQ(t.expire(kT0 + seconds(190)).flows, 1u);
  EXPECT_EQ(t.size() + t.tombstoneCount(), 0u);
}

TEST(ReplicaTableTest, DeadlinesMovingEarlierOverAndOverStayExact) {
  // Every newer record brings a shorter timeout, so each leaves a timer behind: the table must
  // not pile them up without bound, and the flow still expires at its last deadline.
  ReplicaTable t(settings());
  const FlowKey k = key(3300);
  for (uint32_t i = 0; i < 100'000; ++i) {
    t.apply(rec(k, ver(0, 10 + i, 1), TcpState::kEstablished, st::kConfirmed, 200'000 - i), kT0);
  }
  EXPECT_LT(t.memoryBytes(), size_t{1} << 20);  // 100'000 timers would take 1.6 MB
  EXPECT_EQ(t.expire(kT0 + seconds(100'000)).flows, 0u);
  EXPECT_EQ(t.expire(kT0 + seconds(100'001)).flows, 1u);
}

TEST(ReplicaTableTest, TimeoutsOfDaysAndLongClockJumps) {
  // Beyond the timer wheel's horizon (about an hour) and past it in one step.
  ReplicaTable t(settings());
  for (uint16_t p = 0; p < 100; ++p) {
    t.apply(rec(key(3400 + p), ver(0, 10, 1), TcpState::kEstablished, st::kConfirmed,
                432000 - 3600u * p),
            kT0);
  }
  EXPECT_EQ(t.expire(kT0 + seconds(3600)).flows, 0u);                 // the earliest is due at 21 h
  EXPECT_EQ(t.expire(kT0 + seconds(432000 - 3600 * 90)).flows, 10u);  // p = 90..99
  size_t expired = 0;
  for (Nanos now = kT0 + seconds(432000 - 3600 * 90 + 1800); now <= kT0 + seconds(432000);
       now += seconds(1800)) {
    expired += t.expire(now).flows;
  }
  EXPECT_EQ(expired, 90u);
  EXPECT_EQ(t.size(), 0u);
}

// ---- digests ----

TEST(ReplicaTableTest, DigestRangesTileTheHashSpace) {
  for (uint32_t ranges : {1u, 3u, 256u, 65536u}) {
    ReplicaTable t(settings(seconds(60), ranges));
    const auto all = t.digests();
    ASSERT_EQ(all.size(), ranges);
    EXPECT_EQ(all.front().rangeFirst, 0u);
    EXPECT_EQ(all.back().rangeLast, 0xffffffffu);
    for (size_t i = 1; i < all.size(); ++i) {
      ASSERT_EQ(all[i].rangeFirst, all[i - 1].rangeLast + 1) << ranges << " " << i;
    }
    const FlowKey k = key(4000);
    const uint32_t h = static_cast<uint32_t>(flowKeyHash(k) >> 32);
    const Digest d = t.digest(t.rangeOf(k));
    EXPECT_LE(d.rangeFirst, h);
    EXPECT_GE(d.rangeLast, h);
  }
}

TEST(ReplicaTableTest, DigestsAreIncrementalAndOrderIndependent) {
  std::vector<FlowRecord> recs;
  for (uint16_t p = 0; p < 200; ++p) recs.push_back(rec(key(5000 + p), ver(0, 10 + p, 1)));
  ReplicaTable a(settings()), b(settings());
  for (const FlowRecord& r : recs) a.apply(r, kT0);
  for (auto it = recs.rbegin(); it != recs.rend(); ++it) b.apply(*it, kT0);
  EXPECT_EQ(a.digests(), b.digests());
  uint32_t total = 0;
  for (const Digest& d : a.digests()) total += d.flows;
  EXPECT_EQ(total, 200u);

  // A change moves exactly one range; undoing the divergence brings the digest back.
  const auto before = a.digests();
  const FlowKey k = key(5000);
  a.apply(rec(k, ver(0, 999, 1)), kT0);
  const auto after = a.digests();
  int differing = 0;
  for (size_t i = 0; i < before.size(); ++i) differing += before[i] == after[i] ? 0 : 1;
  EXPECT_EQ(differing, 1);
  EXPECT_NE(a.digest(a.rangeOf(k)), b.digest(b.rangeOf(k)));
  b.apply(rec(k, ver(0, 999, 1)), kT0);
  EXPECT_EQ(a.digests(), b.digests());
  // Sticky bits merged from an older record show in the digest too.
  a.apply(rec(k, ver(0, 5, 1), TcpState::kEstablished, st::kAssured), kT0);
  EXPECT_NE(a.digest(a.rangeOf(k)), b.digest(b.rangeOf(k)));
  // Deleting empties the range contribution.
  ReplicaTable c(settings());
  const auto empty = c.digests();
  c.apply(recs[0], kT0);
  c.apply(FlowDelete{recs[0].key, ver(0, 1000, 1)}, kT0);
  EXPECT_EQ(c.digests(), empty);
}

TEST(ReplicaTableTest, ResendingADifferingRangeHeals) {
  ReplicaTable a(settings()), b(settings());
  for (uint16_t p = 0; p < 100; ++p) {
    const FlowRecord r = rec(key(6000 + p), ver(0, 10, 1));
    a.apply(r, kT0);
    if (p % 7 != 0) b.apply(r, kT0);  // b silently lost some
  }
  a.apply(FlowDelete{key(6001), ver(0, 20, 1)}, kT0);  // and a delete
  for (uint32_t r = 0; r < a.rangeCount(); ++r) {
    if (a.digest(r) == b.digest(r)) continue;
    const RangeContents c = a.flowsInRange(r);
    for (const FlowRecord& f : c.flows) b.apply(f, kT0);
    for (const FlowDelete& d : c.tombstones) b.apply(d, kT0);
  }
  EXPECT_EQ(a.digests(), b.digests());
  EXPECT_EQ(a.size(), b.size());
  EXPECT_FALSE(b.get(key(6001)));
}

TEST(ReplicaTableTest, KeyHashIsStable) {
  // Part of the protocol: digests of different builds and hosts must agree.
  EXPECT_EQ(flowKeyHash(key(1000)), 0x6f49fd450651c4bcULL);
  EXPECT_NE(flowKeyHash(key(1000)), flowKeyHash(key(1000, 1)));
  EXPECT_NE(flowKeyHash(key(1000)), flowKeyHash(key(1001)));
}

}  // namespace
}  // namespace ctsync::replication
