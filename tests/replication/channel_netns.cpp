// Real multicast between two nodes, each a process in its own network namespace, joined by two
// veth pairs: IPv4 (239.255.77.1) and IPv6 (ff02::c75:1) groups on both pairs, failover when
// pair 1 goes down, back when it returns, and the group re-joined after pair 1 is deleted and
// created again. Needs root (ip netns); skipped otherwise. Its own executable and ctest label
// ("netns"), as it adds namespaces to the host while it runs. Every wait is bounded; the
// namespaces it made are deleted on the way out, pass or fail, and leftovers of a crashed run
// are swept at the next start.
//
//   node A: link 0 = ctA1 (pair 1), link 1 = ctA2 (pair 2)
//   node B: link 0 = ctB2 (pair 2), link 1 = ctB1 (pair 1)   <- reversed priority, so each
//           node receives on the link it does not send on, and a failover on A leaves B alone.

// The header under test comes first: it puts <utility> before Asio (Boost 1.74, GCC 12, C++20).
#include "replication/channel.hpp"
#include "replication/node.hpp"
// (system headers after)
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <future>
#include <istream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/netns_util.hpp"

namespace ctsync::replication {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr char kPrefix[] = "ctsync-ch-";
constexpr int kBurst = 20;  // datagrams each node must get across in each phase

std::pair<int, std::string> run(const std::string& cmd) {
  return testing::runCommand(cmd);
}

bool waitFor(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

// Namespaces named after a test process that no longer exists: a crashed earlier run.
void sweepLeftovers() {
  testing::sweepStaleNamespaces(kPrefix);
}

// --- the node: a child process running one Channel in its namespace ---------------------------

[[noreturn]] void nodeMain(const std::string& netns, std::vector<LinkConfig> links, char self,
                           char peer, int cmdFd, int replyFd) {
  // Forked, not exec'd: drop every inherited descriptor but our two pipe ends, so that the
  // other node's pipes see EOF when the parent closes them.
  for (int fd = 3; fd < 1024; ++fd) {
    if (fd != cmdFd && fd != replyFd) ::close(fd);
  }
  auto say = [replyFd](const std::string& s) {
    const std::string line = s + "\n";
    if (::write(replyFd, line.data(), line.size()) < 0) ::_exit(4);
  };
  const int nsFd = ::open(("/run/netns/" + netns).c_str(), O_RDONLY | O_CLOEXEC);
  if (nsFd < 0 || ::setns(nsFd, CLONE_NEWNET) != 0) {
    say("error setns " + netns + ": " + std::strerror(errno));
    ::_exit(2);
  }
  asio::io_context io;
  std::array<uint64_t, 2> rx{};
  uint64_t bad = 0;
  ChannelOptions options;
  options.probeInterval = 20ms;
  options.hardErrorHoldProbes = 3;
  auto opened = Channel::open(
      io, std::move(links),
      [&](std::span<const uint8_t> d, size_t link) {
        if (!d.empty() && d[0] == static_cast<uint8_t>(peer) && link < rx.size()) {
          ++rx[link];
        } else {
          ++bad;  // our own datagram, or garbage: neither may ever arrive
        }
      },
      options);
  if (auto* err = std::get_if<std::string>(&opened)) {
    say("error " + *err);
    ::_exit(3);
  }
  Channel& ch = *std::get<std::unique_ptr<Channel>>(opened);
  say("ready");

  asio::posix::stream_descriptor in(io, cmdFd);
  asio::streambuf buf;
  uint64_t seq = 0;
  std::function<void()> next = [&] {
    asio::async_read_until(in, buf, '\n', [&](const boost::system::error_code& ec, size_t) {
      if (ec) {  // the parent went away
        io.stop();
        return;
      }
      std::istream is(&buf);
      std::string line;
      std::getline(is, line);
      if (line.rfind("send ", 0) == 0) {
        const int n = std::stoi(line.substr(5));
        for (int i = 0; i < n; ++i) {
          std::string d(1, self);
          d += std::to_string(++seq);
          ch.send({reinterpret_cast<const uint8_t*>(d.data()), d.size()});
        }
        say("ok");
      } else if (line == "stats") {
        const ChannelStats s = ch.stats();
        std::ostringstream o;
        o << "active=" << (s.activeLink ? static_cast<long>(*s.activeLink) : -1L)
          << " changes=" << s.activeChanges << " bad=" << bad;
        for (size_t i = 0; i < s.links.size(); ++i) {
          const LinkStats& l = s.links[i];
          o << " rx" << i << "=" << rx[i] << " up" << i << "=" << l.healthy << " sent" << i << "="
            << l.datagramsSent << " reopens" << i << "=" << l.reopens << " hard" << i << "="
            << (l.sendLinkDown + l.sendUnreachable + l.sendAddrNotAvail) << " own" << i << "="
            << l.ownSourceDrops;
        }
        say(o.str());
      } else if (line == "quit") {
        io.stop();
        return;
      } else {
        say("error unknown command " + line);
      }
      next();
    });
  };
  next();
  io.run_for(60s);  // bounded even if the parent hangs
  ::_exit(0);
}

class Proc {
 public:
  Proc(const std::string& netns, std::vector<LinkConfig> links, char self, char peer) {
    int toChild[2];
    int fromChild[2];
    if (::pipe2(toChild, O_CLOEXEC) != 0 || ::pipe2(fromChild, O_CLOEXEC) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(toChild[1]);
      ::close(fromChild[0]);
      nodeMain(netns, std::move(links), self, peer, toChild[0], fromChild[1]);
    }
    ::close(toChild[0]);
    ::close(fromChild[1]);
    cmd_ = toChild[1];
    reply_ = fromChild[0];
  }
  ~Proc() {
    if (cmd_ >= 0) ::close(cmd_);  // EOF: the node stops by itself
    if (reply_ >= 0) ::close(reply_);
    if (pid_ > 0 && !reaped_) {
      if (!waitExit(1s)) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
      }
    }
  }
  Proc(const Proc&) = delete;
  Proc& operator=(const Proc&) = delete;

  // One reply line, or an "error ..." line on timeout or a dead node.
  std::string readLine(std::chrono::milliseconds limit = 3000ms) {
    const auto deadline = Clock::now() + limit;
    for (;;) {
      if (size_t nl = pending_.find('\n'); nl != std::string::npos) {
        std::string line = pending_.substr(0, nl);
        pending_.erase(0, nl + 1);
        return line;
      }
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return "error timeout";
      pollfd p{reply_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      std::array<char, 512> buf{};
      const ssize_t n = ::read(reply_, buf.data(), buf.size());
      if (n <= 0) return "error node exited";
      pending_.append(buf.data(), static_cast<size_t>(n));
    }
  }

  std::string request(const std::string& line) {
    const std::string l = line + "\n";
    if (::write(cmd_, l.data(), l.size()) < 0) return "error write";
    return readLine();
  }

  std::map<std::string, long long> stats() {
    std::map<std::string, long long> m;
    std::istringstream in(request("stats"));
    std::string kv;
    while (in >> kv) {
      const size_t eq = kv.find('=');
      if (eq != std::string::npos) m[kv.substr(0, eq)] = std::atoll(kv.c_str() + eq + 1);
    }
    return m;
  }

  // Asks the node to quit; true if it exited with status 0 in time.
  bool quit() {
    if (::write(cmd_, "quit\n", 5) < 0) return false;
    return waitExit(2s) && exitStatus_ == 0;
  }

 private:
  bool waitExit(std::chrono::milliseconds limit) {
    return waitFor(
        [&] {
          int status = 0;
          if (::waitpid(pid_, &status, WNOHANG) != pid_) return false;
          reaped_ = true;
          exitStatus_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
          return true;
        },
        limit);
  }

  pid_t pid_ = -1;
  int cmd_ = -1;
  int reply_ = -1;
  bool reaped_ = false;
  int exitStatus_ = -1;
  std::string pending_;
};

// --- the topology -------------------------------------------------------------------------------

struct Family {
  const char* name;
  const char* group;
  uint16_t port;
  bool v6;
};

class NetnsMulticast : public ::testing::TestWithParam<Family> {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "network namespaces need root";
    sweepLeftovers();
    const std::string tag = kPrefix + std::to_string(::getpid()) + "-" + GetParam().name;
    nsA_ = tag + "-a";
    nsB_ = tag + "-b";
    if (auto [rc, out] = run("ip netns add " + nsA_); rc != 0) {
      GTEST_SKIP() << "cannot create a network namespace: " << out;
    }
    made_.push_back(nsA_);
    ASSERT_TRUE(sh("ip netns add " + nsB_));
    made_.push_back(nsB_);
    for (const std::string& ns : made_) {
      // Link-local addresses usable at once (no DAD): IPv6 multicast needs a source address.
      auto [rc, out] = run("ip netns exec " + ns +
                           " sysctl -qw net.ipv6.conf.default.accept_dad=0"
                           " net.ipv6.conf.all.accept_dad=0");
      if (rc != 0 && GetParam().v6) GTEST_SKIP() << "no IPv6 here: " << out;
    }
    ASSERT_TRUE(makePair(1));
    ASSERT_TRUE(makePair(2));
  }

  void TearDown() override {
    for (const std::string& ns : made_) run("ip netns del " + ns);
  }

  bool sh(const std::string& cmd) {
    auto [rc, out] = run(cmd);
    if (rc != 0) ADD_FAILURE() << cmd << " -> " << rc << ": " << out;
    return rc == 0;
  }

  static std::string dev(char node, int pair) {
    return std::string("ct") + node + std::to_string(pair);
  }

  // Veth pair `pair`: ctA<pair> in A, ctB<pair> in B, 10.231.<pair>.1 and .2, both up.
  bool makePair(int pair) {
    const std::string net = "10.231." + std::to_string(pair) + ".";
    return sh("ip -n " + nsA_ + " link add " + dev('A', pair) + " type veth peer name " +
              dev('B', pair) + " netns " + nsB_) &&
           sh("ip -n " + nsA_ + " addr add " + net + "1/24 dev " + dev('A', pair)) &&
           sh("ip -n " + nsB_ + " addr add " + net + "2/24 dev " + dev('B', pair)) &&
           sh("ip -n " + nsA_ + " link set dev " + dev('A', pair) + " multicast on up") &&
           sh("ip -n " + nsB_ + " link set dev " + dev('B', pair) + " multicast on up") &&
           carrier(pair) && linkLocalReady(pair);
  }

  // Both ends UP with carrier, i.e. RUNNING as the Channel sees it.
  bool carrier(int pair) {
    auto running = [&](const std::string& ns, const std::string& d) {
      auto [rc, out] = run("ip -n " + ns + " link show dev " + d);
      return rc == 0 && out.find("LOWER_UP") != std::string::npos;
    };
    const bool ok =
        waitFor([&] { return running(nsA_, dev('A', pair)) && running(nsB_, dev('B', pair)); }, 3s);
    if (!ok) ADD_FAILURE() << "pair " << pair << " has no carrier";
    return ok;
  }

  // IPv6: both ends of the pair have a usable link-local address (it comes with the carrier).
  bool linkLocalReady(int pair) {
    if (!GetParam().v6) return true;
    auto ready = [&](const std::string& ns, const std::string& d) {
      auto [rc, out] = run("ip -n " + ns + " -6 addr show dev " + d + " scope link");
      return rc == 0 && out.find("inet6") != std::string::npos &&
             out.find("tentative") == std::string::npos;
    };
    const bool ok =
        waitFor([&] { return ready(nsA_, dev('A', pair)) && ready(nsB_, dev('B', pair)); }, 3s);
    if (!ok) ADD_FAILURE() << "no IPv6 link-local address on pair " << pair;
    return ok;
  }

  LinkConfig link(const std::string& interface) const {
    LinkConfig c;
    c.kind = LinkConfig::Kind::kMulticast;
    c.interface = interface;
    c.group = GetParam().group;
    c.port = GetParam().port;
    c.rcvbufBytes = size_t{256} * 1024;
    c.sndbufBytes = size_t{256} * 1024;
    return c;
  }

  std::string nsA_, nsB_;
  std::vector<std::string> made_;
};

using Stats = std::map<std::string, long long>;

// Both nodes send bursts until each has received kBurst more datagrams on the expected link
// (the receiving node's index), or three seconds pass. Returns the stats at the end.
void exchange(Proc& a, Proc& b, size_t aRxLink, size_t bRxLink, Stats& sa, Stats& sb) {
  const std::string ra = "rx" + std::to_string(aRxLink), rb = "rx" + std::to_string(bRxLink);
  const long long wantA = sa[ra] + kBurst, wantB = sb[rb] + kBurst;
  const bool ok = waitFor(
      [&] {
        EXPECT_EQ(a.request("send 5"), "ok");
        EXPECT_EQ(b.request("send 5"), "ok");
        std::this_thread::sleep_for(20ms);
        sa = a.stats();
        sb = b.stats();
        return sa[ra] >= wantA && sb[rb] >= wantB;
      },
      3s);
  EXPECT_TRUE(ok) << "A got " << sa[ra] << "/" << wantA << " on link " << aRxLink << ", B got "
                  << sb[rb] << "/" << wantB << " on link " << bRxLink;
}

TEST_P(NetnsMulticast, FailsOverToTheSecondPairAndBack) {
  Proc a(nsA_, {link("ctA1"), link("ctA2")}, 'A', 'B');
  Proc b(nsB_, {link("ctB2"), link("ctB1")}, 'B', 'A');
  ASSERT_EQ(a.readLine(), "ready");
  ASSERT_EQ(b.readLine(), "ready");
  Stats sa, sb;
  auto settled = [&](long long activeA, long long activeB, bool bLink1Up) {
    return waitFor(
        [&] {
          sa = a.stats();
          sb = b.stats();
          return sa["active"] == activeA && sb["active"] == activeB && sb["up1"] == bLink1Up;
        },
        3s);
  };

  // 1. Both pairs up: A sends on pair 1 (B's link 1), B on pair 2 (A's link 1).
  ASSERT_TRUE(settled(0, 0, true));
  exchange(a, b, 1, 1, sa, sb);
  EXPECT_EQ(sa["rx0"], 0);  // one group, two interfaces: each datagram counts on its own link
  EXPECT_EQ(sb["rx0"], 0);

  // 2. Pair 1 down on A's side (B's end loses its carrier): A moves to pair 2, B stays.
  ASSERT_TRUE(sh("ip -n " + nsA_ + " link set dev ctA1 down"));
  ASSERT_TRUE(settled(1, 0, false)) << "A active " << sa["active"] << ", B up1 " << sb["up1"];
  const long long bPair1 = sb["rx1"], aPair1 = sa["rx0"];
  exchange(a, b, 1, 0, sa, sb);
  EXPECT_EQ(sb["rx1"], bPair1);  // nothing can cross the dead pair
  EXPECT_EQ(sa["rx0"], aPair1);
  EXPECT_EQ(sa["changes"], 1);
  EXPECT_EQ(sb["changes"], 0);

  // 3. Pair 1 back: A returns to it, the sockets on pair 1 were rebuilt on both sides.
  ASSERT_TRUE(sh("ip -n " + nsA_ + " link set dev ctA1 up"));
  ASSERT_TRUE(linkLocalReady(1));
  ASSERT_TRUE(settled(0, 0, true));
  exchange(a, b, 1, 1, sa, sb);
  EXPECT_EQ(sa["changes"], 2);
  EXPECT_GE(sa["reopens0"], 1);
  EXPECT_GE(sb["reopens1"], 1);

  // 4. Pair 1 deleted and created anew (new interface indexes, memberships gone), then pair 2
  //    down so that both nodes must use the new pair 1, sending and receiving.
  ASSERT_TRUE(sh("ip -n " + nsA_ + " link del ctA1"));
  ASSERT_TRUE(settled(1, 0, false));
  ASSERT_TRUE(makePair(1));
  ASSERT_TRUE(sh("ip -n " + nsB_ + " link set dev ctB2 down"));
  ASSERT_TRUE(settled(0, 1, true));
  exchange(a, b, 0, 1, sa, sb);

  EXPECT_EQ(sa["bad"], 0);
  EXPECT_EQ(sb["bad"], 0);
  EXPECT_TRUE(a.quit());
  EXPECT_TRUE(b.quit());
}

// A sync node (engine + channel) on its own thread, with its sockets in namespace `netns`
// (setns applies to the calling thread, and sockets stay in the namespace they were made in).
class Replicator {
 public:
  Replicator(const std::string& netns, uint16_t id, std::vector<LinkConfig> links) {
    std::promise<std::string> opened;
    auto result = opened.get_future();
    thread_ = std::thread([&, id] {
      const int fd = ::open(("/run/netns/" + netns).c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0 || ::setns(fd, CLONE_NEWNET) != 0) {
        opened.set_value(std::string("setns: ") + std::strerror(errno));
        return;
      }
      ::close(fd);
      EngineSettings s;
      s.clusterId = 0x77;
      s.node = id;
      s.bootEpoch = 1000 + id;
      s.wallClockOffset = replication::Node::wallClockOffset();
      std::array<uint8_t, kKeySize> k{};
      k.fill(0x33);
      ChannelOptions options;
      options.probeInterval = 20ms;
      auto n = replication::Node::open(io_, s, Key::fromBytes(k), std::move(links), options);
      if (auto* e = std::get_if<std::string>(&n)) {
        opened.set_value(*e);
        return;
      }
      node_ = std::move(std::get<std::unique_ptr<replication::Node>>(n));
      opened.set_value("");
      io_.run_for(60s);  // bounded even if the test hangs
      node_.reset();
    });
    error_ = result.get();
  }
  ~Replicator() {
    guard_.reset();
    io_.stop();
    thread_.join();
  }
  const std::string& error() const { return error_; }

