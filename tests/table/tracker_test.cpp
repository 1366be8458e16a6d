#include "table/tracker.hpp"

#include <gtest/gtest.h>

#include <vector>

#include "table/format.hpp"
#include "tests/support/packet_builder.hpp"

namespace ctsync::table {
namespace {

using namespace ctsync::testing;

constexpr Nanos kT0 = seconds(1'700'000'000);
const uint32_t kClient = v4(10, 231, 1, 2);
const uint32_t kServer = v4(10, 231, 2, 2);
const uint32_t kRouter = v4(10, 231, 2, 254);

struct Ev {
  EventType type;
  uint32_t mask;
  std::string line;
};

class Log : public EventSink {
 public:
  void onEvent(EventType type, uint32_t mask, const ConnTable& t, uint32_t index,
               Nanos now) override {
    if (type == EventType::kRefresh) return;
    events.push_back({type, mask, formatEvent(type, mask, t, index, now)});
  }
  std::vector<Ev> events;
};

class TrackerTest : public ::testing::Test {
 protected:
  TrackerTest() { tracker_.setEventSink(&log_); }
  Verdict feed(const std::vector<uint8_t>& p, Nanos at) {
    return tracker_.process(p.data(), p.size(), at);
  }
  const Entry* only() {
    if (tracker_.table().size() != 1) return nullptr;
    const Entry* e = nullptr;
    tracker_.table().forEach([&](uint32_t i) { e = &tracker_.table().entry(i); });
    return e;
  }
  Nanos left(const Entry& e, Nanos now) { return e.expiry - now; }

  Tracker tracker_{TrackerSettings{}, 1};
  Log log_;
};

TEST_F(TrackerTest, UdpUnrepliedThenRepliedThenStreamAfterTwoSeconds) {
  auto v = feed(ipv4Udp(kClient, kServer, 5000, 53), kT0);
  EXPECT_EQ(v.state, CtState::kNew);
  const Entry* e = only();
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(left(*e, kT0), seconds(30));
  EXPECT_FALSE(e->status & status::kSeenReply);

  v = feed(ipv4Udp(kServer, kClient, 53, 5000), kT0 + seconds(1));
  EXPECT_EQ(v.state, CtState::kEstablished);
  EXPECT_EQ(v.dir, Dir::kReply);
  EXPECT_TRUE(e->status & status::kSeenReply);
  EXPECT_FALSE(e->status & status::kAssured);
  EXPECT_EQ(left(*e, kT0 + seconds(1)), seconds(30));

  // Still within two seconds of creation: replied, but not a stream yet.
  feed(ipv4Udp(kClient, kServer, 5000, 53), kT0 + seconds(2));
  EXPECT_FALSE(e->status & status::kAssured);
  feed(ipv4Udp(kClient, kServer, 5000, 53), kT0 + seconds(2) + 1'000'000);
  EXPECT_TRUE(e->status & status::kAssured);
  EXPECT_EQ(left(*e, kT0 + seconds(2) + 1'000'000), seconds(120));

  ASSERT_EQ(log_.events.size(), 3u);
  EXPECT_EQ(log_.events[0].type, EventType::kNew);
  EXPECT_EQ(log_.events[1].mask, ev::kReply);
  EXPECT_EQ(log_.events[2].mask, ev::kAssured);
  EXPECT_EQ(e->packets[0], 3u);
  EXPECT_EQ(e->packets[1], 1u);
}

TEST_F(TrackerTest, TcpHandshakeEventsAsTheKernelSendsThem) {
  feed(ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0}), kT0);
  feed(ipv4Tcp(kServer, kClient, 80, 40000, {tcpf::kSyn | tcpf::kAck, 5000, 1001}), kT0 + 1000);
  feed(ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kAck, 1001, 5001}), kT0 + 2000);
  ASSERT_EQ(log_.events.size(), 3u);
  EXPECT_EQ(log_.events[0].line,
            "    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=10.231.1.2 dst=10.231.2.2 "
            "sport=40000 dport=80 [UNREPLIED] src=10.231.2.2 dst=10.231.1.2 sport=80 dport=40000");
  EXPECT_EQ(log_.events[1].mask, ev::kProtoinfo | ev::kReply);
  EXPECT_EQ(log_.events[1].line,
            " [UPDATE] ipv4     2 tcp      6 60 SYN_RECV src=10.231.1.2 dst=10.231.2.2 "
            "sport=40000 dport=80 src=10.231.2.2 dst=10.231.1.2 sport=80 dport=40000");
  EXPECT_EQ(log_.events[2].mask, ev::kProtoinfo | ev::kAssured);
  EXPECT_EQ(log_.events[2].line,
            " [UPDATE] ipv4     2 tcp      6 432000 ESTABLISHED src=10.231.1.2 dst=10.231.2.2 "
            "sport=40000 dport=80 src=10.231.2.2 dst=10.231.1.2 sport=80 dport=40000 "
            "[ASSURED]");
}

