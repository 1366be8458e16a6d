// The replica's expectations: merge, tombstones, expiry, sweeps, digests, and their life tied
// to the master flow's.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "replication/replica_table.hpp"
#include "table/tcp.hpp"

namespace ctsync::replication {
namespace {

using table::seconds;

constexpr Nanos kT0 = seconds(1'000'000);

table::Tuple tcp4(uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport) {
  table::Tuple t;
  t.src = table::Addr::v4(src);
  t.dst = table::Addr::v4(dst);
  t.sport = sport;
  t.dport = dport;
  t.l4 = table::proto::kTcp;
  return t;
}

// The FTP control connection of client `n`.
FlowRecord master(uint16_t n, Version v, uint16_t zone = 0) {
  FlowRecord f;
  f.key.orig = tcp4(0x0a000000u + n, 0xc0a80001, static_cast<uint16_t>(40000 + n), 21);
  f.key.zone = zone;
  f.reply = *table::invertTuple(f.key.orig);
  f.status = table::status::kConfirmed;
  f.tcpState = static_cast<uint8_t>(table::TcpState::kEstablished);
  f.timeoutSec = 3000;
  f.helper = 1;
  f.version = v;
  return f;
}

// A data connection the FTP helper expects for `m`, on `port`.
ExpectRecord expectOf(const FlowRecord& m, uint16_t port, Version v, uint32_t timeoutSec = 300) {
  ExpectRecord e;
  e.master = m.key.orig;
  e.key.zone = m.key.zone;
  e.key.expected = tcp4(0, 0, 0, port);
  e.key.expected.src = m.key.orig.dst;
  e.key.expected.dst = m.key.orig.src;
  e.mask = tcp4(0xffffffff, 0xffffffff, 0, 0xffff);
  e.timeoutSec = timeoutSec;
  e.helper = 1;
  e.fn = 1;
  e.version = v;
  return e;
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

bool changed(ReplicaTable& t, const ExpectKey& k) {
  const auto c = t.takeExpectChanges();
  return std::find(c.begin(), c.end(), k) != c.end();
}

TEST(ExpectTableTest, LastWriterWinsWhateverTheOrder) {
  const FlowRecord m = master(1, ver(0, 10, 1));
  const ExpectRecord a = expectOf(m, 5000, ver(0, 20, 1));
  ExpectRecord b = a;
  b.version = ver(0, 30, 2);
  b.timeoutSec = 120;
  b.flags = expectflag::kPermanent;
  const ExpectDelete d{a.key, ver(0, 25, 1)};  // between a and b
  const std::vector<Record> all = {a, b, d};
  std::vector<size_t> order = {0, 1, 2};
  do {
    ReplicaTable t(settings());
    t.apply(m, kT0);
    for (const size_t i : order) {
      if (const auto* e = std::get_if<ExpectRecord>(&all[i])) t.apply(*e, kT0);
      if (const auto* x = std::get_if<ExpectDelete>(&all[i])) t.apply(*x, kT0);
    }
    ASSERT_TRUE(t.getExpect(a.key).has_value());
    EXPECT_EQ(t.getExpect(a.key)->record, b);
    EXPECT_EQ(t.expectCount(), 1u);
    EXPECT_EQ(t.expectTombstoneCount(), 0u);
  } while (std::next_permutation(order.begin(), order.end()));
}

TEST(ExpectTableTest, OutcomesAndTombstones) {
  ReplicaTable t(settings());
  const FlowRecord m = master(2, ver(0, 10, 1));
  t.apply(m, kT0);
  const ExpectRecord e = expectOf(m, 5001, ver(0, 20, 1));
  EXPECT_EQ(t.apply(e, kT0), ApplyOutcome::kInserted);
  EXPECT_TRUE(changed(t, e.key));
  EXPECT_EQ(t.apply(e, kT0), ApplyOutcome::kIgnoredDuplicate);
  EXPECT_FALSE(changed(t, e.key));
  ExpectRecord older = e;
  older.version = ver(0, 15, 1);
  EXPECT_EQ(t.apply(older, kT0), ApplyOutcome::kIgnoredOlder);
  ExpectRecord newer = e;
  newer.version = ver(0, 21, 1);
  newer.timeoutSec = 10;
  EXPECT_EQ(t.apply(newer, kT0), ApplyOutcome::kUpdated);
  EXPECT_TRUE(changed(t, e.key));
  // A delete: gone, and a tombstone keeps every older upsert out, relayed late or not.
  EXPECT_EQ(t.apply(ExpectDelete{e.key, ver(0, 30, 1)}, kT0), ApplyOutcome::kDeleted);
  EXPECT_TRUE(changed(t, e.key));
  EXPECT_FALSE(t.getExpect(e.key));
  EXPECT_EQ(t.expectTombstone(e.key), ver(0, 30, 1));
  EXPECT_EQ(t.apply(newer, kT0), ApplyOutcome::kResurrectionBlocked);
  EXPECT_EQ(t.apply(ExpectDelete{e.key, ver(0, 30, 1)}, kT0), ApplyOutcome::kIgnoredDuplicate);
  EXPECT_EQ(t.apply(ExpectDelete{e.key, ver(0, 29, 1)}, kT0), ApplyOutcome::kIgnoredOlder);
  EXPECT_EQ(t.expectCount(), 0u);
  EXPECT_EQ(t.expectTombstoneCount(), 1u);
  // The helper announces the same connection again later: a newer write lives.
  ExpectRecord again = e;
  again.version = ver(0, 40, 1);
  EXPECT_EQ(t.apply(again, kT0), ApplyOutcome::kInserted);
  // A delete for an expectation never seen leaves a tombstone that outruns its upsert.
  const ExpectRecord other = expectOf(m, 5002, ver(0, 50, 2));
  EXPECT_EQ(t.apply(ExpectDelete{other.key, ver(0, 51, 2)}, kT0), ApplyOutcome::kTombstoned);
  EXPECT_EQ(t.apply(other, kT0), ApplyOutcome::kResurrectionBlocked);
  // Tombstones go after the TTL; then nothing is left of them.
  t.expire(kT0 + seconds(61));
  EXPECT_FALSE(t.expectTombstone(other.key));
  EXPECT_EQ(t.stats().expectTombstonesExpired, 1u);
  EXPECT_EQ(t.expectTombstoneCount(), 0u);
}

TEST(ExpectTableTest, VersionClashIsTieBrokenByContent) {
  const FlowRecord m = master(3, ver(0, 10, 1));
  ExpectRecord a = expectOf(m, 5003, ver(0, 20, 1));
  ExpectRecord b = a;
  b.cls = 1;
  ReplicaTable t1(settings()), t2(settings());
  t1.apply(m, kT0);
  t2.apply(m, kT0);
  t1.apply(a, kT0);
  EXPECT_EQ(t1.apply(b, kT0), ApplyOutcome::kVersionClash);
  t2.apply(b, kT0);
  EXPECT_EQ(t2.apply(a, kT0), ApplyOutcome::kVersionClash);
  EXPECT_EQ(t1.getExpect(a.key)->record, t2.getExpect(a.key)->record);
  EXPECT_EQ(t1.digests(), t2.digests());
}

TEST(ExpectTableTest, TimeoutRunsFromArrival) {
  ReplicaTable t(settings());
  const FlowRecord m = master(4, ver(0, 10, 1));
  t.apply(m, kT0);
  const ExpectRecord e = expectOf(m, 5004, ver(0, 20, 1), 30);
  t.apply(e, kT0 + seconds(5));
  t.takeExpectChanges();
  EXPECT_EQ(t.getExpect(e.key)->received, kT0 + seconds(5));
  EXPECT_EQ(t.getExpect(e.key)->remaining(kT0 + seconds(15)), seconds(20));
  t.expire(kT0 + seconds(34));
  EXPECT_TRUE(t.getExpect(e.key));
  t.expire(kT0 + seconds(35));
  EXPECT_FALSE(t.getExpect(e.key));
  EXPECT_FALSE(t.expectTombstone(e.key));  // forgotten, like an expired flow
  EXPECT_TRUE(changed(t, e.key));
  EXPECT_EQ(t.stats().expectsExpired, 1u);
  const auto forgotten = t.takeExpectsForgotten();
  ASSERT_EQ(forgotten.size(), 1u);
  EXPECT_EQ(forgotten[0], (ExpectDelete{e.key, e.version}));
  // A newer write (a refresh) moves the deadline on.
  ExpectRecord f = e;
  f.version = ver(0, 21, 1);
  t.apply(f, kT0 + seconds(40));
  f.version = ver(0, 22, 1);
  t.apply(f, kT0 + seconds(60));
  t.expire(kT0 + seconds(80));
  EXPECT_TRUE(t.getExpect(e.key));
  t.expire(kT0 + seconds(90));
  EXPECT_FALSE(t.getExpect(e.key));
  EXPECT_EQ(t.getExpect(e.key), std::nullopt);
  EXPECT_EQ(t.stats().expectsExpired, 2u);
}

TEST(ExpectTableTest, DiesWithItsMasterWhateverEndsIt) {
  enum class End { kDelete, kExpiry, kSweep };
  for (const End end : {End::kDelete, End::kExpiry, End::kSweep}) {
    SCOPED_TRACE(static_cast<int>(end));
    ReplicaTable t(settings());
    const FlowRecord m = master(5, ver(0, 10, 1));
    FlowRecord bystander = master(6, ver(0, 10, 2));
    bystander.timeoutSec = 10000;
    t.apply(m, kT0);
    t.apply(bystander, kT0);
    // Their own timeouts outlast the master's.
    const ExpectRecord e1 = expectOf(m, 6001, ver(0, 20, 1), 5000);
    const ExpectRecord e2 = expectOf(m, 6002, ver(0, 21, 1), 5000);
    const ExpectRecord e3 = expectOf(bystander, 6003, ver(0, 22, 2), 5000);
    for (const auto& e : {e1, e2, e3}) t.apply(e, kT0);
    EXPECT_TRUE(t.getExpect(e1.key)->masterLive);
    t.takeExpectChanges();
    switch (end) {
      case End::kDelete:
        t.apply(FlowDelete{m.key, ver(0, 30, 1)}, kT0);
        break;
      case End::kExpiry:
        t.expire(kT0 + seconds(3001));
        break;
      case End::kSweep:
        t.beginBulk(1, 7, 1000);
        t.apply(e1, kT0);  // even one carried by the bulk: its master was not
        t.apply(e2, kT0);
        ASSERT_EQ(t.endBulk(1, 7), 1u);
        break;
    }
    EXPECT_FALSE(t.get(m.key));
    EXPECT_FALSE(t.getExpect(e1.key));
    EXPECT_FALSE(t.getExpect(e2.key));
    EXPECT_FALSE(t.expectTombstone(e1.key));  // no tombstone needed: the master is gone
    const auto c = t.takeExpectChanges();
    EXPECT_EQ(std::count(c.begin(), c.end(), e1.key), 1);
    EXPECT_EQ(std::count(c.begin(), c.end(), e2.key), 1);
    EXPECT_EQ(t.takeExpectsForgotten().size(), 2u);
    EXPECT_EQ(t.stats().expectsDiedWithMaster, 2u);
    EXPECT_TRUE(t.getExpect(e3.key));  // another master's
    EXPECT_EQ(t.expectCount(), 1u);
  }
}

TEST(ExpectTableTest, OrphanWaitsForItsMasterAndExpiresOtherwise) {
  // The master comes later (a bulk that carries it after, a resend): kept, not committable
  // until then.
  ReplicaTable t(settings());
  const FlowRecord m = master(7, ver(0, 10, 1));
  const ExpectRecord e = expectOf(m, 7001, ver(0, 20, 1), 60);
  EXPECT_EQ(t.apply(e, kT0), ApplyOutcome::kInserted);
  EXPECT_FALSE(t.getExpect(e.key)->masterLive);
  t.takeExpectChanges();
  t.apply(m, kT0 + seconds(1));
  EXPECT_TRUE(t.getExpect(e.key)->masterLive);
  EXPECT_TRUE(changed(t, e.key));  // committable now: reported
  // The master dies: so does the expectation.
  t.apply(FlowDelete{m.key, ver(0, 30, 1)}, kT0 + seconds(2));
  EXPECT_FALSE(t.getExpect(e.key));

  // An expectation whose master never comes lives out its own timeout, never committable.
  ExpectRecord lost = expectOf(master(8, ver(0, 10, 1)), 7002, ver(0, 20, 1), 60);
  t.apply(lost, kT0);
  EXPECT_FALSE(t.getExpect(lost.key)->masterLive);
  t.expire(kT0 + seconds(59));
  EXPECT_TRUE(t.getExpect(lost.key));
  t.expire(kT0 + seconds(60));
  EXPECT_FALSE(t.getExpect(lost.key));
  // Nor does an orphan die with a master that was never live: the master's tombstone is
  // already there, and its expectation arrives after it.
  const FlowRecord gone = master(9, ver(0, 10, 1));
  t.apply(gone, kT0);
  t.apply(FlowDelete{gone.key, ver(0, 11, 1)}, kT0);
  const ExpectRecord late = expectOf(gone, 7003, ver(0, 9, 1), 60);
  t.apply(late, kT0);
  EXPECT_TRUE(t.getExpect(late.key));
  EXPECT_FALSE(t.getExpect(late.key)->masterLive);
}

TEST(ExpectTableTest, MasterInAnotherZoneIsAnotherFlow) {
  ReplicaTable t(settings());
  const FlowRecord m0 = master(10, ver(0, 10, 1), 0);
  const FlowRecord m1 = master(10, ver(0, 10, 1), 1);
  t.apply(m0, kT0);
  t.apply(m1, kT0);
  const ExpectRecord e0 = expectOf(m0, 8000, ver(0, 20, 1));
  const ExpectRecord e1 = expectOf(m1, 8000, ver(0, 20, 1));
  t.apply(e0, kT0);
  t.apply(e1, kT0);
  EXPECT_EQ(t.expectCount(), 2u);
  t.apply(FlowDelete{m1.key, ver(0, 30, 1)}, kT0);
  EXPECT_TRUE(t.getExpect(e0.key));
  EXPECT_FALSE(t.getExpect(e1.key));
}

TEST(ExpectTableTest, BulkSweepsWhatTheOwnerNoLongerHas) {
  ReplicaTable t(settings());
  const FlowRecord m = master(11, ver(0, 10, 1));
  t.apply(m, kT0);
  const ExpectRecord kept = expectOf(m, 9001, ver(0, 20, 1));
  const ExpectRecord stale = expectOf(m, 9002, ver(0, 21, 1));
  const ExpectRecord late = expectOf(m, 9003, ver(0, 2000, 1));  // written after the snapshot
  ExpectRecord foreign = expectOf(m, 9004, ver(0, 22, 2));
  for (const auto& e : {kept, stale, late, foreign}) t.apply(e, kT0);
  t.beginBulk(1, 3, 1000);
  t.apply(m, kT0);
  t.apply(kept, kT0);
  // Relayed by another node: no proof that node 1 still has it.
  t.apply(stale, kT0, /*fromWriter=*/false);
  ASSERT_EQ(t.endBulk(1, 3), 0u);  // no flow swept
  EXPECT_TRUE(t.getExpect(kept.key));
  EXPECT_FALSE(t.getExpect(stale.key));
  EXPECT_TRUE(t.getExpect(late.key));
  EXPECT_TRUE(t.getExpect(foreign.key));  // node 2's
  EXPECT_EQ(t.stats().expectsSwept, 1u);
  const auto f = t.takeExpectsForgotten();
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].key, stale.key);
}

TEST(ExpectTableTest, DigestsCoverExpectationsAndRepairsCarryThem) {
  ReplicaTable a(settings(seconds(60), 4)), b(settings(seconds(60), 4));
  const FlowRecord m = master(12, ver(0, 10, 1));
  a.apply(m, kT0);
  b.apply(m, kT0);
  EXPECT_EQ(a.digests(), b.digests());
  const ExpectRecord e = expectOf(m, 9100, ver(0, 20, 1));
  a.apply(e, kT0);
  const uint32_t range = static_cast<uint32_t>(((expectKeyHash(e.key) >> 32) * 4) >> 32);
  EXPECT_NE(a.digest(range), b.digest(range));
  EXPECT_EQ(a.digest(range).flows, b.digest(range).flows + 1);
  // The range's contents carry it; applied at b, the digests agree.
  const RangeContents c = a.flowsInRange(range);
  ASSERT_EQ(c.expects.size(), 1u);
  EXPECT_EQ(c.expects[0], e);
  for (const ExpectRecord& x : c.expects) b.apply(x, kT0 + seconds(3), false);
  EXPECT_EQ(a.digests(), b.digests());  // arrival time is local: not in the digest
  // Every field counts: another content under the same version differs.
  ReplicaTable d(settings(seconds(60), 4));
  d.apply(m, kT0);
  ExpectRecord other = e;
  other.natTuple = tcp4(0, 0xcb007101, 0, 9100);
  d.apply(other, kT0);
  EXPECT_NE(a.digest(range), d.digest(range));
  // Deletes travel in repairs as tombstones and leave the digest.
  a.apply(ExpectDelete{e.key, ver(0, 30, 1)}, kT0);
  const RangeContents after = a.flowsInRange(range);
  ASSERT_EQ(after.expectTombstones.size(), 1u);
  EXPECT_EQ(after.expectTombstones[0], (ExpectDelete{e.key, ver(0, 30, 1)}));
  b.apply(after.expectTombstones[0], kT0);
  EXPECT_EQ(a.digests(), b.digests());
  ReplicaTable fresh(settings(seconds(60), 4));
  fresh.apply(m, kT0);
  EXPECT_EQ(a.digests(), fresh.digests());
}

TEST(ExpectTableTest, KeyHashIsStable) {
  // Part of the protocol: digests of different builds and hosts must agree.
  const ExpectRecord e = expectOf(master(1, ver(0, 1, 1)), 5000, ver(0, 1, 1));
  ExpectKey z = e.key;
  z.zone = 1;
  EXPECT_NE(expectKeyHash(e.key), expectKeyHash(z));
  EXPECT_NE(expectKeyHash(e.key), flowKeyHash(FlowKey{e.key.expected, e.key.zone}));
  EXPECT_EQ(expectKeyHash(e.key), 0x29231abea55492d2ULL);
}

}  // namespace
}  // namespace ctsync::replication
