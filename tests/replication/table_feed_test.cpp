// The tracker as the engine's source: its events reach a peer's replica, and REFRESH keeps a
// long-lived flow's timeout there accurate (so it does not come back from a failover about to
// expire).
#include "replication/table_feed.hpp"

#include <gtest/gtest.h>

#include "sim.hpp"
#include "table/tracker.hpp"
#include "tests/support/packet_builder.hpp"

namespace ctsync::replication {
namespace {

using sim::Cluster;
using table::kSecond;
using testing::ipv4Udp;
using testing::v4;

const uint32_t kClient = v4(10, 1, 1, 5);
const uint32_t kServer = v4(192, 0, 2, 53);

struct Outcome {
  std::optional<ReplicaFlow> replica;  // on the peer, at the end
  Nanos replicaLeft = 0;               // its remaining timeout then
};

// A UDP stream through node 1's tracker for ten minutes: a request and its answer every 10 s.
Outcome tenMinutesOfUdp(uint8_t refreshPercent, bool digests = true) {
  EngineSettings es = Cluster::defaults();
  if (!digests) es.digestInterval = 0;
  Cluster c(2, 21, es);
  table::TrackerSettings ts;
  ts.table.refreshPercent = refreshPercent;
  table::Tracker tracker(ts, 7);
  TableFeed feed(c.node(0));
  tracker.setEventSink(&feed);
  const auto request = ipv4Udp(kClient, kServer, 40000, 53);
  const auto answer = ipv4Udp(kServer, kClient, 53, 40000);
  for (int i = 0; i < 60; ++i) {
    tracker.process(request.data(), request.size(), c.now());
    c.runFor(kSecond / 100);
    tracker.process(answer.data(), answer.size(), c.now());
    c.runFor(10 * kSecond - kSecond / 100);
    tracker.advance(c.now());
  }
  EXPECT_TRUE(c.settle(kSecond));
  FlowKey key;
  key.orig.l3 = table::L3::kIpv4;
  key.orig.l4 = table::proto::kUdp;
  key.orig.src = table::Addr::v4(kClient);
  key.orig.dst = table::Addr::v4(kServer);
  key.orig.sport = 40000;
  key.orig.dport = 53;
  Outcome run;
  run.replica = c.node(1).replica().get(key);
  const auto local = c.node(0).local(key);
  EXPECT_TRUE(local.has_value()) << "the tracker's flow is gone from the engine";
  if (run.replica && local) {
    // The peer holds exactly what the tracker last reported (version and all).
    EXPECT_EQ(run.replica->record, *local);
    EXPECT_TRUE(run.replica->record.status & table::status::kAssured);
    run.replicaLeft = run.replica->remaining(c.now());
  }
  return run;
}

TEST(TableFeedTest, RefreshKeepsALongLivedUdpFlowAliveOnThePeer) {
  const Outcome run = tenMinutesOfUdp(50);
  ASSERT_TRUE(run.replica) << "the peer lost the flow";
  // The stream timeout is 120 s and REFRESH announces every move of more than half of it, so
  // the peer's copy never has less than about 60 s left (right after an exchange, ~110 s).
  EXPECT_GT(run.replicaLeft, 60 * kSecond);
}

TEST(TableFeedTest, WithoutRefreshThePeerLetsTheFlowExpire) {
  // The control: the kernel sends no event when only a timeout moves, and neither does the
  // tracker with refresh_percent = 0. The peer's copy runs out although the flow is alive.
  // (Anti-entropy off: a digest round would notice the owner still has the flow and resend it,
  // a slow stand-in for REFRESH.)
  const Outcome run = tenMinutesOfUdp(0, false);
  EXPECT_FALSE(run.replica.has_value());
}

TEST(TableFeedTest, DestroyReachesThePeer) {
  Cluster c(2, 22);
  table::Tracker tracker(table::TrackerSettings{}, 7);
  TableFeed feed(c.node(0));
  tracker.setEventSink(&feed);
  const auto request = ipv4Udp(kClient, kServer, 40001, 53);
  tracker.process(request.data(), request.size(), c.now());
  ASSERT_TRUE(c.settle(kSecond));
  ASSERT_EQ(c.node(1).replica().size(), 1u);
  c.runFor(31 * kSecond);  // unreplied UDP: 30 s
  tracker.advance(c.now());
  ASSERT_TRUE(c.settle(kSecond));
  EXPECT_EQ(c.node(1).replica().size(), 0u);
  EXPECT_EQ(c.node(1).counters().deletesReceived, 1u);
}

}  // namespace
}  // namespace ctsync::replication