TEST_F(TrackerTest, TimeWaitReopenedBySynIsDestroyedAndCreatedAgain) {
  const Nanos t = kT0;
  feed(ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0}), t);
  feed(ipv4Tcp(kServer, kClient, 80, 40000, {tcpf::kSyn | tcpf::kAck, 5000, 1001}), t + 1);
  feed(ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kAck, 1001, 5001}), t + 2);
  feed(ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kFin | tcpf::kAck, 1001, 5001}), t + 3);
  feed(ipv4Tcp(kServer, kClient, 80, 40000, {tcpf::kFin | tcpf::kAck, 5001, 1002}), t + 4);
  feed(ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kAck, 1002, 5002}), t + 5);
  ASSERT_NE(only(), nullptr);
  EXPECT_EQ(only()->tcp.state, TcpState::kTimeWait);
  log_.events.clear();
  const auto v =
      feed(ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 900000, 0}), t + seconds(1));
  EXPECT_EQ(v.state, CtState::kNew);
  ASSERT_EQ(log_.events.size(), 2u);
  EXPECT_EQ(log_.events[0].type, EventType::kDestroy);
  EXPECT_EQ(log_.events[1].type, EventType::kNew);
  ASSERT_NE(only(), nullptr);
  EXPECT_EQ(only()->tcp.state, TcpState::kSynSent);
}

TEST_F(TrackerTest, OutOfWindowCloseOfAnAssuredFlowShortensItsTimeout) {
  feed(ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0}), kT0);
  feed(ipv4Tcp(kServer, kClient, 80, 40000, {tcpf::kSyn | tcpf::kAck, 5000, 1001}), kT0 + 1);
  feed(ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kAck, 1001, 5001}), kT0 + 2);
  const Entry* e = only();
  ASSERT_NE(e, nullptr);
  ASSERT_EQ(left(*e, kT0 + 2), seconds(432000));
  auto v = feed(ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kFin | tcpf::kAck, 900000000, 5001}),
                kT0 + 3);
  EXPECT_EQ(v.reason, InvalidReason::kTcpWindow);
  EXPECT_EQ(left(*e, kT0 + 3), seconds(432000) - 1);  // first one only noted
  v = feed(ipv4Tcp(kServer, kClient, 80, 40000, {tcpf::kRst, 900000000, 0}), kT0 + 4);
  EXPECT_EQ(v.state, CtState::kInvalid);
  EXPECT_EQ(left(*e, kT0 + 4), seconds(300));
  EXPECT_EQ(e->tcp.state, TcpState::kEstablished);
}

TEST_F(TrackerTest, IcmpEchoCreatesAndReplyMatchesButAReplyAloneIsInvalid) {
  auto v = feed(ipv4Icmp(kClient, kServer, 8, 0, 77), kT0);
  EXPECT_EQ(v.state, CtState::kNew);
  v = feed(ipv4Icmp(kServer, kClient, 0, 0, 77), kT0 + 1000);
  EXPECT_EQ(v.state, CtState::kEstablished);
  const Entry* e = only();
  ASSERT_NE(e, nullptr);
  EXPECT_FALSE(e->status & status::kAssured);
  EXPECT_EQ(left(*e, kT0 + 1000), seconds(30));
  v = feed(ipv4Icmp(kServer, kClient, 0, 0, 78), kT0 + 2000);
  EXPECT_EQ(v.state, CtState::kInvalid);
  EXPECT_EQ(v.reason, InvalidReason::kIcmpNoNew);
}

