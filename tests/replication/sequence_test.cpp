#include "replication/sequence.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

namespace ctsync::replication {
namespace {

using R = InboundSequence::Result;

FlowKey key(uint16_t port) {
  FlowKey k;
  k.orig.src = table::Addr::v4(0x0a000001);
  k.orig.dst = table::Addr::v4(0x0a000002);
  k.orig.sport = port;
  k.orig.dport = 80;
  k.orig.l4 = table::proto::kTcp;
  return k;
}

TEST(InboundSequenceTest, InOrderAdvancesTheCumulativeAck) {
  InboundSequence in;
  EXPECT_EQ(in.receive(7, 1), R::kRestart);  // the first epoch seen counts as a (re)start
  EXPECT_EQ(in.receive(7, 2), R::kNew);
  EXPECT_EQ(in.receive(7, 3), R::kNew);
  EXPECT_EQ(in.cumulative(), 3u);
  EXPECT_TRUE(in.complete());
  EXPECT_TRUE(in.missing(8).empty());
}

TEST(InboundSequenceTest, GapsAreReportedAndFilledOutOfOrder) {
  InboundSequence in;
  in.receive(1, 1);
  in.receive(1, 4);
  in.receive(1, 7);
  EXPECT_EQ(in.cumulative(), 1u);
  EXPECT_EQ(in.missing(8), (std::vector<SeqRange>{{2, 3}, {5, 6}}));
  EXPECT_EQ(in.missing(1), (std::vector<SeqRange>{{2, 3}}));
  EXPECT_EQ(in.receive(1, 3), R::kNew);
  EXPECT_EQ(in.receive(1, 2), R::kNew);
  EXPECT_EQ(in.cumulative(), 4u);
  EXPECT_EQ(in.receive(1, 4), R::kDuplicate);
  EXPECT_EQ(in.receive(1, 2), R::kDuplicate);
  EXPECT_EQ(in.missing(8), (std::vector<SeqRange>{{5, 6}}));
  in.receive(1, 6);
  in.receive(1, 5);
  EXPECT_EQ(in.cumulative(), 7u);
  EXPECT_TRUE(in.complete());
}

TEST(InboundSequenceTest, AliveRevealsTailLoss) {
  InboundSequence in;
  in.receive(1, 1);
  in.receive(1, 2);
  EXPECT_TRUE(in.complete());
  EXPECT_TRUE(in.alive(1, 5));
  EXPECT_FALSE(in.complete());
  EXPECT_EQ(in.missing(8), (std::vector<SeqRange>{{3, 5}}));
  EXPECT_FALSE(in.alive(2, 9));  // another epoch: ignored
}

TEST(InboundSequenceTest, NewEpochResetsOldEpochIsStale) {
  InboundSequence in;
  in.receive(1, 1);
  in.receive(1, 5);
  EXPECT_EQ(in.receive(2, 1), R::kRestart);
  EXPECT_EQ(in.cumulative(), 1u);
  EXPECT_TRUE(in.missing(8).empty());
  EXPECT_EQ(in.receive(1, 2), R::kStale);
  EXPECT_EQ(in.receive(2, 0), R::kDuplicate);  // sequence 0 is never sent
}

TEST(InboundSequenceTest, CoveredRangesCountAsReceived) {
  InboundSequence in;
  in.receive(1, 1);
  in.receive(1, 5);
  in.receive(1, 9);
  EXPECT_EQ(in.missing(8), (std::vector<SeqRange>{{2, 4}, {6, 8}}));
  in.cover({{2, 3}});
  EXPECT_EQ(in.missing(8), (std::vector<SeqRange>{{4, 4}, {6, 8}}));
  EXPECT_EQ(in.cumulative(), 3u);
  in.cover({{4, 7}, {8, 8}});  // overlapping what arrived, adjacent to each other
  EXPECT_EQ(in.cumulative(), 9u);
  EXPECT_TRUE(in.complete());
  in.cover({{1, 100000000}});  // a huge range costs nothing and raises the known highest
  EXPECT_EQ(in.cumulative(), 100000000u);
  EXPECT_EQ(in.receive(1, 50), R::kDuplicate);
  in.cover({{0, 0}, {7, 3}});  // malformed: ignored
  EXPECT_EQ(in.cumulative(), 100000000u);
}

TEST(InboundSequenceTest, CoverMatchesReceivingEverySequence) {
  // Random interleavings of receive() and cover() agree with a plain set of seen numbers.
  for (uint32_t seed = 1; seed <= 200; ++seed) {
    std::mt19937 rng(seed);
    InboundSequence in;
    std::vector<bool> seen(202, false);
    in.receive(1, 1);
    seen[1] = true;
    for (int step = 0; step < 60; ++step) {
      const uint64_t a = 1 + rng() % 200;
      const uint64_t b = rng() % 3 == 0 ? a + rng() % 12 : a;
      if (a == b) {
        EXPECT_EQ(in.receive(1, a) == R::kDuplicate, static_cast<bool>(seen[a])) << seed;
      } else {
        in.cover({{a, std::min<uint64_t>(b, 200)}});
      }
      for (uint64_t s = a; s <= std::min<uint64_t>(b, 200); ++s) seen[s] = true;
      uint64_t cumulative = 0;
      while (seen[cumulative + 1]) ++cumulative;
      ASSERT_EQ(in.cumulative(), cumulative) << "seed " << seed << " step " << step;
      uint64_t missingCount = 0;
      for (const SeqRange& r : in.missing(1000)) missingCount += r.last - r.first + 1;
      uint64_t expectMissing = 0;
      for (uint64_t s = 1; s <= in.highest(); ++s) expectMissing += seen[s] ? 0 : 1;
      ASSERT_EQ(missingCount, expectMissing) << "seed " << seed << " step " << step;
    }
  }
}

TEST(InboundSequenceTest, RandomOrderWithDuplicatesEndsComplete) {
  for (uint32_t seed = 1; seed <= 50; ++seed) {
    std::mt19937 rng(seed);
    std::vector<uint64_t> seqs;
    for (uint64_t s = 1; s <= 300; ++s) {
      seqs.push_back(s);
      if (rng() % 4 == 0) seqs.push_back(s);  // duplicate
    }
    std::shuffle(seqs.begin(), seqs.end(), rng);
    InboundSequence in;
    size_t fresh = 0;
    for (uint64_t s : seqs) {
      const R r = in.receive(9, s);
      fresh += r == R::kNew || r == R::kRestart;
    }
    EXPECT_EQ(fresh, 300u) << "seed " << seed;
    EXPECT_EQ(in.cumulative(), 300u) << "seed " << seed;
    EXPECT_TRUE(in.missing(8).empty()) << "seed " << seed;
  }
}

TEST(OutboundLogTest, LostDatagramsGiveTheirFlowsOnce) {
  OutboundLog log(100);
  log.addPeer(2);
  const uint64_t a = log.next();
  log.sent(a, {key(1), key(2)});
  const uint64_t b = log.next();  // an ack-only datagram: nothing recorded
  const uint64_t c = log.next();
  log.sent(c, {key(2), key(3)});
  const auto lost = log.lost({{a, c}});
  ASSERT_TRUE(lost);
  EXPECT_EQ(*lost, (std::vector<FlowKey>{key(1), key(2), key(3)}));
  const auto none = log.lost({{b, b}});
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
  EXPECT_FALSE(log.lost({{c, c + 5}}));  // never sent
}

TEST(OutboundLogTest, AcknowledgedByEveryPeerIsForgotten) {
  OutboundLog log(100);
  log.addPeer(2);
  log.addPeer(3);
  for (uint16_t i = 1; i <= 5; ++i) log.sent(log.next(), {key(i)});
  log.acked(2, 4);
  EXPECT_EQ(log.datagrams(), 5u);  // peer 3 has acknowledged nothing yet
  log.acked(3, 2);
  EXPECT_EQ(log.datagrams(), 3u);
  EXPECT_EQ(log.oldest(), 3u);
  EXPECT_FALSE(log.lost({{1, 2}}));  // only a new peer asks for these: it needs a bulk
  log.removePeer(3);
  EXPECT_EQ(log.datagrams(), 1u);
  EXPECT_EQ(log.flows(), 1u);
}

TEST(OutboundLogTest, BoundedLogAsksForABulkWhenAGapFellOut) {
  OutboundLog log(4);
  log.addPeer(2);
  for (uint16_t i = 1; i <= 6; ++i) log.sent(log.next(), {key(i)});
  EXPECT_LE(log.flows(), 4u);
  EXPECT_FALSE(log.lost({{1, 1}}));  // dropped to keep the bound: bulk resync
  const auto recent = log.lost({{6, 6}});
  ASSERT_TRUE(recent);
  EXPECT_EQ(*recent, (std::vector<FlowKey>{key(6)}));
}

TEST(OutboundLogTest, BulkDatagramsResendFromTheSnapshotAndDoNotFillTheLog) {
  OutboundLog log(2);
  auto snapshot = std::make_shared<std::vector<FlowKey>>();
  for (uint16_t p = 1; p <= 10; ++p) snapshot->push_back(key(p));
  log.addPeer(9);
  const uint64_t a = log.next();
  log.sentBulk(a, snapshot, 0, 5);
  const uint64_t b = log.next();
  log.sentBulk(b, snapshot, 5, 10);
  const uint64_t c = log.next();
  log.sent(c, {key(1), key(100)});
  EXPECT_EQ(log.flows(), 2u);  // bulk keys are not counted
  const auto lost = log.lost({{b, c}});
  ASSERT_TRUE(lost.has_value());
  std::vector<FlowKey> expect;
  for (uint16_t p = 6; p <= 10; ++p) expect.push_back(key(p));
  expect.push_back(key(1));
  expect.push_back(key(100));
  EXPECT_EQ(*lost, expect);
  log.acked(9, b);
  snapshot.reset();  // the log keeps what it still needs
  EXPECT_EQ(log.lost({{c, c}})->size(), 2u);
  EXPECT_FALSE(log.lost({{a, b}}));  // acknowledged by every peer: a peer asking is new
}

}  // namespace
}  // namespace ctsync::replication
