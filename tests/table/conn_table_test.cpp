#include "table/conn_table.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <vector>

namespace ctsync::table {
namespace {

constexpr Nanos kT0 = seconds(1'700'000'000);

Tuple tcpTuple(uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport) {
  Tuple t;
  t.src = Addr::v4(src);
  t.dst = Addr::v4(dst);
  t.sport = sport;
  t.dport = dport;
  t.l4 = proto::kTcp;
  return t;
}

struct Recorded {
  EventType type;
  uint32_t mask;
  uint32_t index;
  Nanos time;
  Tuple orig;
};

class Recorder : public EventSink {
 public:
  void onEvent(EventType type, uint32_t mask, const ConnTable& t, uint32_t index,
               Nanos now) override {
    events.push_back({type, mask, index, now, t.tuple(t.entry(index), Dir::kOriginal)});
  }
  size_t count(EventType type) const {
    return static_cast<size_t>(std::count_if(events.begin(), events.end(),
                                             [type](const Recorded& r) { return r.type == type; }));
  }
  std::vector<Recorded> events;
};

class ConnTableTest : public ::testing::Test {
 protected:
  void make(TableSettings s) {
    table_ = std::make_unique<ConnTable>(s, 42);
    table_->setEventSink(&rec_);
  }
  // Inserts a confirmed flow; returns its index.
  uint32_t add(uint16_t sport, Nanos timeout, Nanos now = kT0, uint32_t statusBits = 0) {
    const Tuple o = tcpTuple(0x0a000001, 0x0a000002, sport, 80);
    const Tuple r = *invertTuple(o);
    auto idx = table_->allocate(o, r, 0, table_->hash(o, 0), now);
    EXPECT_TRUE(idx.has_value());
    table_->entry(*idx).status |= statusBits;
    table_->confirm(*idx, timeout, now);
    return *idx;
  }
  bool present(uint16_t sport) const {
    const Tuple o = tcpTuple(0x0a000001, 0x0a000002, sport, 80);
    return table_->find(o, 0, table_->hash(o, 0)).has_value();
  }

  std::unique_ptr<ConnTable> table_;
  Recorder rec_;
};

TEST_F(ConnTableTest, FindsBothDirectionsAndNothingElse) {
  make({});
  const uint32_t idx = add(1000, seconds(30));
  const Tuple o = tcpTuple(0x0a000001, 0x0a000002, 1000, 80);
  const auto byOrig = table_->find(o, 0, table_->hash(o, 0));
  ASSERT_TRUE(byOrig);
  EXPECT_EQ(byOrig->index, idx);
  EXPECT_EQ(byOrig->dir, Dir::kOriginal);
  const Tuple r = *invertTuple(o);
  const auto byReply = table_->find(r, 0, table_->hash(r, 0));
  ASSERT_TRUE(byReply);
  EXPECT_EQ(byReply->dir, Dir::kReply);
  EXPECT_FALSE(table_->find(o, 7, table_->hash(o, 7)));  // other zone
  EXPECT_FALSE(present(1001));
  EXPECT_EQ(table_->size(), 1u);
  ASSERT_EQ(rec_.events.size(), 1u);
  EXPECT_EQ(rec_.events[0].type, EventType::kNew);
  EXPECT_TRUE(table_->entry(idx).status & status::kConfirmed);
}

TEST_F(ConnTableTest, HashIndexStaysConsistentUnderChurnAtFullLoad) {
  // A full table puts 80 % of the index slots to use, so lines overflow into their neighbours;
  // random inserts and deletes must keep every live flow findable in both directions and no
  // dead one.
  TableSettings s;
  s.maxEntries = 2000;
  s.buckets = 1;
  make(s);
  std::mt19937 rng(11);
  std::map<uint16_t, uint32_t> live;  // sport -> entry index
  for (int step = 0; step < 20000; ++step) {
    const auto port = static_cast<uint16_t>(1 + rng() % 3000);
    auto it = live.find(port);
    if (it != live.end()) {
      table_->destroy(it->second, kT0);
      live.erase(it);
    } else if (live.size() < s.maxEntries) {
      live[port] = add(port, seconds(100));
    }
    if (step % 500 != 0) continue;
    for (uint16_t p = 1; p <= 3000; ++p) {
      const Tuple o = tcpTuple(0x0a000001, 0x0a000002, p, 80);
      const Tuple r = *invertTuple(o);
      const auto byOrig = table_->find(o, 0, table_->hash(o, 0));
      const auto byReply = table_->find(r, 0, table_->hash(r, 0));
      const auto want = live.find(p);
      if (want == live.end()) {
        ASSERT_FALSE(byOrig) << "dead flow " << p << " found at step " << step;
        ASSERT_FALSE(byReply);
      } else {
        ASSERT_TRUE(byOrig && byReply) << "live flow " << p << " lost at step " << step;
        EXPECT_EQ(byOrig->index, want->second);
        EXPECT_EQ(byReply->index, want->second);
        EXPECT_EQ(byReply->dir, Dir::kReply);
      }
    }
  }
  size_t visited = 0;
  table_->forEach([&visited](uint32_t) { ++visited; });
  EXPECT_EQ(visited, live.size());
  EXPECT_EQ(table_->size(), live.size());
}

TEST_F(ConnTableTest, ExpiresExactlyAtItsTimeWithDestroyEvent) {
  make({});
  add(1000, seconds(30));
  table_->expire(kT0 + seconds(30) - 1);
  EXPECT_TRUE(present(1000));
  table_->expire(kT0 + seconds(30));
  EXPECT_FALSE(present(1000));
  ASSERT_EQ(rec_.count(EventType::kDestroy), 1u);
  EXPECT_EQ(rec_.events.back().time, kT0 + seconds(30));
  EXPECT_EQ(table_->size(), 0u);
  EXPECT_EQ(table_->counters().expired, 1u);
}

TEST_F(ConnTableTest, RefreshBeyondTheWheelHorizonStillExpiresOnTime) {
  make({});
  const uint32_t idx = add(1000, seconds(432000));
  for (int i = 1; i <= 20; ++i) table_->expire(kT0 + seconds(i * 1000));
  EXPECT_TRUE(present(1000));
  table_->setTimeout(idx, seconds(432000), kT0 + seconds(20000));
  table_->expire(kT0 + seconds(432000 + 19999));
  EXPECT_TRUE(present(1000));
  table_->expire(kT0 + seconds(452000));
  EXPECT_FALSE(present(1000));
}

TEST_F(ConnTableTest, ShrinkingATimeoutMovesTheEntryEarlier) {
  make({});
  const uint32_t idx = add(1000, seconds(432000));
  table_->expire(kT0 + seconds(5));
  table_->setTimeout(idx, seconds(10), kT0 + seconds(5));
  table_->expire(kT0 + seconds(14));
  EXPECT_TRUE(present(1000));
  table_->expire(kT0 + seconds(15));
  EXPECT_FALSE(present(1000));
}

TEST_F(ConnTableTest, ManyEntriesExpireInOrderWhateverTheSteps) {
  TableSettings s;
  s.maxEntries = 5000;
  s.buckets = 1024;
  make(s);
  std::mt19937 rng(7);
  std::vector<Nanos> expiries;
  for (uint16_t i = 0; i < 3000; ++i) {
    const Nanos timeout = static_cast<Nanos>(rng() % 900'000) * 1'000'000;  // up to 900 s
    add(static_cast<uint16_t>(1000 + i), timeout);
    expiries.push_back(kT0 + timeout);
  }
  Nanos now = kT0;
  while (table_->size() > 0 && now < kT0 + seconds(1000)) {
    now += static_cast<Nanos>(rng() % 3000) * 1'000'000;  // irregular steps up to 3 s
    table_->expire(now);
    // Nothing that should be dead survives, nothing alive is gone.
    const auto alive = static_cast<size_t>(
        std::count_if(expiries.begin(), expiries.end(), [now](Nanos e) { return e > now; }));
    ASSERT_EQ(table_->size(), alive) << "at +" << (now - kT0) / 1'000'000 << " ms";
  }
  EXPECT_EQ(table_->size(), 0u);
  // DESTROY events come in expiry order.
  Nanos last = 0;
  for (const auto& e : rec_.events) {
    if (e.type != EventType::kDestroy) continue;
    EXPECT_GE(e.time, last);
    last = e.time;
  }
}

TEST_F(ConnTableTest, AJumpFarAheadExpiresEverythingDue) {
  make({});
  add(1, seconds(10));
  add(2, seconds(432000));
  add(3, seconds(3600));
  table_->expire(kT0 + seconds(4000));
  EXPECT_FALSE(present(1));
  EXPECT_TRUE(present(2));
  EXPECT_FALSE(present(3));
  ASSERT_EQ(rec_.count(EventType::kDestroy), 2u);
}

TEST_F(ConnTableTest, KernelEarlyDropEvictsUnassuredOfOneBucket) {
  TableSettings s;
  s.maxEntries = 4;
  s.buckets = 1;  // every entry in one bucket, so the 8-bucket scan sees them all
  make(s);
  add(1, seconds(100));
  add(2, seconds(100), kT0, status::kAssured);
  add(3, seconds(100));
  add(4, seconds(100));
  add(5, seconds(100));  // full: the kernel drops every non-assured entry of the bucket
  EXPECT_FALSE(present(1));
  EXPECT_TRUE(present(2));
  EXPECT_FALSE(present(3));
  EXPECT_FALSE(present(4));
  EXPECT_TRUE(present(5));
  EXPECT_EQ(table_->counters().earlyDropped, 3u);
}

TEST_F(ConnTableTest, AssuredFlowsAreNeverEvictedForANewcomer) {
  TableSettings s;
  s.maxEntries = 2;
  s.buckets = 1;
  make(s);
  add(1, seconds(100), kT0, status::kAssured);
  add(2, seconds(100), kT0, status::kAssured);
  const Tuple o = tcpTuple(0x0a000001, 0x0a000002, 3, 80);
  EXPECT_FALSE(table_->allocate(o, *invertTuple(o), 0, table_->hash(o, 0), kT0));
  EXPECT_EQ(table_->counters().insertFailed, 1u);
  EXPECT_TRUE(present(1));
  EXPECT_TRUE(present(2));
}

TEST_F(ConnTableTest, ClosingFirstPolicyPrefersClosingTcpThenOldUnassured) {
  TableSettings s;
  s.maxEntries = 4;
  s.buckets = 1;
  s.eviction = EvictionPolicy::kClosingFirst;
  s.minLifetime = seconds(5);
  make(s);
  add(1, seconds(100), kT0, status::kAssured);  // established, assured: protected
  const uint32_t closing = add(2, seconds(100), kT0, status::kAssured);
  table_->entry(closing).tcp.state = TcpState::kTimeWait;
  add(3, seconds(100), kT0);               // old, not assured
  add(4, seconds(100), kT0 + seconds(9));  // young, not assured
  const Nanos now = kT0 + seconds(10);
  add(5, seconds(100), now);
  EXPECT_FALSE(present(2)) << "closing TCP goes first";
  EXPECT_TRUE(present(3));
  add(6, seconds(100), now);
  EXPECT_FALSE(present(3)) << "then the oldest non-assured past its minimum lifetime";
  EXPECT_TRUE(present(4));
  // Left: 1 (assured), 4 (too young), 5 and 6 (too young): nothing may go.
  const Tuple o = tcpTuple(0x0a000001, 0x0a000002, 7, 80);
  EXPECT_FALSE(table_->allocate(o, *invertTuple(o), 0, table_->hash(o, 0), now));
  EXPECT_TRUE(present(1));
}

TEST_F(ConnTableTest, GarbageCollectorAt95PercentRespectsThePolicy) {
  TableSettings s;
  s.maxEntries = 20;
  s.buckets = 1;  // the smallest index: 8 lines, which one GC step covers
  make(s);        // kernel policy: non-assured entries go once the table is 95 % full
  for (uint16_t i = 0; i < 20; ++i) add(static_cast<uint16_t>(i + 1), seconds(100));
  table_->expire(kT0 + seconds(1));
  EXPECT_EQ(table_->size(), 0u);
  EXPECT_EQ(table_->counters().gcDropped, 20u);

  s.eviction = EvictionPolicy::kClosingFirst;
  s.minLifetime = seconds(60);
  make(s);
  for (uint16_t i = 0; i < 20; ++i) add(static_cast<uint16_t>(i + 1), seconds(100));
  table_->expire(kT0 + seconds(1));
  EXPECT_EQ(table_->size(), 20u) << "younger than min_lifetime: kept";
  table_->expire(kT0 + seconds(61));
  EXPECT_EQ(table_->size(), 0u);
}

TEST_F(ConnTableTest, AdaptiveTimeoutsShrinkAsTheTableFills) {
  TableSettings s;
  s.maxEntries = 10;
  s.adaptiveStart = 50;
  s.adaptiveEnd = 100;
  make(s);
  for (uint16_t i = 0; i < 8; ++i) add(static_cast<uint16_t>(i + 1), seconds(100));
  // 8 of 10 = 80 % full: factor (100 - 80) / (100 - 50) = 0.4.
  const uint32_t idx = add(100, seconds(100));
  EXPECT_EQ(table_->entry(idx).expiry - kT0, seconds(40));
}

TEST_F(ConnTableTest, RefreshEventOnlyWhenExpiryMovedEnough) {
  TableSettings s;
  s.refreshPercent = 50;
  make(s);
  const uint32_t idx = add(1000, seconds(120));
  table_->setTimeout(idx, seconds(120), kT0 + seconds(10));
  EXPECT_EQ(rec_.count(EventType::kRefresh), 0u);
  // Due 60 s (50 % of 120 s) past the announced expiry; the check counts in ~1.07 s units.
  table_->setTimeout(idx, seconds(120), kT0 + seconds(59));
  EXPECT_EQ(rec_.count(EventType::kRefresh), 0u);
  table_->setTimeout(idx, seconds(120), kT0 + seconds(63));
  EXPECT_EQ(rec_.count(EventType::kRefresh), 1u);
  table_->setTimeout(idx, seconds(120), kT0 + seconds(70));
  EXPECT_EQ(rec_.count(EventType::kRefresh), 1u);
  s.refreshPercent = 0;
  make(s);
  const uint32_t idx2 = add(1000, seconds(120));
  table_->setTimeout(idx2, seconds(120), kT0 + seconds(100));
  EXPECT_EQ(rec_.count(EventType::kRefresh), 1u);
}

TEST_F(ConnTableTest, Ipv6EntriesRoundTripAndReusePoolSlots) {
  make({});
  Tuple o;
  o.l3 = L3::kIpv6;
  o.l4 = proto::kUdp;
  o.src.bytes = {0xfd, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2};
  o.dst.bytes = {0xfd, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2};
  o.sport = 5353;
  o.dport = 53;
  const Tuple r = *invertTuple(o);
  auto idx = table_->allocate(o, r, 0, table_->hash(o, 0), kT0);
  ASSERT_TRUE(idx);
  table_->confirm(*idx, seconds(30), kT0);
  EXPECT_EQ(table_->tuple(table_->entry(*idx), Dir::kOriginal), o);
  EXPECT_EQ(table_->tuple(table_->entry(*idx), Dir::kReply), r);
  const auto hit = table_->find(r, 0, table_->hash(r, 0));
  ASSERT_TRUE(hit);
  EXPECT_EQ(hit->dir, Dir::kReply);
  const size_t mem = table_->memoryBytes();
  table_->destroy(*idx, kT0);
  o.sport = 5354;
  auto idx2 = table_->allocate(o, *invertTuple(o), 0, table_->hash(o, 0), kT0);
  ASSERT_TRUE(idx2);
  EXPECT_EQ(table_->memoryBytes(), mem);  // the freed IPv6 slot was reused
}

TEST_F(ConnTableTest, LabelsLiveBesideTheEntryAndGoWithIt) {
  make({});
  const uint32_t idx = add(1000, seconds(30));
  std::array<uint8_t, 16> l{};
  l[15] = 0x81;
  table_->setLabels(idx, l);
  EXPECT_EQ(table_->labels(idx), l);
  table_->destroy(idx, kT0);
  const uint32_t again = add(1001, seconds(30));
  EXPECT_EQ(again, idx);  // slot reused
  EXPECT_EQ(table_->labels(again), (std::array<uint8_t, 16>{}));
}

TEST_F(ConnTableTest, EntryStaysWithinTheMemoryBudget) {
  TableSettings s;
  s.maxEntries = 1u << 20;
  s.buckets = 1u << 20;
  make(s);
  // Entries, bucket heads and the wheel, divided by a full table of IPv4 flows.
  EXPECT_LE(table_->memoryBytes() / s.maxEntries, 192u);
}

}  // namespace
}  // namespace ctsync::table
