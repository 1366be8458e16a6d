// KernelSource and KernelSink against the real kernel: the test thread moves into a network
// namespace of its own (a fresh conntrack table), so the kernel is the oracle and the host's
// table is never touched. Needs root (ip netns, ctnetlink); skipped otherwise. Its own
// executable and ctest label ("netns"). Each test makes its namespace and deletes it on the way
// out, pass or fail; leftovers of a crashed run are swept at the next start.
//
// `--gtest_filter=*CommitRate*` measures commits per second into a fresh namespace.

// The header under test comes first: it puts <utility> before Asio (Boost 1.74, GCC 12, C++20).
#include "syncd/kernel.hpp"
#include "syncd/kernel_expect.hpp"
#include "table/helpers.hpp"
#include "tests/support/tuples.hpp"
// (system headers after)
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "table/tcp.hpp"
#include "table/types.hpp"
#include "tests/support/netns_util.hpp"

namespace ctsync::syncd {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using replication::FlowKey;
using replication::FlowKeyHasher;
using replication::FlowRecord;
using table::Addr;
using table::L3;
using table::Tuple;
namespace st = table::status;
namespace proto = table::proto;

constexpr char kPrefix[] = "ctsync-kn-";
constexpr uint32_t kCompared =
    st::kExpected | st::kSeenReply | st::kAssured | st::kSrcNat | st::kDstNat;
constexpr uint8_t kCarried = table::tcpflag::kWindowScale | table::tcpflag::kSackPerm |
                             table::tcpflag::kCloseInit | table::tcpflag::kBeLiberal;

using Table = std::unordered_map<FlowKey, FlowRecord, FlowKeyHasher>;

std::pair<int, std::string> run(const std::string& cmd) {
  return testing::runCommand(cmd);
}

// Namespaces named after a test process that no longer exists: a crashed earlier run.
void sweepLeftovers() {
  testing::sweepStaleNamespaces(kPrefix);
}

ino_t nsInode(const char* path) {
  struct stat s {};
  return ::stat(path, &s) == 0 ? s.st_ino : 0;
}

// ---- flows -------------------------------------------------------------------------------

Addr v4(uint32_t hostOrder) {
  return Addr::v4(hostOrder);
}

Addr v6(uint16_t first, uint32_t low) {
  Addr a;
  a.bytes[0] = static_cast<uint8_t>(first >> 8);
  a.bytes[1] = static_cast<uint8_t>(first);
  a.bytes[12] = static_cast<uint8_t>(low >> 24);
  a.bytes[13] = static_cast<uint8_t>(low >> 16);
  a.bytes[14] = static_cast<uint8_t>(low >> 8);
  a.bytes[15] = static_cast<uint8_t>(low);
  return a;
}

using testing::tuple;

FlowRecord flow(const Tuple& orig, uint32_t status, uint32_t timeout) {
  FlowRecord r;
  r.key.orig = orig;
  r.reply = table::invertTuple(orig).value();
  r.status = status;
  r.timeoutSec = timeout;
  return r;
}

FlowRecord tcpFlow(uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport,
                   table::TcpState state = table::TcpState::kEstablished) {
  FlowRecord r = flow(tuple(L3::kIpv4, proto::kTcp, v4(src), v4(dst), sport, dport),
                      st::kSeenReply | st::kAssured, 3600);
  r.tcpState = static_cast<uint8_t>(state);
  return r;
}

// A mix: SNAT'd TCP ESTABLISHED, DNAT'd UDP, ICMP echo, IPv6 TCP and UDP (some in zone 3),
// assorted marks, labels and timeouts.
std::vector<FlowRecord> mixedFlows(int n, bool labels) {
  std::vector<FlowRecord> out;
  out.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const auto u = static_cast<uint32_t>(i);
    const uint32_t client = 0x0a000000u | (u + 1);  // 10.0.x.y
    const auto sport = static_cast<uint16_t>(1024 + i);
    FlowRecord r;
    switch (i % 5) {
      case 0: {  // TCP, SNAT to 203.0.113.1:(20000+i)
        r = flow(
            tuple(L3::kIpv4, proto::kTcp, v4(client), v4(0xc6336400u | (u % 250 + 1)), sport, 443),
            st::kSeenReply | st::kAssured | st::kSrcNat, 100000 + u);
        r.reply.dst = v4(0xcb007101u);
        r.reply.dport = static_cast<uint16_t>(20000 + i);
        r.tcpState = static_cast<uint8_t>(table::TcpState::kEstablished);
        r.tcpFlags[0] = r.tcpFlags[1] = table::tcpflag::kWindowScale | table::tcpflag::kSackPerm;
        r.tcpScale[0] = 7;
        r.tcpScale[1] = 10;
        break;
      }
      case 1: {  // UDP, DNAT 192.0.2.10:53 -> 172.16.0.k:5353
        r = flow(tuple(L3::kIpv4, proto::kUdp, v4(client), v4(0xc000020au), sport, 53),
                 st::kSeenReply | st::kAssured | st::kDstNat, 30 + u % 150);
        r.reply.src = v4(0xac100000u | (u % 200 + 1));
        r.reply.sport = 5353;
        break;
      }
      case 2:  // ICMP echo request, id i
        r = flow(tuple(L3::kIpv4, proto::kIcmp, v4(client), v4(0x0a640001u), sport, 8 << 8),
                 st::kSeenReply, 30);
        break;
      case 3: {  // IPv6 TCP, no NAT, SYN_RECV half the time
        r = flow(tuple(L3::kIpv6, proto::kTcp, v6(0xfd00, u + 1), v6(0xfd01, 1), sport, 80),
                 st::kSeenReply, 60 + u % 60);
        r.tcpState =
            static_cast<uint8_t>(i % 2 ? table::TcpState::kEstablished : table::TcpState::kSynRecv);
        if (i % 2) r.status |= st::kAssured;
        r.tcpFlags[0] = table::tcpflag::kSackPerm;
        break;
      }
      default: {  // IPv6 UDP, unreplied, some in zone 3
        r = flow(tuple(L3::kIpv6, proto::kUdp, v6(0xfd00, u + 1), v6(0xfd02, 53), sport, 53), 0,
                 20 + u % 10);
        if (i % 3 == 0) r.key.zone = 3;
        break;
      }
    }
    if (i % 7 == 0) r.mark = u | 0x10000;
    if (labels && i % 11 == 0) r.labels[u % 16] = static_cast<uint8_t>(1u << (u % 8));
    out.push_back(r);
  }
  return out;
}

// n ESTABLISHED TCP flows from base.. (64 per client address) to 192.0.2.1:443.
std::vector<FlowRecord> plainTcpFlows(int n, uint32_t base) {
  std::vector<FlowRecord> out;
  out.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const auto u = static_cast<uint32_t>(i);
    FlowRecord r =
        tcpFlow(base + (u >> 6), static_cast<uint16_t>(10000 + (u & 63)), 0xc0000201, 443);
    r.tcpFlags[0] = r.tcpFlags[1] = table::tcpflag::kWindowScale;
    r.tcpScale[0] = r.tcpScale[1] = 7;
    out.push_back(r);
  }
  return out;
}

// Field-by-field: what the kernel holds for a committed record.
void expectSame(const FlowRecord& want, const FlowRecord& got) {
  SCOPED_TRACE(::testing::Message()
               << "flow " << table::formatAddr(want.key.orig.l3, want.key.orig.src) << ":"
               << want.key.orig.sport << " l4 " << int{want.key.orig.l4} << " zone "
               << want.key.zone);
  EXPECT_EQ(got.key, want.key);
  EXPECT_EQ(got.reply, want.reply);
  EXPECT_EQ(got.status & kCompared, want.status & kCompared) << std::hex << got.status;
  EXPECT_EQ(got.tcpState, want.tcpState);
  if (want.key.orig.l4 == proto::kTcp) {
    for (int d = 0; d < 2; ++d) {
      EXPECT_EQ(got.tcpFlags[d], (want.tcpFlags[d] & kCarried) | table::tcpflag::kBeLiberal) << d;
    }
    const bool scaled = (want.tcpFlags[0] & want.tcpFlags[1] & table::tcpflag::kWindowScale) != 0;
    EXPECT_EQ(got.tcpScale[0], scaled ? want.tcpScale[0] : 0);
    EXPECT_EQ(got.tcpScale[1], scaled ? want.tcpScale[1] : 0);
  }
  const uint32_t t = std::max<uint32_t>(want.timeoutSec, 1);
  EXPECT_LE(got.timeoutSec, t);
  EXPECT_GE(got.timeoutSec + 3, t);
  EXPECT_EQ(got.mark, want.mark);
  EXPECT_EQ(got.labels, want.labels);
  EXPECT_EQ(got.helper, want.helper);
  EXPECT_EQ(got.master, want.master);
}