  template <typename F>
  std::invoke_result_t<F, replication::Node&> call(F f) {
    std::promise<std::invoke_result_t<F, replication::Node&>> p;
    auto fut = p.get_future();
    asio::post(io_, [&] { p.set_value(f(*node_)); });
    return fut.get();
  }

 private:
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_ = asio::make_work_guard(io_);
  std::unique_ptr<replication::Node> node_;
  std::thread thread_;
  std::string error_;
};

FlowRecord netnsFlow(uint32_t i) {
  FlowRecord f;
  f.key.orig.l3 = table::L3::kIpv4;
  f.key.orig.l4 = table::proto::kTcp;
  f.key.orig.src = table::Addr::v4(0x0a630000u + i);
  f.key.orig.dst = table::Addr::v4(0xc6336401u);
  f.key.orig.sport = static_cast<uint16_t>(30000 + i % 20000);
  f.key.orig.dport = 443;
  f.reply = *table::invertTuple(f.key.orig);
  f.reply.dst = table::Addr::v4(0xcb007101u);
  f.reply.dport = static_cast<uint16_t>(1024 + i);
  f.status = table::status::kConfirmed | table::status::kSrcNat;
  f.tcpState = 3;
  f.timeoutSec = 3600;
  return f;
}

// The daemon's replication over real multicast: flows written on A reach B's replica, field by
// field, before and after A's first link goes down.
TEST_P(NetnsMulticast, ReplicatorsConvergeAndSurviveALinkFailure) {
  Replicator a(nsA_, 1, {link("ctA1"), link("ctA2")});
  ASSERT_EQ(a.error(), "");
  Replicator b(nsB_, 2, {link("ctB2"), link("ctB1")});
  ASSERT_EQ(b.error(), "");
  auto converged = [&](size_t flows) {
    return waitFor(
        [&] {
          if (b.call([](replication::Node& n) { return n.engine().replica().size(); }) != flows) {
            return false;
          }
          return a.call([](replication::Node& n) {
            return n.engine().idle(replication::Node::monotonicNow());
          });
        },
        5s);
  };
  a.call([](replication::Node& n) {
    for (uint32_t i = 0; i < 2000; ++i) n.upsert(netnsFlow(i));
    return 0;
  });
  ASSERT_TRUE(converged(2000));

  ASSERT_TRUE(sh("ip -n " + nsA_ + " link set dev ctA1 down"));
  ASSERT_TRUE(waitFor(
      [&] {
        return a.call([](replication::Node& n) {
          return n.channel().activeLink() == std::optional<size_t>(1);
        });
      },
      3s));
  a.call([](replication::Node& n) {
    for (uint32_t i = 2000; i < 3000; ++i) n.upsert(netnsFlow(i));
    n.remove(netnsFlow(5).key);
    return 0;
  });
  ASSERT_TRUE(converged(2999));
  const auto locals = a.call([](replication::Node& n) {
    std::vector<FlowRecord> out;
    n.engine().forEachLocal([&](const FlowRecord& f) { out.push_back(f); });
    return out;
  });
  ASSERT_EQ(locals.size(), 2999u);
  const size_t same = b.call([&](replication::Node& n) {
    size_t k = 0;
    for (const FlowRecord& f : locals) {
      const auto got = n.engine().replica().get(f.key);
      k += got && got->record == f;
    }
    return k;
  });
  EXPECT_EQ(same, locals.size());
  const auto drops = b.call([](replication::Node& n) { return n.engine().counters().authDrops; });
  for (const uint64_t d : drops) EXPECT_EQ(d, 0u);
}

INSTANTIATE_TEST_SUITE_P(Groups, NetnsMulticast,
                         ::testing::Values(Family{"v4", "239.255.77.1", 47701, false},
                                           Family{"v6", "ff02::c75:1", 47702, true}),
                         [](const auto& p) { return std::string(p.param.name); });

}  // namespace
}  // namespace ctsync::replication
