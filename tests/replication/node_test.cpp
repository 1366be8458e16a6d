// Two sync nodes on real UDP sockets (unicast on 127.0.0.1), one io_context: flows replicate,
// a restarted node is resynced, a node with the wrong key hears nothing.
#include "replication/node.hpp"

#include <gtest/gtest.h>

#include <boost/asio/steady_timer.hpp>
#include <functional>

#include "sim.hpp"
#include "table/tcp.hpp"

namespace ctsync::replication {
namespace {

constexpr uint16_t kPortA = 47911;
constexpr uint16_t kPortB = 47912;

FlowRecord flow(uint32_t i) {
  FlowRecord f;
  f.key.orig.l3 = table::L3::kIpv4;
  f.key.orig.l4 = table::proto::kUdp;
  f.key.orig.src = table::Addr::v4(0x0a010000u + i);
  f.key.orig.dst = table::Addr::v4(0xc6336401u);
  f.key.orig.sport = static_cast<uint16_t>(5000 + i % 1000);
  f.key.orig.dport = 53;
  f.reply = *table::invertTuple(f.key.orig);
  f.status = table::status::kConfirmed;
  f.timeoutSec = 30;
  return f;
}

class NodeTest : public ::testing::Test {
 protected:
  std::unique_ptr<Node> open(uint16_t id, uint16_t port, uint16_t peer, const Key& key) {
    EngineSettings s;
    s.clusterId = 7;
    s.node = id;
    s.bootEpoch = ++epoch_;
    s.wallClockOffset = Node::wallClockOffset();
    LinkConfig link;
    link.kind = LinkConfig::Kind::kUnicast;
    link.localAddress = "127.0.0.1";
    link.port = port;
    link.peers = {"127.0.0.1:" + std::to_string(peer)};
    auto n = Node::open(io_, s, key, {link});
    if (auto* e = std::get_if<std::string>(&n)) {
      ADD_FAILURE() << *e;
      return nullptr;
    }
    return std::move(std::get<std::unique_ptr<Node>>(n));
  }

  // Runs the io_context until `done` holds, for at most `limitMs`. Returns whether it held.
  bool runUntil(const std::function<bool()>& done, int limitMs) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(limitMs);
    while (std::chrono::steady_clock::now() < end) {
      io_.run_for(std::chrono::milliseconds(5));
      if (done()) return true;
    }
    return done();
  }

  boost::asio::io_context io_;
  Key key_ = sim::testKey();
  uint64_t epoch_ = 1000;
};

TEST_F(NodeTest, FlowsReplicateOverUdpAndARestartedNodeIsResynced) {
  auto a = open(1, kPortA, kPortB, key_);
  auto b = open(2, kPortB, kPortA, key_);
  ASSERT_TRUE(a && b);
  for (uint32_t i = 0; i < 3000; ++i) a->upsert(flow(i));
  ASSERT_TRUE(runUntil([&] { return b->engine().replica().size() == 3000; }, 5000));
  const auto got = b->engine().replica().get(flow(17).key);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->record, *a->engine().local(flow(17).key));
  EXPECT_GE(b->channel().stats().links[0].datagramsReceived, 3000u / 70);  // ~60 per datagram

  a->remove(flow(17).key);
  ASSERT_TRUE(runUntil([&] { return !b->engine().replica().get(flow(17).key); }, 2000));

  // b restarts: a new process knows nothing; it gets everything back.
  b.reset();
  b = open(2, kPortB, kPortA, key_);
  ASSERT_TRUE(b);
  ASSERT_TRUE(runUntil([&] { return b->engine().replica().size() == 2999; }, 5000));
  ASSERT_TRUE(runUntil([&] { return a->engine().idle(Node::monotonicNow()); }, 2000));
}

TEST_F(NodeTest, ANodeWithAnotherKeyIsNotHeard) {
  std::array<uint8_t, kKeySize> other{};
  other.fill(9);
  auto a = open(1, kPortA, kPortB, key_);
  auto b = open(2, kPortB, kPortA, Key::fromBytes(other));
  ASSERT_TRUE(a && b);
  for (uint32_t i = 0; i < 100; ++i) a->upsert(flow(i));
  runUntil([] { return false; }, 300);
  EXPECT_EQ(b->engine().replica().size(), 0u);
  EXPECT_GT(b->engine().counters().authDrops[static_cast<size_t>(DropReason::kBadMac)], 0u);
  EXPECT_TRUE(b->engine().peers(Node::monotonicNow()).empty());
}

TEST_F(NodeTest, OpenReportsBadLinks) {
  EngineSettings s;
  s.node = 1;
  s.bootEpoch = 1;
  LinkConfig link;
  link.kind = LinkConfig::Kind::kUnicast;
  link.localAddress = "127.0.0.1";
  link.port = kPortA;  // no peers
  auto n = Node::open(io_, s, key_, {link});
  ASSERT_TRUE(std::holds_alternative<std::string>(n));
  EXPECT_NE(std::get<std::string>(n).find("link"), std::string::npos) << std::get<std::string>(n);
}

}  // namespace
}  // namespace ctsync::replication