// What a KernelSource's owner keeps: upserts and removes, and a dump's sweep at dumpEnd.
struct Owner {
  Table flows;
  std::unordered_set<FlowKey, FlowKeyHasher> seen;
  bool inDump = false;
  int dumpBegins = 0;
  int dumpEnds = 0;
  int upserts = 0;
  int removes = 0;
  int presents = 0;
  std::function<void(const FlowRecord&)> onUpsert;  // extra behaviour for a test
  std::function<void(const FlowKey&)> onRemove;

  KernelSource::Callbacks callbacks() {
    KernelSource::Callbacks c;
    c.upsert = [this](const FlowRecord& r) {
      ++upserts;
      flows[r.key] = r;
      if (inDump) seen.insert(r.key);
      if (onUpsert) onUpsert(r);
    };
    c.remove = [this](const FlowKey& k) {
      ++removes;
      flows.erase(k);
      if (onRemove) onRemove(k);
    };
    c.present = [this](const FlowKey& k) {  // held, if synced before: still in the kernel
      ++presents;
      if (inDump) seen.insert(k);
    };
    c.dumpBegin = [this] {
      ++dumpBegins;
      inDump = true;
      seen.clear();
    };
    c.dumpEnd = [this] {
      ++dumpEnds;
      inDump = false;
      for (auto it = flows.begin(); it != flows.end();) {
        it = seen.count(it->first) ? std::next(it) : flows.erase(it);
      }
    };
    return c;
  }
};

KernelFilter filterOf(const conf::KernelSettings& s) {
  auto f = KernelFilter::make(s);
  return std::get<KernelFilter>(std::move(f));
}

std::unique_ptr<KernelSource> openSource(boost::asio::io_context& io, Owner& owner,
                                         const conf::KernelSettings& s = {}) {
  auto opened = KernelSource::open(io, s, filterOf(s), owner.callbacks());
  if (auto* err = std::get_if<std::string>(&opened)) {
    ADD_FAILURE() << *err;
    return nullptr;
  }
  return std::move(std::get<std::unique_ptr<KernelSource>>(opened));
}

std::unique_ptr<KernelSink> openSink(const conf::KernelSettings& s = {}) {
  auto opened = KernelSink::open(s);
  if (auto* err = std::get_if<std::string>(&opened)) {
    ADD_FAILURE() << *err;
    return nullptr;
  }
  return std::move(std::get<std::unique_ptr<KernelSink>>(opened));
}

// Runs the io_context until `done` or the limit.
bool pump(boost::asio::io_context& io, const std::function<bool()>& done,
          std::chrono::milliseconds limit = 3000ms) {
  const auto deadline = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() >= deadline) return false;
    io.restart();
    io.run_for(5ms);
  }
  return true;
}

// Runs the io_context until the source's dump under way (if any) has ended.
bool finishDump(boost::asio::io_context& io, const KernelSource& src,
                std::chrono::milliseconds limit = 10000ms) {
  return pump(
      io, [&] { return !src.dumping(); }, limit);
}

// start(), then the whole dump (it runs from the io_context).
bool startAndDump(boost::asio::io_context& io, KernelSource& src) {
  src.start();
  return finishDump(io, src);
}

// The kernel's table, through a KernelSource dump (unfiltered).
Table dumpTable() {
  boost::asio::io_context io;
  Owner owner;
  auto src = openSource(io, owner);
  if (!src) return {};
  EXPECT_TRUE(startAndDump(io, *src));
  EXPECT_EQ(owner.dumpEnds, 1);
  return owner.flows;
}

// Runs the io_context until nothing arrives for a while.
void settle(boost::asio::io_context& io, const KernelSourceCounters& c) {
  auto total = [&] { return c.newEvents + c.updateEvents + c.destroyEvents + c.dumps; };
  uint64_t last = total();
  auto quietSince = Clock::now();
  const auto deadline = Clock::now() + 10s;
  while (Clock::now() - quietSince < 200ms && Clock::now() < deadline) {
    io.restart();
    io.run_for(10ms);
    if (total() != last) {
      last = total();
      quietSince = Clock::now();
    }
  }
}

// ---- the fixture -------------------------------------------------------------------------

class KernelNetns : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "network namespaces and ctnetlink need root";
    sweepLeftovers();
    static int counter = 0;
    ns_ = kPrefix + std::to_string(::getpid()) + "-" + std::to_string(++counter);
    if (auto [rc, out] = run("ip netns add " + ns_); rc != 0) {
      GTEST_SKIP() << "cannot create a network namespace: " << out;
    }
    made_ = true;
    hostNs_ = ::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(hostNs_, 0);
    const int fd = ::open(("/run/netns/" + ns_).c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::setns(fd, CLONE_NEWNET), 0) << std::strerror(errno);
    ::close(fd);
    entered_ = true;
    // Every socket below is opened in this namespace: make sure before touching a table.
    ASSERT_EQ(nsInode("/proc/thread-self/ns/net"), nsInode(("/run/netns/" + ns_).c_str()));
    ASSERT_NE(nsInode("/proc/thread-self/ns/net"), 0u);
    // Labels need a connlabel user in the namespace, or the kernel drops them silently. Without
    // nft the tests run without labels.
    labels_ =
        quiet("nft add table inet ctsync_test") &&
        quiet("nft add chain inet ctsync_test pre '{ type filter hook prerouting priority 0; }'") &&
        quiet("nft add rule inet ctsync_test pre ct label set 127");
  }

  void TearDown() override {
    if (entered_) {
      EXPECT_EQ(::setns(hostNs_, CLONE_NEWNET), 0);
    }
    if (hostNs_ >= 0) ::close(hostNs_);
    if (made_) run("ip netns del " + ns_);
  }

  // A command inside the test namespace.
  bool sh(const std::string& cmd) {
    auto [rc, out] = run("ip netns exec " + ns_ + " " + cmd);
    if (rc != 0) ADD_FAILURE() << cmd << " -> " << rc << ": " << out;
    return rc == 0;
  }
  bool quiet(const std::string& cmd) { return run("ip netns exec " + ns_ + " " + cmd).first == 0; }
  std::string out(const std::string& cmd) { return run("ip netns exec " + ns_ + " " + cmd).second; }

  std::string ns_;
  int hostNs_ = -1;
  bool made_ = false;
  bool entered_ = false;
  bool labels_ = false;
};

// ---- sink --------------------------------------------------------------------------------

TEST_F(KernelNetns, CommitsAMixAndTheKernelHoldsExactlyIt) {
  conf::KernelSettings settings;
  settings.commitBatch = 1024;
  auto sink = openSink(settings);
  ASSERT_TRUE(sink);
  const std::vector<FlowRecord> flows = mixedFlows(2000, labels_);
  const CommitResult res = sink->commit(flows);
  EXPECT_EQ(res.created, flows.size());
  EXPECT_EQ(res.failed, 0u);
  EXPECT_TRUE(res.errors.empty()) << res.errors.front();
  EXPECT_EQ(sink->counters().created, flows.size());
  EXPECT_EQ(sink->counters().batches, 2u);  // 1024 per send

  const Table kernel = dumpTable();
  ASSERT_EQ(kernel.size(), flows.size());
  for (const FlowRecord& want : flows) {
    auto it = kernel.find(want.key);
    ASSERT_NE(it, kernel.end());
    expectSame(want, it->second);
  }
  // The kernel marks NAT done for both manips when it set up either.
  const FlowRecord& snat = kernel.at(flows[0].key);
  EXPECT_EQ(snat.status & (st::kSrcNatDone | st::kDstNatDone), st::kSrcNatDone | st::kDstNatDone);
  // conntrack(8) agrees on a sample.
  const std::string listed = out("conntrack -L -p tcp --orig-src 10.0.0.1");
  EXPECT_NE(listed.find("ESTABLISHED src=10.0.0.1 dst=198.51.100.1 sport=1024 dport=443 "
                        "src=198.51.100.1 dst=203.0.113.1 sport=443 dport=20000 [ASSURED]"),
            std::string::npos)
      << listed;
}