TEST_F(TrackerTest, IcmpErrorIsRelatedToItsFlowAndChangesNothing) {
  const auto out = ipv4Udp(kClient, kServer, 5000, 53);
  feed(out, kT0);
  const Entry* e = only();
  ASSERT_NE(e, nullptr);
  const Nanos expiry = e->expiry;
  // Port unreachable from the server about the client's datagram: reply direction.
  std::vector<uint8_t> inner(out.begin(), out.begin() + 28);
  auto v = feed(ipv4Icmp(kServer, kClient, 3, 3, 0, 0, inner), kT0 + seconds(1));
  EXPECT_EQ(v.state, CtState::kRelated);
  EXPECT_EQ(v.dir, Dir::kReply);
  EXPECT_EQ(e->expiry, expiry);
  EXPECT_FALSE(e->status & status::kSeenReply);
  // From a router on the way, also fine.
  v = feed(ipv4Icmp(kRouter, kClient, 11, 0, 0, 0, inner), kT0 + seconds(1));
  EXPECT_EQ(v.state, CtState::kRelated);
  // Sent towards someone else than the flow's endpoint: invalid.
  v = feed(ipv4Icmp(kServer, kRouter, 3, 3, 0, 0, inner), kT0 + seconds(1));
  EXPECT_EQ(v.state, CtState::kInvalid);
  // About a flow we do not know: invalid, nothing created.
  const auto other = ipv4Udp(kClient, kServer, 5001, 53);
  v = feed(ipv4Icmp(kServer, kClient, 3, 3, 0, 0,
                    std::vector<uint8_t>(other.begin(), other.begin() + 28)),
           kT0 + seconds(1));
  EXPECT_EQ(v.reason, InvalidReason::kIcmpErrorNoMatch);
  EXPECT_EQ(tracker_.table().size(), 1u);
  EXPECT_EQ(log_.events.size(), 1u);
}

TEST_F(TrackerTest, UnknownProtocolsUseTheGenericTimeout) {
  feed(ipv4Proto(kClient, kServer, 253), kT0);
  const Entry* e = only();
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(left(*e, kT0), seconds(600));
  feed(ipv4Proto(kServer, kClient, 253), kT0 + seconds(1));
  EXPECT_TRUE(e->status & status::kSeenReply);
}

TEST_F(TrackerTest, Ipv6UdpIsTrackedLikeIpv4) {
  feed(ipv6Udp(v6(2, 1), v6(2, 2), 5000, 53), kT0);
  const auto v = feed(ipv6Udp(v6(2, 2), v6(2, 1), 53, 5000), kT0 + 1000);
  EXPECT_EQ(v.state, CtState::kEstablished);
  EXPECT_EQ(v.dir, Dir::kReply);
  ASSERT_NE(only(), nullptr);
  EXPECT_EQ(only()->l3, L3::kIpv6);
}

TEST_F(TrackerTest, EntriesExpireWhenTimeAdvancesWithoutPackets) {
  feed(ipv4Udp(kClient, kServer, 5000, 53), kT0);
  tracker_.advance(kT0 + seconds(29));
  EXPECT_EQ(tracker_.table().size(), 1u);
  tracker_.advance(kT0 + seconds(30));
  EXPECT_EQ(tracker_.table().size(), 0u);
  EXPECT_EQ(log_.events.back().type, EventType::kDestroy);
  EXPECT_EQ(log_.events.back().line,
            "[DESTROY] ipv4     2 udp      17 src=10.231.1.2 dst=10.231.2.2 sport=5000 dport=53 "
            "[UNREPLIED] src=10.231.2.2 dst=10.231.1.2 sport=53 dport=5000");
}