TEST_F(KernelNetns, CommittingAgainUpdatesInPlace) {
  auto sink = openSink();
  ASSERT_TRUE(sink);
  std::vector<FlowRecord> flows = mixedFlows(2000, labels_);
  ASSERT_EQ(sink->commit(flows).created, flows.size());

  // Same again, with new marks, timeouts and states: every flow is updated, none re-created.
  for (FlowRecord& r : flows) {
    r.mark ^= 0x5a5a;
    r.timeoutSec += 1000;
    if (r.key.orig.l4 == proto::kTcp) {
      r.tcpState = static_cast<uint8_t>(table::TcpState::kEstablished);
      r.status |= st::kAssured;
    }
  }
  const CommitResult res = sink->commit(flows);
  EXPECT_EQ(res.created, 0u);
  EXPECT_EQ(res.updated, flows.size());
  EXPECT_EQ(res.failed, 0u);
  EXPECT_TRUE(res.errors.empty()) << res.errors.front();
  const Table kernel = dumpTable();
  ASSERT_EQ(kernel.size(), flows.size());
  for (const FlowRecord& want : flows) expectSame(want, kernel.at(want.key));

  // A record without ASSURED cannot clear the kernel's bit (EBUSY): it is still updated, the
  // kernel keeps ASSURED and takes the rest.
  FlowRecord r = flows[1];  // UDP, ASSURED
  r.status &= ~st::kAssured;
  r.mark = 77;
  const CommitResult again = sink->commit(std::span<const FlowRecord>(&r, 1));
  EXPECT_EQ(again.updated, 1u);
  EXPECT_EQ(again.failed, 0u);
  const FlowRecord k = dumpTable().at(r.key);
  EXPECT_EQ(k.mark, 77u);
  EXPECT_TRUE(k.status & st::kAssured);
}

TEST_F(KernelNetns, RelatedFlowWithItsMasterInOneCommit) {
  auto sink = openSink();
  ASSERT_TRUE(sink);
  FlowRecord master = tcpFlow(0x0a460001, 40000, 0x0a460002, 21);
  master.helper = 1;  // ftp
  FlowRecord data = tcpFlow(0x0a460002, 20, 0x0a460001, 50000, table::TcpState::kSynRecv);
  data.status = st::kSeenReply | st::kExpected;
  data.master = master.key.orig;
  // The related flow comes first in the input: the sink still creates the master before it.
  std::vector<FlowRecord> both = {data, master};
  CommitResult res = sink->commit(both);
  EXPECT_EQ(res.created, 2u);
  EXPECT_EQ(res.failed, 0u);
  EXPECT_TRUE(res.errors.empty()) << res.errors.front();
  Table kernel = dumpTable();
  ASSERT_EQ(kernel.size(), 2u);
  expectSame(master, kernel.at(master.key));
  expectSame(data, kernel.at(data.key));
  EXPECT_TRUE(kernel.at(data.key).status & st::kExpected);

  // Again: both updated (the related one with EXPECTED in its status, no master attribute).
  res = sink->commit(both);
  EXPECT_EQ(res.updated, 2u);
  EXPECT_EQ(res.failed, 0u);

  // A related flow whose master the kernel lacks fails, with a readable line.
  FlowRecord orphan = tcpFlow(0x0a460009, 20, 0x0a460001, 50001);
  orphan.master = tcpFlow(0x0a460001, 40001, 0x0a460009, 21).key.orig;
  res = sink->commit(std::span<const FlowRecord>(&orphan, 1));
  EXPECT_EQ(res.failed, 1u);
  ASSERT_EQ(res.errors.size(), 1u);
  EXPECT_EQ(res.errors[0], "tcp 10.70.0.9:20 -> 10.70.0.1:50001: No such file or directory");
  EXPECT_EQ(sink->counters().failed, 1u);

  // A helper the kernel has not for this protocol (tftp is UDP): created without it.
  FlowRecord odd = tcpFlow(0x0a460003, 40002, 0x0a460004, 69);
  odd.helper = 2;
  res = sink->commit(std::span<const FlowRecord>(&odd, 1));
  EXPECT_EQ(res.created, 1u);
  EXPECT_EQ(res.failed, 0u);
  EXPECT_EQ(dumpTable().at(odd.key).helper, 0);
}

// Without a connlabel user in the namespace the kernel has nowhere to put labels: a create drops
// them silently, an update refuses them (ENOSPC). Neither may cost the flow.
TEST_F(KernelNetns, LabelsWithoutAConnlabelUser) {
  if (labels_) {
    ASSERT_TRUE(sh("nft delete table inet ctsync_test"));
  }
  auto sink = openSink();
  ASSERT_TRUE(sink);
  FlowRecord r = tcpFlow(0x0a5a0001, 1, 0x0a5a0002, 2);
  r.labels[3] = 0x10;
  CommitResult res = sink->commit(std::span<const FlowRecord>(&r, 1));
  EXPECT_EQ(res.created, 1u);
  res = sink->commit(std::span<const FlowRecord>(&r, 1));
  EXPECT_EQ(res.updated, 1u);
  EXPECT_EQ(res.failed, 0u);
  EXPECT_TRUE(res.errors.empty()) << res.errors.front();
  const FlowRecord k = dumpTable().at(r.key);
  EXPECT_EQ(k.labels, (std::array<uint8_t, 16>{}));
  EXPECT_EQ(k.tcpState, r.tcpState);
}

TEST_F(KernelNetns, DeletesAndAbsentFlows) {
  auto sink = openSink();
  ASSERT_TRUE(sink);
  const std::vector<FlowRecord> flows = mixedFlows(600, false);
  ASSERT_EQ(sink->commit(flows).created, flows.size());
  std::vector<FlowKey> deletes;
  for (size_t i = 0; i < flows.size(); i += 2) deletes.push_back(flows[i].key);
  const size_t present = deletes.size();
  for (int i = 0; i < 25; ++i) deletes.push_back(tcpFlow(0x0b000000u + i, 1, 0x0b000001, 2).key);
  // An upsert in the same commit: deletes run first.
  const FlowRecord extra = tcpFlow(0x0c000001, 5, 0x0c000002, 6);
  const CommitResult res = sink->commit(std::span<const FlowRecord>(&extra, 1), deletes);
  EXPECT_EQ(res.deleted, present);
  EXPECT_EQ(res.absent, 25u);
  EXPECT_EQ(res.created, 1u);
  EXPECT_EQ(res.failed, 0u);
  const Table kernel = dumpTable();
  EXPECT_EQ(kernel.size(), flows.size() - present + 1);
  for (size_t i = 0; i < flows.size(); ++i) EXPECT_EQ(kernel.count(flows[i].key), i % 2) << i;
  EXPECT_EQ(kernel.count(extra.key), 1u);
}

TEST_F(KernelNetns, FlushKernelEmptiesEveryZone) {
  auto sink = openSink();
  ASSERT_TRUE(sink);
  const std::vector<FlowRecord> flows = mixedFlows(500, false);  // some in zone 3
  ASSERT_EQ(sink->commit(flows).created, flows.size());
  EXPECT_EQ(sink->flushKernel(), flows.size());
  EXPECT_TRUE(dumpTable().empty());
  EXPECT_EQ(sink->flushKernel(), 0u);
}

// ---- source ------------------------------------------------------------------------------

TEST_F(KernelNetns, SourceSeesNewUpdateDestroyFromTheCli) {
  boost::asio::io_context io;
  Owner owner;
  auto src = openSource(io, owner);
  ASSERT_TRUE(src);
  src->start();
  EXPECT_EQ(owner.dumpBegins, 1);
  ASSERT_TRUE(finishDump(io, *src));
  EXPECT_EQ(owner.dumpEnds, 1);
  EXPECT_TRUE(owner.flows.empty());

  const FlowRecord want = tcpFlow(0x0a320001, 1000, 0x0a320002, 80);
  ASSERT_TRUE(
      sh("conntrack -I -p tcp -s 10.50.0.1 -d 10.50.0.2 --sport 1000 --dport 80 "
         "--state ESTABLISHED -u SEEN_REPLY,ASSURED -t 100 -m 3"));
  ASSERT_TRUE(pump(io, [&] { return owner.flows.count(want.key) == 1; }));
  EXPECT_EQ(src->counters().newEvents, 1u);
  FlowRecord got = owner.flows.at(want.key);
  EXPECT_EQ(got.mark, 3u);
  EXPECT_EQ(got.tcpState, static_cast<uint8_t>(table::TcpState::kEstablished));
  EXPECT_EQ(got.reply, want.reply);
  EXPECT_TRUE(got.status & st::kAssured);

  // A mark change alone: the kernel's UPDATE event leaves the TCP state out; the source fetches
  // the entry rather than report state 0.
  ASSERT_TRUE(sh("conntrack -U -p tcp -s 10.50.0.1 --sport 1000 -m 9"));
  ASSERT_TRUE(pump(io, [&] { return owner.flows.at(want.key).mark == 9; }));
  EXPECT_EQ(src->counters().updateEvents, 1u);
  got = owner.flows.at(want.key);
  EXPECT_EQ(got.tcpState, static_cast<uint8_t>(table::TcpState::kEstablished));
  EXPECT_LE(got.timeoutSec, 100u);
  EXPECT_GE(got.timeoutSec, 95u);

  ASSERT_TRUE(sh("conntrack -D -p tcp -s 10.50.0.1 --sport 1000"));
  ASSERT_TRUE(pump(io, [&] { return owner.flows.empty(); }));
  EXPECT_EQ(src->counters().destroyEvents, 1u);
  EXPECT_EQ(owner.removes, 1);
  EXPECT_EQ(src->counters().overruns, 0u);
  EXPECT_EQ(src->counters().dumps, 1u);
}

TEST_F(KernelNetns, SourceSeesSinkCommitsAndSuppressesItsEchoes) {
  boost::asio::io_context io;
  Owner owner;
  auto src = openSource(io, owner);
  auto sink = openSink();
  ASSERT_TRUE(src && sink);
  ASSERT_TRUE(startAndDump(io, *src));
  std::vector<FlowRecord> flows = mixedFlows(100, labels_);

  // Announced: the NEW events of our own creates are dropped.
  for (const FlowRecord& r : flows) src->expectEcho(r);
  ASSERT_EQ(sink->commit(flows).created, flows.size());
  ASSERT_TRUE(pump(io, [&] { return src->counters().newEvents == flows.size(); }));
  settle(io, src->counters());
  EXPECT_EQ(src->counters().echoesSuppressed, flows.size());
  EXPECT_EQ(owner.upserts, 0);

  // Announced updates too (the UPDATE events of EEXIST -> update).
  for (FlowRecord& r : flows) {
    r.mark += 1;
    src->expectEcho(r);
  }
  ASSERT_EQ(sink->commit(flows).updated, flows.size());
  ASSERT_TRUE(pump(io, [&] { return src->counters().updateEvents >= flows.size(); }));
  settle(io, src->counters());
  EXPECT_EQ(src->counters().echoesSuppressed, 2 * flows.size());
  EXPECT_EQ(owner.upserts, 0);

  // An announcement that does not match (another mark) lets the event through, and stays.
  flows[0].mark = 1234;
  FlowRecord announced = flows[0];
  announced.mark = 999;
  src->expectEcho(announced);
  ASSERT_EQ(sink->commit(std::span<const FlowRecord>(flows.data(), 1)).updated, 1u);
  ASSERT_TRUE(pump(io, [&] { return owner.upserts == 1; }));
  EXPECT_EQ(owner.flows.at(flows[0].key).mark, 1234u);

  // Not announced: every event is passed on, with what the kernel holds.
  for (FlowRecord& r : flows) r.mark += 1;
  ASSERT_EQ(sink->commit(flows).updated, flows.size());
  ASSERT_TRUE(pump(io, [&] { return owner.upserts == 1 + static_cast<int>(flows.size()); }));
  for (const FlowRecord& r : flows) expectSame(r, owner.flows.at(r.key));
}

TEST_F(KernelNetns, FilterAppliesToDumpsAndEvents) {
  auto sink = openSink();
  ASSERT_TRUE(sink);
  const FlowRecord established = tcpFlow(0x0a3c0001, 1, 0x0a3c00ff, 80);
  FlowRecord synSent = tcpFlow(0x0a3c0002, 2, 0x0a3c00ff, 80, table::TcpState::kSynSent);
  synSent.status = 0;
  const FlowRecord ignored =
      flow(tuple(L3::kIpv4, proto::kUdp, v4(0x0a420005), v4(0x0a3c00ff), 3, 53), st::kSeenReply,
           60);  // 10.66.0.5: ignored prefix
  const FlowRecord icmp =
      flow(tuple(L3::kIpv4, proto::kIcmp, v4(0x0a3c0003), v4(0x0a3c00ff), 4, 8 << 8),
           st::kSeenReply, 30);  // protocol not synced
  conf::KernelSettings s;
  s.protocols = {proto::kTcp, proto::kUdp};
  s.ignoreAddresses = {"10.66.0.0/16"};
  s.tcpStates = {static_cast<uint8_t>(table::TcpState::kEstablished)};
  boost::asio::io_context io;
  Owner owner;
  auto src = openSource(io, owner, s);  // listening (not started) before the flows exist
  ASSERT_TRUE(src);
  std::vector<FlowRecord> before = {established, synSent, ignored, icmp};
  ASSERT_EQ(sink->commit(before).created, 4u);
  ASSERT_TRUE(startAndDump(io, *src));
  ASSERT_EQ(owner.flows.size(), 1u);
  EXPECT_EQ(owner.flows.count(established.key), 1u);
  EXPECT_EQ(src->counters().filtered, 3u);
  EXPECT_EQ(src->counters().dumpedFlows, 4u);

  // The SYN_SENT flow becomes ESTABLISHED: now it passes, as an upsert.
  FlowRecord nowUp = synSent;
  nowUp.tcpState = static_cast<uint8_t>(table::TcpState::kEstablished);
  nowUp.status = st::kSeenReply | st::kAssured;
  ASSERT_EQ(sink->commit(std::span<const FlowRecord>(&nowUp, 1)).updated, 1u);
  ASSERT_TRUE(pump(io, [&] { return owner.flows.count(synSent.key) == 1; }));

  // Events of filtered flows are dropped, DESTROY included; a synced flow's DESTROY is not,
  // whatever its last TCP state.
  std::vector<FlowKey> gone = {ignored.key, icmp.key, established.key};
  const FlowRecord udpIgnored2 =
      flow(tuple(L3::kIpv4, proto::kUdp, v4(0x0a3c0009), v4(0x0a420001), 9, 53), 0, 60);
  ASSERT_EQ(sink->commit(std::span<const FlowRecord>(&udpIgnored2, 1), gone).deleted, 3u);
  ASSERT_TRUE(pump(io, [&] { return owner.flows.count(established.key) == 0; }));
  settle(io, src->counters());
  EXPECT_EQ(owner.removes, 1);
  EXPECT_EQ(owner.flows.size(), 1u);
  EXPECT_EQ(src->counters().destroyEvents, 3u);
  EXPECT_EQ(src->counters().filtered, 3u + 1u + 2u);  // dump 3, NEW 1, DESTROY 2
}

// The kernel's default (nf_conntrack_events=2) gives an entry its event extension only if some
// ctnetlink listener exists when it is created (anywhere on the host: the flag is global), and an
// entry without it never reports anything, not even its DESTROY. Opening a source switches the
// namespace to 1, so entries created while the source is stopped (and out of the event groups)
// still report once it runs.
TEST_F(KernelNetns, EntriesCreatedWhileStoppedStillReport) {
  EXPECT_EQ(out("sysctl -n net.netfilter.nf_conntrack_events"), "2\n");
  boost::asio::io_context io;
  Owner owner;
  auto src = openSource(io, owner);
  ASSERT_TRUE(src);
  EXPECT_EQ(out("sysctl -n net.netfilter.nf_conntrack_events"), "1\n");
  auto sink = openSink();
  ASSERT_TRUE(sink);

  const FlowRecord before = tcpFlow(0x0a500001, 1, 0x0a500002, 2);  // never started yet
  ASSERT_EQ(sink->commit(std::span<const FlowRecord>(&before, 1)).created, 1u);
  ASSERT_TRUE(startAndDump(io, *src));
  ASSERT_EQ(owner.flows.size(), 1u);
  src->stop();
  const FlowRecord during = tcpFlow(0x0a500003, 3, 0x0a500004, 4);  // stopped
  ASSERT_EQ(sink->commit(std::span<const FlowRecord>(&during, 1)).created, 1u);
  io.restart();
  io.run_for(50ms);
  EXPECT_EQ(src->counters().newEvents, 0u);  // not in the groups while stopped
  ASSERT_TRUE(startAndDump(io, *src));
  ASSERT_EQ(owner.flows.size(), 2u);

  const std::vector<FlowKey> both = {before.key, during.key};
  ASSERT_EQ(sink->commit({}, both).deleted, 2u);
  ASSERT_TRUE(pump(io, [&] { return owner.removes == 2; }));
  EXPECT_TRUE(owner.flows.empty());
  EXPECT_EQ(src->counters().destroyEvents, 2u);
}