TEST_F(TrackerTest, InvalidPacketsAreCountedByReasonAndCreateNothing) {
  auto bad = ipv4Udp(kClient, kServer, 5000, 53);
  bad[27] ^= 0xff;  // break the UDP checksum
  auto v = feed(bad, kT0);
  EXPECT_EQ(v.reason, InvalidReason::kBadL4Checksum);
  const std::vector<uint8_t> runt(10, 0x45);
  v = feed(runt, kT0);
  EXPECT_EQ(v.state, CtState::kInvalid);
  v = feed(ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn | tcpf::kAck, 1, 1}), kT0);
  EXPECT_EQ(v.reason, InvalidReason::kTcpNoNew);
  EXPECT_EQ(tracker_.table().size(), 0u);
  EXPECT_EQ(tracker_.counters().invalidTotal, 3u);
  EXPECT_EQ(tracker_.counters().invalid[static_cast<size_t>(InvalidReason::kBadL4Checksum)], 1u);
  EXPECT_TRUE(log_.events.empty());
}

TEST_F(TrackerTest, TableFullRefusesNewFlowsButKeepsTracking) {
  TrackerSettings s;
  s.table.maxEntries = 2;
  s.table.buckets = 1;
  Tracker t(s, 1);
  // Assured TCP flows cannot be evicted (handshakes within one wheel tick, so the 95 % garbage
  // collector, which would drop a half-open flow, does not run in between).
  for (uint16_t port : {5000, 5001}) {
    auto syn = ipv4Tcp(kClient, kServer, port, 80, {tcpf::kSyn, 1000, 0});
    auto synack = ipv4Tcp(kServer, kClient, 80, port, {tcpf::kSyn | tcpf::kAck, 5000, 1001});
    auto ack = ipv4Tcp(kClient, kServer, port, 80, {tcpf::kAck, 1001, 5001});
    t.process(syn.data(), syn.size(), kT0);
    t.process(synack.data(), synack.size(), kT0);
    EXPECT_EQ(t.process(ack.data(), ack.size(), kT0).state, CtState::kEstablished);
  }
  auto c = ipv4Udp(kClient, kServer, 5002, 53);
  const auto v = t.process(c.data(), c.size(), kT0 + seconds(20));
  EXPECT_EQ(v.reason, InvalidReason::kTableFull);
  EXPECT_EQ(t.table().size(), 2u);
  auto a = ipv4Tcp(kClient, kServer, 5000, 80, {tcpf::kAck, 1001, 5001});
  EXPECT_EQ(t.process(a.data(), a.size(), kT0 + seconds(21)).state, CtState::kEstablished);
}

TEST_F(TrackerTest, BatchGivesTheSameResultsAsOneByOne) {
  std::vector<std::vector<uint8_t>> pkts;
  for (uint16_t i = 0; i < 50; ++i) {
    pkts.push_back(ipv4Udp(kClient, kServer, static_cast<uint16_t>(6000 + i % 20), 53));
    pkts.push_back(ipv4Udp(kServer, kClient, 53, static_cast<uint16_t>(6000 + i % 20)));
    pkts.push_back(
        ipv4Tcp(kClient, kServer, static_cast<uint16_t>(7000 + i), 80, {tcpf::kSyn, 100u * i, 0}));
  }
  pkts.push_back(std::vector<uint8_t>(3, 0));
  Tracker single(TrackerSettings{}, 9);
  Tracker batch(TrackerSettings{}, 9);
  std::vector<Verdict> a;
  for (const auto& p : pkts) a.push_back(single.process(p.data(), p.size(), kT0));
  std::vector<RawPacket> raw;
  for (const auto& p : pkts) raw.push_back({p.data(), static_cast<uint32_t>(p.size())});
  std::vector<Verdict> b(raw.size());
  batch.processBatch(raw, kT0, b);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].state, b[i].state) << i;
    EXPECT_EQ(a[i].dir, b[i].dir) << i;
    EXPECT_EQ(a[i].reason, b[i].reason) << i;
  }
  EXPECT_EQ(single.table().size(), batch.table().size());
  EXPECT_EQ(single.table().size(), 70u);
}

}  // namespace
}  // namespace ctsync::table