TEST_F(KernelNetns, OverrunResyncsToExactlyTheKernelsTable) {
  conf::KernelSettings s;
  s.netlinkRcvbufBytes = 4096;  // the kernel's minimum, a handful of events
  boost::asio::io_context io;
  Owner owner;
  auto src = openSource(io, owner, s);
  ASSERT_TRUE(src);
  auto sink = openSink();
  ASSERT_TRUE(sink);
  const std::vector<FlowRecord> first = mixedFlows(400, false);
  ASSERT_EQ(sink->commit(first).created, first.size());
  ASSERT_TRUE(startAndDump(io, *src));
  ASSERT_EQ(owner.flows.size(), first.size());

  // A burst while nobody reads: creates, deletes and updates, far more than the buffer holds.
  std::vector<FlowRecord> burst;
  for (int i = 0; i < 3000; ++i) {
    burst.push_back(tcpFlow(0x0d000000u + static_cast<uint32_t>(i), 7, 0x0d100001, 22));
  }
  ASSERT_EQ(sink->commit(burst).created, burst.size());
  std::vector<FlowKey> deletes;
  for (size_t i = 0; i < first.size(); i += 3) deletes.push_back(first[i].key);
  for (size_t i = 0; i < burst.size(); i += 5) deletes.push_back(burst[i].key);
  std::vector<FlowRecord> changed(first.begin() + 1, first.begin() + 100);
  for (FlowRecord& r : changed) r.mark = 4242;
  sink->commit(changed, deletes);

  settle(io, src->counters());
  EXPECT_GE(src->counters().overruns, 1u);
  EXPECT_GE(src->counters().dumps, 2u);
  EXPECT_EQ(owner.dumpBegins, owner.dumpEnds);
  const Table kernel = dumpTable();
  EXPECT_EQ(owner.flows.size(), kernel.size());
  size_t differ = 0;
  for (const auto& [key, k] : kernel) {
    auto it = owner.flows.find(key);
    if (it == owner.flows.end() || it->second.mark != k.mark || it->second.reply != k.reply ||
        it->second.status != k.status) {
      ++differ;
    }
  }
  EXPECT_EQ(differ, 0u);
}

TEST_F(KernelNetns, CallbacksMayStopResyncOrDestroyTheSource) {
  auto sink = openSink();
  ASSERT_TRUE(sink);
  const std::vector<FlowRecord> flows = mixedFlows(100, false);
  ASSERT_EQ(sink->commit(flows).created, flows.size());
  boost::asio::io_context io;

  {  // stop() in the middle of a dump: nothing more, no dumpEnd; start() dumps again.
    Owner owner;
    auto src = openSource(io, owner);
    ASSERT_TRUE(src);
    owner.onUpsert = [&](const FlowRecord&) {
      if (owner.upserts == 10) src->stop();
    };
    ASSERT_TRUE(startAndDump(io, *src));
    EXPECT_EQ(owner.upserts, 10);
    EXPECT_EQ(owner.dumpEnds, 0);
    EXPECT_FALSE(src->running());
    owner.onUpsert = nullptr;
    ASSERT_TRUE(startAndDump(io, *src));
    EXPECT_EQ(owner.dumpEnds, 1);
    EXPECT_EQ(owner.flows.size(), flows.size());
  }
  {  // resync() from a dump callback: a second full dump once the first has ended.
    Owner owner;
    auto src = openSource(io, owner);
    ASSERT_TRUE(src);
    owner.onUpsert = [&](const FlowRecord&) {
      if (owner.upserts == 5) src->resync();
    };
    src->start();
    ASSERT_TRUE(pump(io, [&] { return owner.dumpEnds == 2; }));
    EXPECT_TRUE(finishDump(io, *src));
    EXPECT_EQ(owner.dumpBegins, 2);
    EXPECT_EQ(owner.dumpEnds, 2);
    EXPECT_EQ(src->counters().dumps, 2u);
  }
  {  // Destroyed from a dump callback, then from an event callback.
    Owner owner;
    auto src = openSource(io, owner);
    ASSERT_TRUE(src);
    owner.onUpsert = [&](const FlowRecord&) { src.reset(); };
    src->start();
    ASSERT_TRUE(pump(io, [&] { return src == nullptr; }));
    EXPECT_EQ(owner.upserts, 1);

    Owner owner2;
    auto src2 = openSource(io, owner2);
    ASSERT_TRUE(src2);
    sink->flushKernel();  // recreated while a listener exists, so that they report events
    ASSERT_EQ(sink->commit(flows).created, flows.size());
    ASSERT_TRUE(startAndDump(io, *src2));
    owner2.onRemove = [&](const FlowKey&) { src2.reset(); };
    std::vector<FlowKey> keys;
    for (const FlowRecord& r : flows) keys.push_back(r.key);
    ASSERT_EQ(sink->commit({}, keys).deleted, flows.size());
    ASSERT_TRUE(pump(io, [&] { return src2 == nullptr; }));
    EXPECT_EQ(owner2.removes, 1);
    settle(io, KernelSourceCounters{});  // the orphaned wait handler must do nothing
  }
  {  // stop() from an event callback: the rest is drained and ignored.
    Owner owner;
    auto src = openSource(io, owner);
    ASSERT_TRUE(src);
    ASSERT_EQ(sink->commit(flows).created, flows.size());
    ASSERT_TRUE(startAndDump(io, *src));
    owner.onRemove = [&](const FlowKey&) { src->stop(); };
    std::vector<FlowKey> keys;
    for (const FlowRecord& r : flows) keys.push_back(r.key);
    ASSERT_EQ(sink->commit({}, keys).deleted, flows.size());
    ASSERT_TRUE(pump(io, [&] { return owner.removes == 1; }));
    settle(io, src->counters());
    EXPECT_EQ(owner.removes, 1);
    EXPECT_FALSE(src->running());
  }
}

// ---- stale entries in the way of a commit (review: EEXIST with another mapping) -------------

// SNAT'd TCP 10.80.0.<host>:1000 -> 198.51.100.1:443, reply to 203.0.113.1:<natPort>.
FlowRecord snatFlow(uint32_t host, uint16_t natPort) {
  FlowRecord r = tcpFlow(0x0a500000u | host, 1000, 0xc6336401u, 443);
  r.status |= st::kSrcNat;
  r.reply.dst = v4(0xcb007101u);
  r.reply.dport = natPort;
  return r;
}

TEST_F(KernelNetns, CommitReplacesAnEntryWithAnotherNatMapping) {
  auto sink = openSink();
  ASSERT_TRUE(sink);
  const FlowRecord stale = snatFlow(1, 20000);
  ASSERT_EQ(sink->commit(std::span<const FlowRecord>(&stale, 1)).created, 1u);
  // The same original tuple, mapped to another port: an update cannot change NAT.
  FlowRecord live = snatFlow(1, 20001);
  live.mark = 5;
  const CommitResult res = sink->commit(std::span<const FlowRecord>(&live, 1));
  EXPECT_EQ(res.created, 1u);
  EXPECT_EQ(res.replaced, 1u);
  EXPECT_EQ(res.updated, 0u);
  EXPECT_EQ(res.failed, 0u);
  EXPECT_TRUE(res.errors.empty()) << res.errors.front();
  EXPECT_EQ(sink->counters().replaced, 1u);
  const Table kernel = dumpTable();
  ASSERT_EQ(kernel.size(), 1u);
  expectSame(live, kernel.at(live.key));
  EXPECT_EQ(kernel.at(live.key).reply.dport, 20001);

  // The same mapping again: an update in place, nothing replaced.
  live.mark = 6;
  const CommitResult again = sink->commit(std::span<const FlowRecord>(&live, 1));
  EXPECT_EQ(again.updated, 1u);
  EXPECT_EQ(again.replaced, 0u);
  EXPECT_EQ(dumpTable().at(live.key).mark, 6u);
}

TEST_F(KernelNetns, CommitReplacesAStaleEntryHoldingTheReplyTuple) {
  auto sink = openSink();
  ASSERT_TRUE(sink);
  // A stale flow of another client holds 203.0.113.1:20000; the live flow has that mapping now.
  const FlowRecord stale = snatFlow(1, 20000);
  const FlowRecord live = snatFlow(2, 20000);
  ASSERT_EQ(sink->commit(std::span<const FlowRecord>(&stale, 1)).created, 1u);
  // And one in a batch with other flows, the clash in the middle.
  std::vector<FlowRecord> batch = {snatFlow(3, 30000), live, snatFlow(4, 30001)};
  const CommitResult res = sink->commit(batch);
  EXPECT_EQ(res.created, 3u);
  EXPECT_EQ(res.replaced, 1u);
  EXPECT_EQ(res.failed, 0u);
  EXPECT_TRUE(res.errors.empty()) << res.errors.front();
  const Table kernel = dumpTable();
  EXPECT_EQ(kernel.size(), 3u) << out("conntrack -L");
  EXPECT_EQ(kernel.count(stale.key), 0u);
  ASSERT_EQ(kernel.count(live.key), 1u);
  expectSame(live, kernel.at(live.key));
}

// ---- ICMP ids under NAT ---------------------------------------------------------------------

TEST_F(KernelNetns, IcmpReplyIdSurvivesACommitAndIsReadBack) {
  auto sink = openSink();
  ASSERT_TRUE(sink);
  // Masqueraded ping whose id NAT remapped (100 -> 555), and an id change without an address
  // change (a clash on the NAT box itself), and an IPv6 one.
  FlowRecord masq =
      flow(tuple(L3::kIpv4, proto::kIcmp, v4(0x0a5b0001), v4(0xc6336402), 100, 8 << 8),
           st::kSeenReply | st::kSrcNat, 30);
  masq.reply.dst = v4(0xcb007101u);
  masq.reply.sport = 555;
  FlowRecord idOnly =
      flow(tuple(L3::kIpv4, proto::kIcmp, v4(0x0a5b0002), v4(0xc6336402), 100, 8 << 8),
           st::kSeenReply | st::kSrcNat, 30);  // the kernel says SRC_NAT
  idOnly.reply.sport = 777;
  FlowRecord six =
      flow(tuple(L3::kIpv6, proto::kIcmpv6, v6(0xfd00, 9), v6(0xfd01, 9), 42, 128 << 8),
           st::kSeenReply | st::kSrcNat, 30);
  six.reply.dst = v6(0xfd02, 1);
  six.reply.sport = 4242;
  const std::vector<FlowRecord> flows = {masq, idOnly, six};
  const CommitResult res = sink->commit(flows);
  EXPECT_EQ(res.created, 3u);
  EXPECT_EQ(res.failed, 0u);
  EXPECT_TRUE(res.errors.empty()) << res.errors.front();

  // conntrack(8) shows the reply ids (independent of our parsing).
  const std::string listed = out("conntrack -L -p icmp");
  EXPECT_NE(listed.find("src=10.91.0.1 dst=198.51.100.2 type=8 code=0 id=100 src=198.51.100.2 "
                        "dst=203.0.113.1 type=0 code=0 id=555"),
            std::string::npos)
      << listed;
  EXPECT_NE(listed.find("src=10.91.0.2 dst=198.51.100.2 type=8 code=0 id=100 src=198.51.100.2 "
                        "dst=10.91.0.2 type=0 code=0 id=777"),
            std::string::npos)
      << listed;

  // Dumps (and events, and GETs: the same parsing) read the reply's id from the message.
  const Table kernel = dumpTable();
  ASSERT_EQ(kernel.size(), 3u);
  for (const FlowRecord& want : flows) expectSame(want, kernel.at(want.key));

  // Committing them again updates them in place (the mapping is the same).
  const CommitResult again = sink->commit(flows);
  EXPECT_EQ(again.updated, 3u);
  EXPECT_EQ(again.replaced, 0u);
}

// Real pings through masquerade: a client namespace, this one as the router, a server namespace.
// The second of two pings from different clients with the same id gets another id on the way
// out; the source reports it, and a sink in a fresh namespace recreates it exactly.
TEST_F(KernelNetns, IcmpIdsOfRealPingsThroughMasquerade) {
  const std::string c1 = ns_ + "-c1", c2 = ns_ + "-c2", srv = ns_ + "-s";
  struct Cleanup {
    std::vector<std::string> names;
    ~Cleanup() {
      for (const std::string& n : names) run("ip netns del " + n);
    }
  } cleanup;
  for (const std::string& n : {c1, c2, srv}) {
    if (run("ip netns add " + n).first != 0) {
      GTEST_SKIP() << "ip netns add";
    }
    cleanup.names.push_back(n);
  }
  auto host = [&](const std::string& nsName, const std::string& cmd) {
    auto [rc, o] = run("ip netns exec " + nsName + " " + cmd);
    if (rc != 0) ADD_FAILURE() << cmd << ": " << o;
    return rc == 0;
  };
  // c1 10.92.1.2, c2 10.92.2.2, router 10.92.{1,2,3}.1, server 10.92.3.2.
  const std::vector<std::pair<std::string, int>> links = {{c1, 1}, {c2, 2}, {srv, 3}};
  for (const auto& [peer, n] : links) {
    const std::string i = std::to_string(n);
    if (run("ip link add r" + i + " netns " + ns_ + " type veth peer name e0 netns " + peer)
            .first != 0) {
      GTEST_SKIP() << "veth";
    }
    ASSERT_TRUE(sh("ip addr add 10.92." + i + ".1/24 dev r" + i));
    ASSERT_TRUE(sh("ip link set r" + i + " up"));
    ASSERT_TRUE(host(peer, "ip addr add 10.92." + i + ".2/24 dev e0"));
    ASSERT_TRUE(host(peer, "ip link set e0 up"));
    ASSERT_TRUE(host(peer, "ip link set lo up"));
    if (n != 3) {
      ASSERT_TRUE(host(peer, "ip route add default via 10.92." + i + ".1"));
    }
  }
  ASSERT_TRUE(sh("sysctl -qw net.ipv4.ip_forward=1"));
  if (!quiet("nft add table ip ctsync_nat") ||
      !quiet("nft add chain ip ctsync_nat post '{ type nat hook postrouting priority 100; }'") ||
      !quiet("nft add rule ip ctsync_nat post oifname r3 masquerade")) {
    GTEST_SKIP() << "nft masquerade";
  }
  // The same ICMP id from both clients (python sets it: ping(8) picks its own).
  const char* ping =
      "python3 -c \"import socket,struct;s=socket.socket(socket.AF_INET,socket.SOCK_RAW,1);"
      "s.settimeout(2);p=struct.pack('!BBHHH',8,0,0,4711,1)+b'x'*8;"
      "c=lambda b:(lambda v:(~((v>>16)+(v&0xffff)+((((v>>16)+(v&0xffff))>>16)))&0xffff))("
      "sum(struct.unpack('!%dH'%(len(b)//2),b)));"
      "p=p[:2]+struct.pack('!H',c(p))+p[4:];s.sendto(p,('10.92.3.2',0));s.recv(100)\"";
  ASSERT_TRUE(host(c1, ping));
  ASSERT_TRUE(host(c2, ping));

  const Table kernel = dumpTable();
  std::vector<FlowRecord> pings;
  for (const auto& [key, r] : kernel) {
    if (key.orig.l4 == proto::kIcmp && key.orig.sport == 4711) pings.push_back(r);
  }
  ASSERT_EQ(pings.size(), 2u);
  const int remapped = (pings[0].reply.sport != 4711) + (pings[1].reply.sport != 4711);
  EXPECT_EQ(remapped, 1) << pings[0].reply.sport << " " << pings[1].reply.sport;
  const std::string listed = out("conntrack -L -p icmp");
  for (const FlowRecord& r : pings) {
    EXPECT_NE(listed.find("dst=10.92.3.1 type=0 code=0 id=" + std::to_string(r.reply.sport)),
              std::string::npos)
        << listed;
  }

  // A backup: the same records into the server's empty table come out the same.
  const int here = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  const int there = ::open(("/run/netns/" + srv).c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(here, 0);
  ASSERT_GE(there, 0);
  ASSERT_EQ(::setns(there, CLONE_NEWNET), 0);
  ::close(there);
  ASSERT_TRUE(quiet("true"));
  {
    auto sink = openSink();
    if (sink) {
      ASSERT_EQ(run("ip netns exec " + srv + " conntrack -F").first, 0);
      const CommitResult res = sink->commit(pings);
      EXPECT_EQ(res.created, 2u);
      EXPECT_EQ(res.failed, 0u);
      const Table copy = dumpTable();
      for (const FlowRecord& want : pings) {
        auto it = copy.find(want.key);
        ASSERT_NE(it, copy.end());
        EXPECT_EQ(it->second.reply, want.reply);
      }
    }
  }
  EXPECT_EQ(::setns(here, CLONE_NEWNET), 0);
  ::close(here);
}

// ---- incremental dumps ----------------------------------------------------------------------

TEST_F(KernelNetns, DumpLetsOtherHandlersRunAndHoldsEventsUntilItEnds) {
  constexpr int kFlows = 50000;
  auto sink = openSink();
  ASSERT_TRUE(sink);
  const std::vector<FlowRecord> flows = plainTcpFlows(kFlows, 0x0a000000);
  ASSERT_EQ(sink->commit(flows).created, flows.size());
  boost::asio::io_context io;
  Owner owner;
  auto src = openSource(io, owner);
  ASSERT_TRUE(src);

  // Posted at the first flow: with a dump in one go it would run only after dumpEnd.
  int upsertsWhenRun = -1;
  int dumpEndsWhenRun = -1;
  const FlowRecord during = tcpFlow(0x0a5c0001, 1, 0x0a5c0002, 2);
  owner.onUpsert = [&](const FlowRecord&) {
    if (owner.upserts != 1) return;
    boost::asio::post(io, [&] {
      upsertsWhenRun = owner.upserts;
      dumpEndsWhenRun = owner.dumpEnds;
      // A change while the dump runs: its event is held until the dump ends, then delivered.
      EXPECT_EQ(sink->commit(std::span<const FlowRecord>(&during, 1)).created, 1u);
    });
  };
  const auto t0 = Clock::now();
  src->start();
  EXPECT_TRUE(src->dumping());
  EXPECT_EQ(owner.dumpBegins, 1);
  EXPECT_LT(owner.upserts, kFlows);  // start() returns early
  ASSERT_TRUE(pump(
      io, [&] { return owner.dumpEnds == 1; }, 20000ms));
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_FALSE(src->dumping());
  EXPECT_EQ(dumpEndsWhenRun, 0);
  EXPECT_GT(upsertsWhenRun, 0);
  EXPECT_LT(upsertsWhenRun, kFlows);
  ASSERT_TRUE(pump(io, [&] { return owner.flows.count(during.key) == 1; }));
  EXPECT_EQ(owner.flows.size(), flows.size() + 1);
  EXPECT_EQ(src->counters().dumps, 1u);
  std::printf("[ dump ] %d flows in %.3f s, posted handler ran after %d of them\n", kFlows, seconds,
              upsertsWhenRun);

  // stop() between slices abandons it: no dumpEnd; start() dumps again after its rest is read.
  owner.onUpsert = nullptr;
  src->resync();
  ASSERT_TRUE(src->dumping());
  io.restart();
  io.run_one();  // one slice
  src->stop();
  src->start();
  ASSERT_TRUE(pump(
      io, [&] { return owner.dumpEnds == 2; }, 20000ms));
  EXPECT_EQ(owner.dumpBegins, 3);
  EXPECT_EQ(owner.flows.size(), flows.size() + 1);
}

// ---- flows the state filter rejects -------------------------------------------------------

TEST_F(KernelNetns, DumpReportsFlowsFilteredOnlyByTheirState) {
  auto sink = openSink();
  ASSERT_TRUE(sink);
  conf::KernelSettings s;
  s.ignoreAddresses = {"10.66.0.0/16"};
  s.tcpStates = {static_cast<uint8_t>(table::TcpState::kEstablished)};
  boost::asio::io_context io;
  Owner owner;
  auto src = openSource(io, owner, s);
  ASSERT_TRUE(src);
  FlowRecord synced = tcpFlow(0x0a5d0001, 1, 0x0a5d0002, 80);
  const FlowRecord ignored = tcpFlow(0x0a420001, 1, 0x0a5d0002, 80);  // ignored address
  std::vector<FlowRecord> both = {synced, ignored};
  ASSERT_EQ(sink->commit(both).created, 2u);
  ASSERT_TRUE(startAndDump(io, *src));
  ASSERT_EQ(owner.flows.count(synced.key), 1u);

  // It moves into a state the filter rejects: its event is dropped, and the next dump reports
  // it as present, so the owner still holds it.
  synced.tcpState = static_cast<uint8_t>(table::TcpState::kFinWait);
  ASSERT_EQ(sink->commit(std::span<const FlowRecord>(&synced, 1)).updated, 1u);
  settle(io, src->counters());
  owner.presents = 0;
  src->resync();
  ASSERT_TRUE(finishDump(io, *src));
  EXPECT_EQ(owner.dumpEnds, 2);
  EXPECT_EQ(owner.presents, 1);  // not the ignored flow
  EXPECT_EQ(owner.flows.count(synced.key), 1u);
}

// ---- throughput --------------------------------------------------------------------------

TEST_F(KernelNetns, CommitRate) {
  constexpr int kFlows = 100000;
  auto sink = openSink();
  ASSERT_TRUE(sink);
  const std::vector<FlowRecord> flows = plainTcpFlows(kFlows, 0x0a000000);
  const CommitResult res = sink->commit(flows);
  EXPECT_EQ(res.created, flows.size());
  EXPECT_EQ(res.failed, 0u);
  const double rate = static_cast<double>(kFlows) / res.seconds;
  const CommitResult again = sink->commit(flows);
  EXPECT_EQ(again.updated, flows.size());
  const double updateRate = static_cast<double>(kFlows) / again.seconds;
  EXPECT_EQ(sink->flushKernel(), flows.size());

  // The conntrackd way for comparison: one message per send, each waiting for its answer.
  conf::KernelSettings one;
  one.commitBatch = 1;
  auto single = openSink(one);
  ASSERT_TRUE(single);
  const std::vector<FlowRecord> some = plainTcpFlows(20000, 0x0b000000);
  const CommitResult slow = single->commit(some);
  EXPECT_EQ(slow.created, some.size());
  const double singleRate = static_cast<double>(some.size()) / slow.seconds;

  std::printf(
      "[ commit rate ] %d creates in %.3f s: %.0f flows/s; updates (EEXIST then update) "
      "%.0f flows/s; one message per send: %.0f flows/s (x%.1f)\n",
      kFlows, res.seconds, rate, updateRate, singleRate, rate / singleRate);
  RecordProperty("creates_per_second", static_cast<int>(rate));
  RecordProperty("updates_per_second", static_cast<int>(updateRate));
  RecordProperty("single_message_per_second", static_cast<int>(singleRate));
}

// A control flow whose PORT a helper rewrote to another length: its sequence adjustment goes
// into the kernel with the create and again with an update, and comes back from a dump.
TEST_F(KernelNetns, SequenceAdjustmentCommittedAndReadBack) {
  auto sink = openSink();
  ASSERT_TRUE(sink);
  FlowRecord ftp = tcpFlow(0x0a460001, 40000, 0x0a460002, 21);
  ftp.helper = 1;
  ftp.status |= st::kSeqAdjust;
  ftp.seqAdj[0] = {123456789u, 0, -1};
  ftp.seqAdj[1] = {0, 0, 0};
  ASSERT_EQ(sink->commit(std::span<const FlowRecord>(&ftp, 1)).created, 1u);
  Table kernel = dumpTable();
  ASSERT_EQ(kernel.size(), 1u);
  EXPECT_TRUE(kernel.at(ftp.key).status & st::kSeqAdjust);
  EXPECT_EQ(kernel.at(ftp.key).seqAdj[0], ftp.seqAdj[0]);
  ftp.seqAdj[0] = {123456999u, -1, -2};
  CommitResult res = sink->commit(std::span<const FlowRecord>(&ftp, 1));
  EXPECT_EQ(res.updated, 1u);
  kernel = dumpTable();
  EXPECT_EQ(kernel.at(ftp.key).seqAdj[0], ftp.seqAdj[0]);
}

// SCTP state and verification tags go into the kernel with the flow and come back from a dump
// (the kernel checks every chunk's tag against them: a flow without them drops the association).
TEST_F(KernelNetns, SctpStateAndTagsCommittedAndReadBack) {
  auto sink = openSink();
  ASSERT_TRUE(sink);
  FlowRecord sctp = flow(tuple(L3::kIpv4, 132, v4(0x0a460001), v4(0x0a460002), 3868, 3868),
                         st::kSeenReply | st::kAssured, 3000);
  sctp.sctpState = 4;  // ESTABLISHED
  sctp.sctpVtag[0] = 0x01020304;
  sctp.sctpVtag[1] = 0xa0b0c0d0;
  const CommitResult res = sink->commit(std::span<const FlowRecord>(&sctp, 1));
  ASSERT_EQ(res.created, 1u) << (res.errors.empty() ? "" : res.errors.front());
  const Table kernel = dumpTable();
  ASSERT_EQ(kernel.count(sctp.key), 1u);
  const FlowRecord& got = kernel.at(sctp.key);
  EXPECT_EQ(got.sctpState, 4);
  EXPECT_EQ(got.sctpVtag[0], 0x01020304u);
  EXPECT_EQ(got.sctpVtag[1], 0xa0b0c0d0u);
  EXPECT_NE(out("conntrack -L -p sctp").find("ESTABLISHED src=10.70.0.1 dst=10.70.0.2 sport=3868"),
            std::string::npos);
}

// ---- expectations ------------------------------------------------------------------------

// An FTP data connection as the ftp helper announces it after a PORT from 10.70.1.1 through
// masquerade: any source port of the server, to the firewall's address and the announced port;
// NATed back to the client's address and port by nat-follow-master.
replication::ExpectRecord ftpExpectation(const FlowRecord& master, uint16_t port) {
  replication::ExpectRecord e;
  e.master = master.key.orig;
  e.key.expected = tuple(L3::kIpv4, proto::kTcp, master.key.orig.dst, v4(0x0a460101), 0, port);
  e.mask = tuple(L3::kIpv4, proto::kTcp, Addr::v4(0xffffffff), Addr::v4(0xffffffff), 0, 0xffff);
  e.timeoutSec = 200;
  e.helper = 1;
  return e;
}

std::unique_ptr<KernelExpectSink> openExpectSink() {
  auto s = KernelExpectSink::open(conf::KernelSettings{});
  if (auto* e = std::get_if<std::string>(&s)) {
    ADD_FAILURE() << *e;
    return nullptr;
  }
  return std::move(std::get<std::unique_ptr<KernelExpectSink>>(s));
}

// The sink creates expectations under masters it committed (with their helper), with the
// remaining time (not the helper's 5 minutes), NAT and expectfn included; the source reads the
// same records back from a dump and follows NEW and DESTROY events; conntrack(8) lists them.
TEST_F(KernelNetns, ExpectationsCommittedDumpedAndFollowed) {
  // nat-follow-master is registered by the NAT core: have a NAT table in the namespace.
  ASSERT_TRUE(sh("nft add table ip ctsync_nat"));
  ASSERT_TRUE(sh("nft add chain ip ctsync_nat post '{ type nat hook postrouting priority 100; }'"));
  // Events of an expectation need the event extension on its master: the flow source sets
  // this in the daemon before anything is committed.
  ASSERT_TRUE(sh("sysctl -qw net.netfilter.nf_conntrack_events=1"));
  auto sink = openSink();
  auto esink = openExpectSink();
  ASSERT_TRUE(sink && esink);
  // One master each: the ftp helper allows one expectation per master (max_expected 1), a
  // second evicts the first.
  std::vector<FlowRecord> masters;
  for (uint16_t i = 0; i < 3; ++i) {
    masters.push_back(tcpFlow(0x0a460001, static_cast<uint16_t>(40000 + i), 0x0a460002, 21));
    masters.back().helper = 1;
  }
  ASSERT_EQ(sink->commit(masters).created, 3u);

  replication::ExpectRecord plain = ftpExpectation(masters[0], 50000);
  replication::ExpectRecord nat = ftpExpectation(masters[1], 50001);
  nat.fn = *table::expectFnCode("nat-follow-master");
  // The client's address and port the helper saved travel as the tuple's source.
  nat.natTuple = tuple(L3::kIpv4, proto::kTcp, v4(0x0a010064), Addr{}, 40001, 0);
  nat.natDir = 1;
  const std::vector<replication::ExpectRecord> both = {plain, nat};
  ExpectCommitResult res = esink->commit(both);
  EXPECT_EQ(res.created, 2u);
  EXPECT_EQ(res.failed, 0u);
  EXPECT_TRUE(res.errors.empty()) << res.errors.front();

  const std::string listed = out("conntrack -L expect");
  EXPECT_NE(listed.find("proto=6 src=10.70.0.2 dst=10.70.1.1 sport=0 dport=50000 "
                        "mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535 "
                        "master-src=10.70.0.1 master-dst=10.70.0.2 sport=40000 dport=21 class=0 "
                        "helper=ftp"),
            std::string::npos)
      << listed;
  EXPECT_NE(listed.find("sport=40001 dport=21 class=0 helper=ftp"), std::string::npos) << listed;

  boost::asio::io_context io;
  std::unordered_map<uint16_t, replication::ExpectRecord> seen;  // by expected port
  int begins = 0, ends = 0, removes = 0;
  KernelExpectSource::Callbacks cb;
  cb.upsert = [&](const replication::ExpectRecord& e) { seen[e.key.expected.dport] = e; };
  cb.remove = [&](const replication::ExpectKey& k) {
    ++removes;
    seen.erase(k.expected.dport);
  };
  cb.dumpBegin = [&] { ++begins; };
  cb.dumpEnd = [&] { ++ends; };
  auto opened = KernelExpectSource::open(io, conf::KernelSettings{}, cb);
  ASSERT_TRUE(std::holds_alternative<std::unique_ptr<KernelExpectSource>>(opened))
      << std::get<std::string>(opened);
  auto& src = *std::get<std::unique_ptr<KernelExpectSource>>(opened);
  src.start();
  EXPECT_EQ(begins, 1);
  EXPECT_EQ(ends, 1);
  ASSERT_EQ(seen.size(), 2u);
  for (const replication::ExpectRecord* want : {&plain, &nat}) {
    replication::ExpectRecord got = seen.at(want->key.expected.dport);
    EXPECT_LE(got.timeoutSec, 200u);  // the remaining time, not the helper's 300 s
    EXPECT_GE(got.timeoutSec, 195u);
    got.timeoutSec = want->timeoutSec;
    EXPECT_EQ(got.key, want->key);
    EXPECT_EQ(got.mask, want->mask);
    EXPECT_EQ(got.master, want->master);
    EXPECT_EQ(got.helper, want->helper);
    EXPECT_EQ(got.fn, want->fn) << want->key.expected.dport;
    EXPECT_EQ(got.natTuple.has_value(), want->natTuple.has_value());
    if (got.natTuple && want->natTuple) {
      EXPECT_EQ(got.natTuple->src, want->natTuple->src);
      EXPECT_EQ(got.natTuple->sport, want->natTuple->sport);
    }
    EXPECT_EQ(got.natDir, want->natDir);
    EXPECT_EQ(got.flags, want->flags);
    EXPECT_EQ(got, *want) << want->key.expected.dport;
  }

  // Events: one more, then it is removed with conntrack(8).
  replication::ExpectRecord third = ftpExpectation(masters[2], 50002);
  ASSERT_EQ(esink->commit(std::span<const replication::ExpectRecord>(&third, 1)).created, 1u);
  ASSERT_TRUE(pump(io, [&] { return seen.count(50002) == 1; }));
  EXPECT_EQ(src.counters().newEvents, 1u);
  const replication::ExpectKey gone = third.key;
  res = esink->commit({}, std::span<const replication::ExpectKey>(&gone, 1));
  EXPECT_EQ(res.deleted, 1u);
  ASSERT_TRUE(pump(io, [&] { return seen.count(50002) == 0; }));
  EXPECT_EQ(removes, 1);
  // Deleting it again: absent, not an error; the others are still there (a delete names its
  // tuple: one without would flush them all).
  res = esink->commit({}, std::span<const replication::ExpectKey>(&gone, 1));
  EXPECT_EQ(res.absent, 1u);
  EXPECT_EQ(res.failed, 0u);
  EXPECT_NE(out("conntrack -L expect").find("dport=50000"), std::string::npos);

  // The masters go: their expectations die with them (DESTROY events).
  ASSERT_TRUE(sh("conntrack -D -p tcp --orig-src 10.70.0.1"));
  ASSERT_TRUE(pump(io, [&] { return seen.empty(); }));
  EXPECT_EQ(src.counters().destroyEvents, 3u);

  // Without the master in the kernel a create fails, counted and named.
  res = esink->commit(std::span<const replication::ExpectRecord>(&plain, 1));
  EXPECT_EQ(res.failed, 1u);
  EXPECT_EQ(res.noMaster, 1u);
  ASSERT_EQ(res.errors.size(), 1u);
  EXPECT_EQ(res.errors[0], "tcp 10.70.0.2:0 -> 10.70.1.1:50000: No such file or directory");
  EXPECT_EQ(src.counters().overruns, 0u);
}

// A helper filter ([kernel] expect_helpers) leaves the others' expectations out.
TEST_F(KernelNetns, ExpectationHelperFilter) {
  auto sink = openSink();
  auto esink = openExpectSink();
  ASSERT_TRUE(sink && esink);
  FlowRecord master = tcpFlow(0x0a460001, 40000, 0x0a460002, 21);
  master.helper = 1;
  ASSERT_EQ(sink->commit(std::span<const FlowRecord>(&master, 1)).created, 1u);
  const replication::ExpectRecord e = ftpExpectation(master, 50000);
  ASSERT_EQ(esink->commit(std::span<const replication::ExpectRecord>(&e, 1)).created, 1u);
  boost::asio::io_context io;
  int upserts = 0;
  KernelExpectSource::Callbacks cb;
  cb.upsert = [&](const replication::ExpectRecord&) { ++upserts; };
  conf::KernelSettings only;
  only.expectHelpers = {*table::helperCode("tftp")};
  auto opened = KernelExpectSource::open(io, only, cb);
  ASSERT_TRUE(std::holds_alternative<std::unique_ptr<KernelExpectSource>>(opened));
  auto& src = *std::get<std::unique_ptr<KernelExpectSource>>(opened);
  src.start();
  EXPECT_EQ(upserts, 0);
  EXPECT_EQ(src.counters().filtered, 1u);
  EXPECT_EQ(src.counters().dumped, 1u);
}

}  // namespace
}  // namespace ctsync::syncd
