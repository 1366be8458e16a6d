// NAT on the tracker: rule matching, mappings as the kernel makes them, packets rewritten with
// correct checksums (checked by a full recomputation written in the tests).
#include "table/nat.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "table/format.hpp"
#include "table/tracker.hpp"
#include "tests/support/checksum_check.hpp"
#include "tests/support/packet_builder.hpp"

namespace ctsync::table {
namespace {

using namespace ctsync::testing;

constexpr Nanos kT0 = seconds(1'700'000'000);
const uint32_t kClient = v4(10, 0, 0, 2);
const uint32_t kClient2 = v4(10, 0, 0, 3);
const uint32_t kWan = v4(192, 0, 2, 1);
const uint32_t kServer = v4(198, 51, 100, 10);
const uint32_t kServer2 = v4(198, 51, 100, 11);
const uint32_t kRouter = v4(198, 51, 100, 254);
const Addr6 kClient6 = v6(2, 1);
const Addr6 kWan6 = v6(1, 9);
const Addr6 kServer6 = v6(0x10, 2);

Addr a4(uint32_t v) {
  return Addr::v4(v);
}
Addr a6(const Addr6& v) {
  return Addr::fromBytes(v.b, 16);
}

class FakeAddresses : public InterfaceAddresses {
 public:
  std::optional<Addr> addressOf(std::string_view iface, L3 l3) const override {
    const auto it = map.find({std::string(iface), l3});
    if (it == map.end()) return std::nullopt;
    return it->second;
  }
  std::map<std::pair<std::string, L3>, Addr> map;
};

NatRule masquerade(std::optional<uint8_t> protocol = std::nullopt) {
  NatRule r;
  r.type = NatType::kMasquerade;
  r.outInterface = "wan0";
  r.protocol = protocol;
  return r;
}
NatRule snatTo(uint32_t lo, uint32_t hi) {
  NatRule r;
  r.type = NatType::kSnat;
  r.family = L3::kIpv4;
  r.toAddress = AddrRange{L3::kIpv4, a4(lo), a4(hi)};
  return r;
}
NatRule dnatTo(uint32_t addr, std::optional<PortRange> port, uint16_t dport) {
  NatRule r;
  r.type = NatType::kDnat;
  r.family = L3::kIpv4;
  r.protocol = proto::kTcp;
  r.dport = PortRange{dport, dport};
  r.inInterface = "wan0";
  r.toAddress = AddrRange{L3::kIpv4, a4(addr), a4(addr)};
  r.toPort = port;
  return r;
}

struct Ev {
  EventType type;
  std::string line;
};

class Log : public EventSink {
 public:
  void onEvent(EventType type, uint32_t mask, const ConnTable& t, uint32_t index,
               Nanos now) override {
    if (type == EventType::kRefresh) return;
    events.push_back({type, formatEvent(type, mask, t, index, now)});
  }
  std::vector<Ev> events;
};

// A firewall with an inside interface lan0 (10.0.0.1, fd00:0:1::1) and an outside one wan0
// (192.0.2.1, fd00:0:9::1).
class NatTest : public ::testing::Test {
 protected:
  void start(std::vector<NatRule> rules, TrackerSettings s = {}) {
    addresses_.map[{"wan0", L3::kIpv4}] = a4(kWan);
    addresses_.map[{"wan0", L3::kIpv6}] = a6(kWan6);
    addresses_.map[{"lan0", L3::kIpv4}] = a4(v4(10, 0, 0, 1));
    s.nat.rules = std::move(rules);
    tracker_ = std::make_unique<Tracker>(s, 42, &addresses_);
    tracker_->setEventSink(&log_);
  }
  // A packet from the inside (arrives on lan0, leaves on wan0) and from the outside.
  Verdict out(std::vector<uint8_t>& p, Nanos at = kT0) {
    PacketContext c{"lan0", "wan0", 0};
    return tracker_->process(p.data(), p.size(), at, c);
  }
  Verdict in(std::vector<uint8_t>& p, Nanos at = kT0) {
    PacketContext c{"wan0", "lan0", 0};
    return tracker_->process(p.data(), p.size(), at, c);
  }
  Tuple tupleOf(const std::vector<uint8_t>& p) {
    const ParseResult r = parseIp(p.data(), p.size(), ParseOptions{});
    EXPECT_EQ(r.kind, ParseKind::kPacket) << invalidReasonName(r.reason);
    return r.packet.tuple;
  }
  const Entry& entry(const Verdict& v) { return tracker_->table().entry(v.index); }
  Tuple reply(const Verdict& v) { return tracker_->table().tuple(entry(v), Dir::kReply); }
  std::string line(const Verdict& v) { return formatEntry(tracker_->table(), v.index, kT0); }

  FakeAddresses addresses_;
  Log log_;
  std::unique_ptr<Tracker> tracker_;
};

// --- rules ------------------------------------------------------------------------------------

TEST(NatRules, PrefixAndInterfacePatterns) {
  Prefix p{L3::kIpv4, a4(v4(10, 1, 0, 0)), 16};
  EXPECT_TRUE(p.contains(L3::kIpv4, a4(v4(10, 1, 200, 3))));
  EXPECT_FALSE(p.contains(L3::kIpv4, a4(v4(10, 2, 0, 1))));
  EXPECT_FALSE(p.contains(L3::kIpv6, a4(v4(10, 1, 0, 1))));
  Prefix odd{L3::kIpv4, a4(v4(10, 0, 0, 128)), 25};
  EXPECT_TRUE(odd.contains(L3::kIpv4, a4(v4(10, 0, 0, 200))));
  EXPECT_FALSE(odd.contains(L3::kIpv4, a4(v4(10, 0, 0, 127))));
  Prefix all{L3::kIpv6, Addr{}, 0};
  EXPECT_TRUE(all.contains(L3::kIpv6, a6(kServer6)));
  EXPECT_TRUE(interfaceMatches("", "anything"));
  EXPECT_TRUE(interfaceMatches("eth*", "eth12"));
  EXPECT_TRUE(interfaceMatches("eth*", "eth"));
  EXPECT_FALSE(interfaceMatches("eth*", "wlan0"));
  EXPECT_TRUE(interfaceMatches("eth0", "eth0"));
  EXPECT_FALSE(interfaceMatches("eth0", "eth01"));
}

TEST_F(NatTest, MasqueradeKeepsThePortAndRewritesBothDirections) {
  start({masquerade()});
  auto syn = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0});
  const Verdict v = out(syn);
  ASSERT_EQ(v.state, CtState::kNew);
  EXPECT_TRUE(v.rewritten);
  const Tuple t = tupleOf(syn);
  EXPECT_EQ(t.src, a4(kWan));
  EXPECT_EQ(t.sport, 40000);  // port preservation
  EXPECT_EQ(t.dst, a4(kServer));
  EXPECT_EQ(checksumProblems(syn), "");
  const Entry& e = entry(v);
  EXPECT_EQ(e.status & (status::kSrcNat | status::kDstNat), status::kSrcNat);
  EXPECT_EQ(e.status & (status::kSrcNatDone | status::kDstNatDone),
            status::kSrcNatDone | status::kDstNatDone);
  EXPECT_EQ(line(v),
            "ipv4     2 tcp      6 120 SYN_SENT src=10.0.0.2 dst=198.51.100.10 sport=40000 "
            "dport=80 [UNREPLIED] src=198.51.100.10 dst=192.0.2.1 sport=80 dport=40000 mark=0 "
            "use=1");
  EXPECT_NE(formatEntryJson(tracker_->table(), v.index, kT0)
                .find("\"flags\":[\"confirmed\",\"src_nat\",\"src_nat_done\",\"dst_nat_done\"]"),
            std::string::npos)
      << formatEntryJson(tracker_->table(), v.index, kT0);
  // The reply comes back to the masquerade address and leaves for the client.
  auto synack = ipv4Tcp(kServer, kWan, 80, 40000, {tcpf::kSyn | tcpf::kAck, 7000, 1001});
  const Verdict r = in(synack);
  EXPECT_EQ(r.state, CtState::kEstablished);
  EXPECT_EQ(r.dir, Dir::kReply);
  EXPECT_TRUE(r.rewritten);
  EXPECT_EQ(tupleOf(synack).dst, a4(kClient));
  EXPECT_EQ(tupleOf(synack).dport, 40000);
  EXPECT_EQ(checksumProblems(synack), "");
  auto ack = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kAck, 1001, 7001});
  EXPECT_EQ(out(ack).state, CtState::kEstablished);
  EXPECT_EQ(checksumProblems(ack), "");
  EXPECT_EQ(tracker_->table().counters().inserted, 1u);
  EXPECT_EQ(tracker_->natCounters().srcMapped, 1u);
}

TEST_F(NatTest, UnmatchedFlowsGetOnlyTheDoneBits) {
  NatRule r = masquerade(proto::kUdp);
  start({r});
  auto syn = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0});
  const auto before = syn;
  const Verdict v = out(syn);
  EXPECT_FALSE(v.rewritten);
  EXPECT_EQ(syn, before);
  EXPECT_EQ(entry(v).status & (status::kSrcNat | status::kDstNat), 0u);
  EXPECT_EQ(entry(v).status & (status::kSrcNatDone | status::kDstNatDone),
            status::kSrcNatDone | status::kDstNatDone);
}

TEST_F(NatTest, WithoutRulesNoNatBitsAtAll) {
  start({});
  auto syn = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0});
  const Verdict v = out(syn);
  EXPECT_EQ(entry(v).status & (status::kSrcNatDone | status::kDstNatDone), 0u);
}

TEST_F(NatTest, EveryMatchFieldIsChecked) {
  struct Case {
    const char* what;
    NatRule rule;
    bool matches;
  };
  auto base = [] { return masquerade(); };
  std::vector<Case> cases;
  cases.push_back({"plain", base(), true});
  {
    NatRule r = base();
    r.family = L3::kIpv6;
    cases.push_back({"family", r, false});
  }
  {
    NatRule r = base();
    r.protocol = proto::kUdp;
    cases.push_back({"protocol", r, false});
  }
  {
    NatRule r = base();
    r.source = Prefix{L3::kIpv4, a4(v4(10, 0, 0, 0)), 24};
    cases.push_back({"source in", r, true});
    r.source = Prefix{L3::kIpv4, a4(v4(10, 9, 0, 0)), 16};
    cases.push_back({"source out", r, false});
  }
  {
    NatRule r = base();
    r.destination = Prefix{L3::kIpv4, a4(kServer), 32};
    cases.push_back({"destination in", r, true});
    r.destination = Prefix{L3::kIpv4, a4(kServer2), 32};
    cases.push_back({"destination out", r, false});
  }
  {
    NatRule r = base();
    r.protocol = proto::kTcp;
    r.sport = PortRange{40000, 40010};
    cases.push_back({"sport in", r, true});
    r.sport = PortRange{1, 1024};
    cases.push_back({"sport out", r, false});
  }
  {
    NatRule r = base();
    r.protocol = proto::kTcp;
    r.dport = PortRange{80, 80};
    cases.push_back({"dport in", r, true});
    r.dport = PortRange{443, 443};
    cases.push_back({"dport out", r, false});
  }
  {
    NatRule r = base();
    r.inInterface = "lan*";
    cases.push_back({"in_interface wildcard", r, true});
    r.inInterface = "wan0";
    cases.push_back({"in_interface other", r, false});
  }
  {
    NatRule r = base();
    r.outInterface = "wan1";
    cases.push_back({"out_interface other", r, false});
  }
  {
    NatRule r = base();
    r.zone = 7;
    cases.push_back({"zone", r, false});
  }
  for (const Case& c : cases) {
    start({c.rule});
    auto syn = ipv4Tcp(kClient, kServer, 40005, 80, {tcpf::kSyn, 1000, 0});
    const Verdict v = out(syn);
    ASSERT_EQ(v.state, CtState::kNew) << c.what;
    EXPECT_EQ((entry(v).status & status::kSrcNat) != 0, c.matches) << c.what;
    EXPECT_EQ(tupleOf(syn).src == a4(kWan), c.matches) << c.what;
  }
}

TEST_F(NatTest, FirstMatchWins) {
  NatRule first = snatTo(v4(192, 0, 2, 50), v4(192, 0, 2, 50));
  first.protocol = proto::kTcp;
  NatRule second = snatTo(v4(192, 0, 2, 60), v4(192, 0, 2, 60));
  start({first, second});
  auto syn = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0});
  out(syn);
  EXPECT_EQ(tupleOf(syn).src, a4(v4(192, 0, 2, 50)));
  auto udp = ipv4Udp(kClient, kServer, 5000, 53);
  out(udp);
  EXPECT_EQ(tupleOf(udp).src, a4(v4(192, 0, 2, 60)));
}

TEST_F(NatTest, ZoneIsMatchedAndKeysTheMapping) {
  NatRule r = masquerade();
  r.zone = 5;
  start({r});
  auto a = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0});
  PacketContext z5{"lan0", "wan0", 5};
  const Verdict v = tracker_->process(a.data(), a.size(), kT0, z5);
  EXPECT_EQ(entry(v).zone, 5);
  EXPECT_EQ(tupleOf(a).src, a4(kWan));
  auto b = ipv4Tcp(kClient2, kServer, 40000, 80, {tcpf::kSyn, 1000, 0});
  out(b);  // zone 0: the rule does not apply
  EXPECT_EQ(tupleOf(b).src, a4(kClient2));
}

// --- mappings ---------------------------------------------------------------------------------

TEST_F(NatTest, TwoInsideHostsWithTheSamePortGetUniqueMappings) {
  start({masquerade()});
  auto a = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0});
  auto b = ipv4Tcp(kClient2, kServer, 40000, 80, {tcpf::kSyn, 2000, 0});
  const Verdict va = out(a);
  const Verdict vb = out(b);
  ASSERT_EQ(vb.state, CtState::kNew);
  EXPECT_EQ(tupleOf(a).sport, 40000);
  const uint16_t mapped = tupleOf(b).sport;
  EXPECT_NE(mapped, 40000);
  EXPECT_GE(mapped, 1024);
  EXPECT_EQ(reply(vb).dport, mapped);
  EXPECT_EQ(checksumProblems(b), "");
  EXPECT_EQ(tracker_->natCounters().searches, 1u);
  // Each reply finds its own client.
  auto ra = ipv4Tcp(kServer, kWan, 80, 40000, {tcpf::kSyn | tcpf::kAck, 7000, 1001});
  auto rb = ipv4Tcp(kServer, kWan, 80, mapped, {tcpf::kSyn | tcpf::kAck, 8000, 2001});
  EXPECT_EQ(in(ra).index, va.index);
  EXPECT_EQ(in(rb).index, vb.index);
  EXPECT_EQ(tupleOf(ra).dst, a4(kClient));
  EXPECT_EQ(tupleOf(rb).dst, a4(kClient2));
  EXPECT_EQ(tupleOf(rb).dport, 40000);
}

TEST_F(NatTest, LowPortsStayInTheirConventionalRanges) {
  start({masquerade()});
  for (uint16_t port : {uint16_t{80}, uint16_t{700}}) {
    auto a = ipv4Udp(kClient, kServer, port, 53);
    auto b = ipv4Udp(kClient2, kServer, port, 53);
    out(a);
    out(b);
    const uint16_t m = tupleOf(b).sport;
    EXPECT_NE(m, port);
    if (port < 512) {
      EXPECT_GE(m, 1);
      EXPECT_LE(m, 511);
    } else {
      EXPECT_GE(m, 600);
      EXPECT_LE(m, 1023);
    }
  }
}

TEST_F(NatTest, SnatToAPortRangeKeepsAPortInsideItAndMapsOthersIntoIt) {
  NatRule r = snatTo(kWan, kWan);
  r.protocol = proto::kUdp;
  r.toPort = PortRange{10000, 10009};
  start({r});
  auto inside = ipv4Udp(kClient, kServer, 10005, 53);
  out(inside);
  EXPECT_EQ(tupleOf(inside).sport, 10005);
  std::set<uint16_t> seen{10005};
  for (uint16_t p = 20000; p < 20009; ++p) {
    auto u = ipv4Udp(kClient, kServer, p, 53);
    ASSERT_EQ(out(u).state, CtState::kNew);
    const uint16_t m = tupleOf(u).sport;
    EXPECT_GE(m, 10000);
    EXPECT_LE(m, 10009);
    EXPECT_TRUE(seen.insert(m).second) << "port " << m << " handed out twice";
  }
  // All ten are used: the next flow cannot be mapped and is dropped, without a long search.
  auto extra = ipv4Udp(kClient, kServer, 30000, 53);
  const auto before = extra;
  const Verdict v = out(extra);
  EXPECT_EQ(v.state, CtState::kInvalid);
  EXPECT_EQ(v.reason, InvalidReason::kNatExhausted);
  EXPECT_EQ(extra, before);
  EXPECT_EQ(tracker_->table().size(), 10u);
  EXPECT_EQ(tracker_->natCounters().exhausted, 1u);
  EXPECT_EQ(tracker_->counters().invalid[static_cast<size_t>(InvalidReason::kNatExhausted)], 1u);
  EXPECT_EQ(log_.events.size(), 10u);  // no NEW for the dropped flow
}

TEST_F(NatTest, ExhaustionIsFoundWithinTheKernelsAttemptBudget) {
  // One address, 300 ports, all taken: a new flow tries at most 128 + 64 + 32 + 16 + 8.
  NatRule r = snatTo(kWan, kWan);
  r.protocol = proto::kUdp;
  r.toPort = PortRange{2000, 2299};
  start({r});
  for (uint16_t i = 0; i < 300; ++i) {
    auto u = ipv4Udp(kClient, kServer, static_cast<uint16_t>(2000 + i), 53);
    ASSERT_EQ(out(u).state, CtState::kNew);
  }
  const uint64_t before = tracker_->natCounters().attempts;
  auto extra = ipv4Udp(kClient, kServer, 9999, 53);
  EXPECT_EQ(out(extra).reason, InvalidReason::kNatExhausted);
  EXPECT_LE(tracker_->natCounters().attempts - before, 248u);
  EXPECT_GE(tracker_->natCounters().attempts - before, 128u);
}

TEST_F(NatTest, AddressRangeChoiceIsStableAndPersistentIgnoresTheDestination) {
  for (const bool persistent : {false, true}) {
    NatRule r = snatTo(v4(192, 0, 2, 100), v4(192, 0, 2, 107));
    if (persistent) r.flags = natflag::kPersistent;
    start({r});
    std::set<Addr, decltype([](const Addr& x, const Addr& y) { return x.bytes < y.bytes; })> used;
    for (uint32_t d = 0; d < 16; ++d) {
      // A new source port each time: one source port would reuse its first mapping (by-source).
      auto u = ipv4Udp(kClient, v4(198, 51, 100, static_cast<uint8_t>(d + 1)),
                       static_cast<uint16_t>(5000 + d), 53);
      out(u);
      const Addr got = tupleOf(u).src;
      EXPECT_GE(got.v4HostOrder(), v4(192, 0, 2, 100));
      EXPECT_LE(got.v4HostOrder(), v4(192, 0, 2, 107));
      used.insert(got);
    }
    if (persistent) {
      EXPECT_EQ(used.size(), 1u);  // the same address whatever the destination
    } else {
      EXPECT_GT(used.size(), 1u);  // spread by destination
    }
  }
}

TEST_F(NatTest, ARangeChoiceDependsOnlyOnTheAddressesNotOnTheTable) {
  // Two trackers with different seeds and histories pick the same address for a flow.
  NatRule r = snatTo(v4(192, 0, 2, 100), v4(192, 0, 2, 199));
  start({r});
  auto a = ipv4Udp(kClient, kServer, 5000, 53);
  out(a);
  TrackerSettings s;
  s.nat.rules = {r};
  Tracker other(s, 99999, &addresses_);
  for (uint16_t i = 0; i < 50; ++i) {
    auto noise = ipv4Udp(kClient2, kServer2, static_cast<uint16_t>(7000 + i), 53);
    other.process(noise.data(), noise.size(), kT0, PacketContext{"lan0", "wan0", 0});
  }
  auto b = ipv4Udp(kClient, kServer, 5000, 53);
  other.process(b.data(), b.size(), kT0, PacketContext{"lan0", "wan0", 0});
  EXPECT_EQ(tupleOf(a).src, tupleOf(b).src);
}

TEST(NatHash, AddressChoiceInARangeIsTheKernels) {
  // What Linux 6.18 chose (tests/diff nat_snat_addr_range and nat6_snat_addr_range, recorded
  // with conntrack -L): SNAT to 10.231.2.10-13 / fd00:231:2::10-13, flows to one server.
  struct Case {
    L3 l3;
    const char* src;
    uint16_t sport;
    const char* expect;
  };
  const Case cases[] = {
      {L3::kIpv4, "10.231.1.2", 50000, "10.231.2.10"},
      {L3::kIpv4, "10.231.1.3", 50001, "10.231.2.12"},
      {L3::kIpv4, "10.231.1.4", 50002, "10.231.2.11"},
      {L3::kIpv6, "fd00:231:1::2", 50000, "fd00:231:2::12"},
      {L3::kIpv6, "fd00:231:1::3", 50001, "fd00:231:2::12"},
      {L3::kIpv6, "fd00:231:1::4", 50002, "fd00:231:2::10"},
  };
  auto parse = [](L3 l3, const char* text) {
    Addr a;
    inet_pton(l3 == L3::kIpv4 ? AF_INET : AF_INET6, text, a.bytes.data());
    return a;
  };
  for (const Case& c : cases) {
    NatRule r;
    r.type = NatType::kSnat;
    r.family = c.l3;
    r.toAddress =
        c.l3 == L3::kIpv4
            ? AddrRange{L3::kIpv4, parse(c.l3, "10.231.2.10"), parse(c.l3, "10.231.2.13")}
            : AddrRange{L3::kIpv6, parse(c.l3, "fd00:231:2::10"), parse(c.l3, "fd00:231:2::13")};
    TrackerSettings s;
    s.nat.rules = {r};
    Tracker t(s, 1);
    const Addr src = parse(c.l3, c.src);
    std::vector<uint8_t> p;
    if (c.l3 == L3::kIpv4) {
      p = ipv4Udp(src.v4HostOrder(), v4(10, 231, 2, 2), c.sport, 53);
    } else {
      Addr6 s6, d6;
      std::memcpy(s6.b, src.bytes.data(), 16);
      const Addr d = parse(c.l3, "fd00:231:2::2");
      std::memcpy(d6.b, d.bytes.data(), 16);
      p = ipv6Udp(s6, d6, c.sport, 53);
    }
    const Verdict v = t.process(p.data(), p.size(), kT0, PacketContext{"trkc", "trks", 0});
    ASSERT_EQ(v.state, CtState::kNew);
    const Tuple reply = t.table().tuple(t.table().entry(v.index), Dir::kReply);
    EXPECT_EQ(formatAddr(c.l3, reply.dst), c.expect) << c.src;
  }
}

TEST(NatHash, Jhash2IsLookup3Hashword) {
  // lookup3.c's own check values for empty input (initval only, no mixing).
  EXPECT_EQ(jhash2(nullptr, 0, 0), 0xdeadbeefu);
  EXPECT_EQ(jhash2(nullptr, 0, 0xdeadbeef), 0xbd5b7ddeu);
  // Determinism and sensitivity to every input word and the initial value.
  const uint32_t k[4] = {0x0100000a, 0, 0, 0};  // 10.0.0.1 as the kernel reads it on x86
  const uint32_t h = jhash2(k, 4, 0);
  EXPECT_EQ(h, jhash2(k, 4, 0));
  EXPECT_NE(h, jhash2(k, 4, 1));
  for (int w = 0; w < 4; ++w) {
    uint32_t k2[4] = {0x0100000a, 0, 0, 0};
    k2[w] ^= 0x80;
    EXPECT_NE(h, jhash2(k2, 4, 0)) << "word " << w;
  }
}

TEST_F(NatTest, RandomNeverKeepsTheOriginalPortEvenWhenFree) {
  for (const uint8_t flag : {natflag::kRandom, natflag::kFullyRandom}) {
    NatRule r = masquerade(proto::kUdp);
    r.flags = flag;
    start({r});
    int kept = 0;
    for (uint16_t i = 0; i < 20; ++i) {
      auto u = ipv4Udp(kClient, kServer, static_cast<uint16_t>(30000 + i), 53);
      out(u);
      const uint16_t m = tupleOf(u).sport;
      EXPECT_GE(m, 1024);
      kept += m == 30000 + i;
    }
    EXPECT_LT(kept, 2) << "flag " << int{flag};
  }
}

TEST_F(NatTest, BySourceIndexReusesTheMappingOfTheSameSource) {
  start({masquerade(proto::kUdp)});
  auto first = ipv4Udp(kClient, kServer, 5000, 53);
  out(first);  // keeps 5000
  auto other = ipv4Udp(kClient2, kServer, 5000, 53);
  out(other);
  const uint16_t moved = tupleOf(other).sport;
  ASSERT_NE(moved, 5000);
  EXPECT_EQ(tracker_->table().sourceIndexed(), 2u);
  // kClient2:5000 to another server: 5000 would be free there, but the existing mapping of
  // this source is reused (endpoint-independent mapping, as the kernel's bysource table).
  auto again = ipv4Udp(kClient2, kServer2, 5000, 53);
  out(again);
  EXPECT_EQ(tupleOf(again).sport, moved);
  EXPECT_EQ(tracker_->natCounters().searches, 1u);
  // The index forgets entries that die.
  tracker_->advance(kT0 + seconds(31));
  EXPECT_EQ(tracker_->table().size(), 0u);
  EXPECT_EQ(tracker_->table().sourceIndexed(), 0u);
  auto later = ipv4Udp(kClient2, kServer2, 5000, 53);
  out(later, kT0 + seconds(32));
  EXPECT_EQ(tupleOf(later).sport, 5000);
}

TEST_F(NatTest, ClosingEntryIsEvictedForANewSynWhoseSequenceHasAdvanced) {
  NatRule r = snatTo(kWan, kWan);
  r.protocol = proto::kTcp;
  r.toPort = PortRange{10000, 10001};
  start({r});
  // Two connections fill both ports and close into TIME_WAIT.
  for (uint16_t i = 0; i < 2; ++i) {
    const uint16_t sp = static_cast<uint16_t>(40000 + i);
    auto syn = ipv4Tcp(kClient, kServer, sp, 80, {tcpf::kSyn, 1000, 0});
    out(syn);
    const uint16_t m = tupleOf(syn).sport;
    auto sa = ipv4Tcp(kServer, kWan, 80, m, {tcpf::kSyn | tcpf::kAck, 5000, 1001});
    in(sa);
    auto ack = ipv4Tcp(kClient, kServer, sp, 80, {tcpf::kAck, 1001, 5001});
    out(ack);
    auto fin = ipv4Tcp(kClient, kServer, sp, 80, {tcpf::kFin | tcpf::kAck, 1001, 5001});
    out(fin);
    auto fin2 = ipv4Tcp(kServer, kWan, 80, m, {tcpf::kFin | tcpf::kAck, 5001, 1002});
    in(fin2);
    auto last = ipv4Tcp(kClient, kServer, sp, 80, {tcpf::kAck, 1002, 5002});
    out(last);
  }
  ASSERT_EQ(tracker_->table().size(), 2u);
  // A SYN whose sequence is below the old one's may not take the mapping.
  auto low = ipv4Tcp(kClient2, kServer, 50000, 80, {tcpf::kSyn, 500, 0});
  EXPECT_EQ(out(low).reason, InvalidReason::kNatExhausted);
  // One above it evicts a closing entry and reuses its port.
  const size_t events = log_.events.size();
  auto high = ipv4Tcp(kClient2, kServer, 50000, 80, {tcpf::kSyn, 90000, 0});
  const Verdict v = out(high);
  ASSERT_EQ(v.state, CtState::kNew);
  EXPECT_EQ(tracker_->natCounters().timeWaitReused, 1u);
  ASSERT_EQ(log_.events.size(), events + 2);
  EXPECT_EQ(log_.events[events].type, EventType::kDestroy);
  EXPECT_EQ(log_.events[events + 1].type, EventType::kNew);
  EXPECT_EQ(tracker_->table().size(), 2u);
}

TEST_F(NatTest, AFlowWhoseReplyCollidesWithAMappingGetsANewPortFromTheNullBinding) {
  start({masquerade(proto::kUdp)});
  auto a = ipv4Udp(kClient, kServer, 5000, 53);
  out(a);  // reply: 198.51.100.10:53 -> 192.0.2.1:5000
  // A packet from the masquerade address itself (a local flow, as in the kernel's example)
  // with the same source port: no rule for it, but its reply tuple is taken.
  auto local = ipv4Tcp(kWan, kServer, 5000, 53, {tcpf::kSyn, 1, 0});
  auto udpLocal = ipv4Udp(kWan, kServer, 5000, 53);
  PacketContext c{"lo", "wan0", 0};
  const Verdict v = tracker_->process(udpLocal.data(), udpLocal.size(), kT0, c);
  ASSERT_EQ(v.state, CtState::kNew);
  EXPECT_NE(tupleOf(udpLocal).sport, 5000);
  EXPECT_EQ(tupleOf(udpLocal).src, a4(kWan));
  EXPECT_TRUE(entry(v).status & status::kSrcNat);
  (void)local;
}

TEST_F(NatTest, MasqueradeWithoutAnAddressDropsTheFlow) {
  NatRule r = masquerade();
  r.outInterface = "wan*";
  start({r});
  auto syn = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0});
  PacketContext c{"lan0", "wan7", 0};
  const Verdict v = tracker_->process(syn.data(), syn.size(), kT0, c);
  EXPECT_EQ(v.state, CtState::kInvalid);
  EXPECT_EQ(v.reason, InvalidReason::kNatNoAddress);
  EXPECT_EQ(tracker_->table().size(), 0u);
}

TEST_F(NatTest, DnatPortForwardAndItsReplies) {
  start({dnatTo(kClient, PortRange{8080, 8080}, 443)});
  auto syn = ipv4Tcp(kServer, kWan, 33000, 443, {tcpf::kSyn, 1000, 0});
  const Verdict v = in(syn);
  ASSERT_EQ(v.state, CtState::kNew);
  EXPECT_EQ(tupleOf(syn).dst, a4(kClient));
  EXPECT_EQ(tupleOf(syn).dport, 8080);
  EXPECT_EQ(tupleOf(syn).src, a4(kServer));
  EXPECT_EQ(entry(v).status & (status::kSrcNat | status::kDstNat), status::kDstNat);
  EXPECT_EQ(checksumProblems(syn), "");
  EXPECT_EQ(line(v),
            "ipv4     2 tcp      6 120 SYN_SENT src=198.51.100.10 dst=192.0.2.1 sport=33000 "
            "dport=443 [UNREPLIED] src=10.0.0.2 dst=198.51.100.10 sport=8080 dport=33000 mark=0 "
            "use=1");
  auto sa = ipv4Tcp(kClient, kServer, 8080, 33000, {tcpf::kSyn | tcpf::kAck, 5000, 1001});
  EXPECT_EQ(out(sa).index, v.index);
  EXPECT_EQ(tupleOf(sa).src, a4(kWan));
  EXPECT_EQ(tupleOf(sa).sport, 443);
  EXPECT_EQ(checksumProblems(sa), "");
}

TEST_F(NatTest, DnatWithoutAPortKeepsTheDestinationPort) {
  start({dnatTo(kClient, std::nullopt, 443)});
  auto syn = ipv4Tcp(kServer, kWan, 33000, 443, {tcpf::kSyn, 1000, 0});
  in(syn);
  EXPECT_EQ(tupleOf(syn).dst, a4(kClient));
  EXPECT_EQ(tupleOf(syn).dport, 443);
}

TEST_F(NatTest, DnatToAPortRangeSearchesFromItsStart) {
  NatRule r = dnatTo(kClient, PortRange{9000, 9003}, 443);
  start({r});
  // One source port twice (two connections from the same client port to a range): the
  // destination search is deterministic from the range's start, as in the kernel.
  auto a = ipv4Tcp(kServer, kWan, 33000, 443, {tcpf::kSyn, 1000, 0});
  in(a);
  EXPECT_EQ(tupleOf(a).dport, 9000);
  auto b = ipv4Tcp(kServer, v4(192, 0, 2, 2), 33000, 443, {tcpf::kSyn, 1000, 0});
  NatRule wide = r;
  wide.destination.reset();
  start({wide});
  auto c = ipv4Tcp(kServer, kWan, 33000, 443, {tcpf::kSyn, 1000, 0});
  in(c);
  in(b);
  EXPECT_EQ(tupleOf(c).dport, 9000);
  EXPECT_EQ(tupleOf(b).dport, 9001);  // 9000 would give the same reply tuple
}

TEST_F(NatTest, RedirectGoesToTheInputInterfacesAddress) {
  NatRule r;
  r.type = NatType::kRedirect;
  r.protocol = proto::kTcp;
  r.dport = PortRange{80, 80};
  r.inInterface = "lan0";
  r.toPort = PortRange{3128, 3128};
  start({r});
  auto syn = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0});
  const Verdict v = out(syn);
  EXPECT_EQ(tupleOf(syn).dst, a4(v4(10, 0, 0, 1)));
  EXPECT_EQ(tupleOf(syn).dport, 3128);
  EXPECT_TRUE(entry(v).status & status::kDstNat);
}

TEST_F(NatTest, OneFlowThroughDnatAndSnat) {
  NatRule d = dnatTo(kServer2, PortRange{80, 80}, 8080);
  d.inInterface = "lan0";
  start({d, masquerade()});
  auto syn = ipv4Tcp(kClient, v4(203, 0, 113, 5), 40000, 8080, {tcpf::kSyn, 1000, 0});
  const Verdict v = out(syn);
  ASSERT_EQ(v.state, CtState::kNew);
  const Tuple t = tupleOf(syn);
  EXPECT_EQ(t.src, a4(kWan));
  EXPECT_EQ(t.dst, a4(kServer2));
  EXPECT_EQ(t.dport, 80);
  EXPECT_EQ(entry(v).status & (status::kSrcNat | status::kDstNat),
            status::kSrcNat | status::kDstNat);
  EXPECT_EQ(checksumProblems(syn), "");
  auto sa = ipv4Tcp(kServer2, kWan, 80, 40000, {tcpf::kSyn | tcpf::kAck, 5000, 1001});
  EXPECT_EQ(in(sa).index, v.index);
  EXPECT_EQ(tupleOf(sa).src, a4(v4(203, 0, 113, 5)));
  EXPECT_EQ(tupleOf(sa).sport, 8080);
  EXPECT_EQ(tupleOf(sa).dst, a4(kClient));
  EXPECT_EQ(checksumProblems(sa), "");
}

// --- ICMP ----------------------------------------------------------------------------------

TEST_F(NatTest, IcmpEchoIdsAreMappedLikePorts) {
  start({masquerade()});
  auto a = ipv4Icmp(kClient, kServer, 8, 0, 77);
  auto b = ipv4Icmp(kClient2, kServer, 8, 0, 77);
  out(a);
  const Verdict vb = out(b);
  EXPECT_EQ(tupleOf(a).sport, 77);  // the id is kept when free
  const uint16_t id = tupleOf(b).sport;
  EXPECT_NE(id, 77);
  EXPECT_EQ(checksumProblems(a), "");
  EXPECT_EQ(checksumProblems(b), "");
  auto reply = ipv4Icmp(kServer, kWan, 0, 0, id);
  EXPECT_EQ(in(reply).index, vb.index);
  EXPECT_EQ(tupleOf(reply).sport, 77);
  EXPECT_EQ(tupleOf(reply).dst, a4(kClient2));
  EXPECT_EQ(checksumProblems(reply), "");
}

TEST_F(NatTest, IcmpErrorFromOutsideAboutAMasqueradedFlow) {
  start({masquerade()});
  auto syn = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0});
  auto b = ipv4Tcp(kClient2, kServer, 40000, 80, {tcpf::kSyn, 1000, 0});
  out(syn);
  out(b);
  const uint16_t mapped = tupleOf(b).sport;
  // A router beyond the firewall reports the translated packet (quoted whole) unreachable.
  auto err = ipv4Icmp(kRouter, kWan, 3, 1, 0, 0, b);
  const Verdict v = in(err);
  ASSERT_EQ(v.state, CtState::kRelated);
  EXPECT_EQ(v.dir, Dir::kReply);
  EXPECT_TRUE(v.rewritten);
  EXPECT_EQ(checksumProblems(err), "");
  const ParseResult r = parseIp(err.data(), err.size(), ParseOptions{});
  ASSERT_EQ(r.kind, ParseKind::kPacket);
  EXPECT_EQ(r.packet.tuple.src, a4(kRouter));  // the router stays the sender
  EXPECT_EQ(r.packet.tuple.dst, a4(kClient2));
  EXPECT_EQ(r.packet.inner.src, a4(kClient2));
  EXPECT_EQ(r.packet.inner.sport, 40000);
  EXPECT_EQ(r.packet.inner.dst, a4(kServer));
  (void)mapped;
}

TEST_F(NatTest, IcmpErrorFromInsideAboutAReplyPacket) {
  start({masquerade()});
  auto syn = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0});
  out(syn);
  auto sa = ipv4Tcp(kServer, kWan, 80, 40000, {tcpf::kSyn | tcpf::kAck, 5000, 1001});
  in(sa);  // now addressed to the client
  // An inside router reports the de-NATed reply; the error travels in the original direction.
  auto err = ipv4Icmp(v4(10, 0, 0, 254), kServer, 11, 0, 0, 0, sa);
  const Verdict v = out(err);
  ASSERT_EQ(v.state, CtState::kRelated);
  EXPECT_EQ(v.dir, Dir::kOriginal);
  EXPECT_EQ(checksumProblems(err), "");
  const ParseResult r = parseIp(err.data(), err.size(), ParseOptions{});
  ASSERT_EQ(r.kind, ParseKind::kPacket);
  EXPECT_EQ(r.packet.tuple.src, a4(kWan));  // the outer source made to look like the flow's
  EXPECT_EQ(r.packet.tuple.dst, a4(kServer));
  EXPECT_EQ(r.packet.inner.src, a4(kServer));
  EXPECT_EQ(r.packet.inner.dst, a4(kWan));
  EXPECT_EQ(r.packet.inner.dport, 40000);
}

TEST_F(NatTest, IcmpErrorWithATruncatedQuoteKeepsItsInnerChecksumUntouched) {
  start({masquerade(proto::kUdp)});
  auto u = ipv4Udp(kClient, kServer, 5000, 53, 100);
  auto u2 = ipv4Udp(kClient2, kServer, 5000, 53, 100);
  out(u);
  out(u2);
  std::vector<uint8_t> quote(u2.begin(), u2.begin() + 28);  // IP header and UDP header only
  auto err = ipv4Icmp(kRouter, kWan, 3, 3, 0, 0, quote);
  ASSERT_EQ(in(err).state, CtState::kRelated);
  EXPECT_EQ(checksumProblems(err), "");  // outer, ICMP and the embedded IP header
  const ParseResult r = parseIp(err.data(), err.size(), ParseOptions{});
  EXPECT_EQ(r.packet.inner.src, a4(kClient2));
  EXPECT_EQ(r.packet.inner.sport, 5000);
}

TEST_F(NatTest, IcmpRedirectAboutANatedFlowIsDropped) {
  start({masquerade()});
  auto syn = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0});
  out(syn);
  auto redirect = ipv4Icmp(kRouter, kWan, 5, 1, 0, 0, syn);
  const Verdict v = in(redirect);
  EXPECT_EQ(v.state, CtState::kInvalid);
  EXPECT_EQ(v.reason, InvalidReason::kNatIcmpRedirect);
}

// --- IPv6 (NAT66) ------------------------------------------------------------------------------

TEST_F(NatTest, Nat66MasqueradeTcpEchoAndErrors) {
  start({masquerade()});
  auto syn = ipv6Tcp(kClient6, kServer6, 40000, 80, {tcpf::kSyn, 1000, 0});
  const Verdict v = out(syn);
  ASSERT_EQ(v.state, CtState::kNew);
  EXPECT_EQ(tupleOf(syn).src, a6(kWan6));
  EXPECT_EQ(checksumProblems(syn), "");
  auto sa = ipv6Tcp(kServer6, kWan6, 80, 40000, {tcpf::kSyn | tcpf::kAck, 5000, 1001});
  EXPECT_EQ(in(sa).index, v.index);
  EXPECT_EQ(tupleOf(sa).dst, a6(kClient6));
  EXPECT_EQ(checksumProblems(sa), "");

  auto echo = ipv6Icmp(kClient6, kServer6, 128, 0, 9);
  out(echo);
  EXPECT_EQ(tupleOf(echo).src, a6(kWan6));
  EXPECT_EQ(checksumProblems(echo), "");
  auto pong = ipv6Icmp(kServer6, kWan6, 129, 0, 9);
  in(pong);
  EXPECT_EQ(tupleOf(pong).dst, a6(kClient6));
  EXPECT_EQ(checksumProblems(pong), "");

  auto u = ipv6Udp(kClient6, kServer6, 5000, 53);
  out(u);
  auto err = ipv6Icmp(v6(0xfe, 2), kWan6, 1, 4, 0, 0, u);
  const Verdict ve = in(err);
  ASSERT_EQ(ve.state, CtState::kRelated);
  EXPECT_EQ(checksumProblems(err), "");
  const ParseResult r = parseIp(err.data(), err.size(), ParseOptions{});
  EXPECT_EQ(r.packet.tuple.dst, a6(kClient6));
  EXPECT_EQ(r.packet.inner.src, a6(kClient6));
}

TEST_F(NatTest, Nat66SnatToAnAddressRange) {
  NatRule r;
  r.type = NatType::kSnat;
  r.family = L3::kIpv6;
  r.toAddress = AddrRange{L3::kIpv6, a6(v6(0x100, 9)), a6(v6(0x1ff, 9))};
  start({r});
  auto u = ipv6Udp(kClient6, kServer6, 5000, 53);
  out(u);
  const Addr got = tupleOf(u).src;
  EXPECT_GE(got.bytes, r.toAddress->min.bytes);
  EXPECT_LE(got.bytes, r.toAddress->max.bytes);
  EXPECT_EQ(checksumProblems(u), "");
}

// --- checksums ----------------------------------------------------------------------------------

TEST_F(NatTest, ZeroUdpChecksumStaysZero) {
  start({masquerade()});
  auto u = ipv4Udp(kClient, kServer, 5000, 53);
  u[26] = u[27] = 0;  // "no checksum"
  out(u);
  EXPECT_EQ(tupleOf(u).src, a4(kWan));
  EXPECT_EQ(u[26], 0);
  EXPECT_EQ(u[27], 0);
  EXPECT_EQ(checksumProblems(u), "");
}

TEST_F(NatTest, UdpChecksumThatWouldBecomeZeroIsSentAsAllOnes) {
  // Find a payload whose translated datagram sums to a zero checksum: UDP must then carry
  // 0xffff, as zero means "none".
  std::vector<uint8_t> found;
  for (uint32_t v = 0; v < 65536 && found.empty(); ++v) {
    auto candidate = ipv4Udp(kWan, kServer, 5000, 53, 2);
    candidate[28] = static_cast<uint8_t>(v >> 8);
    candidate[29] = static_cast<uint8_t>(v);
    candidate[26] = candidate[27] = 0;
    uint32_t acc = sum16(&candidate[12], 8) + 17 + 10;
    if (fold(sum16(&candidate[20], 10, acc)) == 0) found = candidate;
  }
  ASSERT_FALSE(found.empty());
  start({masquerade()});
  auto u = ipv4Udp(kClient, kServer, 5000, 53, 2);
  u[28] = found[28];
  u[29] = found[29];
  put16(&u[26], 0);
  put16(&u[26], fold(sum16(&u[20], 10, sum16(&u[12], 8) + 17 + 10)));
  ASSERT_EQ(checksumProblems(u), "");
  out(u);
  EXPECT_EQ(u[26], 0xff);
  EXPECT_EQ(u[27], 0xff);
  EXPECT_EQ(checksumProblems(u), "");
}

TEST_F(NatTest, UdpLiteAndGenericProtocols) {
  start({masquerade()});
  auto lite = ipv4(kClient, kServer, proto::kUdplite, udpDatagram(5000, 53, 12), 6);
  lite[24] = 0;
  lite[25] = 0;  // coverage 0: the whole datagram; summed with protocol 17 as conntrack checks
  put16(&lite[26], 0);
  put16(&lite[26], fold(sum16(&lite[20], lite.size() - 20,
                              sum16(&lite[12], 8) + proto::kUdp + (lite.size() - 20))));
  ASSERT_EQ(checksumProblems(lite), "");
  ASSERT_EQ(out(lite).state, CtState::kNew);
  EXPECT_EQ(tupleOf(lite).src, a4(kWan));
  EXPECT_EQ(checksumProblems(lite), "");
  auto gre = ipv4Proto(kClient, kServer, 47);
  ASSERT_EQ(out(gre).state, CtState::kNew);
  EXPECT_EQ(tupleOf(gre).src, a4(kWan));
  EXPECT_EQ(checksumProblems(gre), "");
}

TEST_F(NatTest, EveryRewriteKeepsEveryChecksumRight) {
  // Many flows of every kind through DNAT and SNAT with address ranges: every packet that
  // comes out must have right checksums.
  NatRule d = dnatTo(kClient, PortRange{8000, 8100}, 443);
  NatRule s = snatTo(v4(192, 0, 2, 10), v4(192, 0, 2, 20));
  s.protocol = proto::kTcp;
  s.toPort = PortRange{20000, 30000};
  start({d, s, masquerade()});
  for (uint16_t i = 0; i < 200; ++i) {
    const uint32_t c = v4(10, 0, static_cast<uint8_t>(i >> 4), static_cast<uint8_t>(2 + i % 16));
    std::vector<std::vector<uint8_t>> pkts;
    pkts.push_back(ipv4Tcp(c, kServer, static_cast<uint16_t>(1000 + i), 80,
                           {tcpf::kSyn, i * 1000u, 0, 65535, {2, 4, 5, 180}, 0}));
    pkts.push_back(ipv4Udp(c, kServer, static_cast<uint16_t>(2000 + i), 53, i % 37));
    pkts.push_back(ipv4Icmp(c, kServer, 8, 0, i));
    for (auto& p : pkts) {
      ASSERT_EQ(out(p).state, CtState::kNew);
      ASSERT_EQ(checksumProblems(p), "") << "flow " << i;
    }
    auto fwd = ipv4Tcp(kServer, kWan, static_cast<uint16_t>(3000 + i), 443,
                       {tcpf::kSyn, 1, 0, 65535, {}, i});
    ASSERT_EQ(in(fwd).state, CtState::kNew);
    ASSERT_EQ(checksumProblems(fwd), "");
  }
}

TEST_F(NatTest, MutatedPacketsNeverReachOutsideTheirBytes) {
  // Corrupted and truncated packets of every kind through a NAT that rewrites everything, with
  // checksum verification off so that they reach the rewriting code: under the sanitizers a
  // read or write outside the packet fails the test.
  TrackerSettings s;
  s.protocols.verifyChecksums = false;
  start({dnatTo(kClient, PortRange{8000, 8001}, 443), masquerade()}, s);
  auto seedSyn = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0});
  auto seedUdp = ipv4Udp(kClient, kServer, 5000, 53, 20);
  auto seedPing = ipv4Icmp(kClient, kServer, 8, 0, 7);
  out(seedSyn);
  out(seedUdp);
  out(seedPing);
  const std::vector<std::vector<uint8_t>> seeds = {
      ipv4Icmp(kRouter, kWan, 3, 1, 0, 0, seedSyn),
      ipv4Icmp(kRouter, kWan, 3, 1, 0, 0, seedUdp),
      ipv4Icmp(kRouter, kWan, 11, 0, 0, 0, seedPing),
      ipv6Icmp(v6(0xfe, 2), kWan6, 1, 4, 0, 0, ipv6Udp(kClient6, kServer6, 5000, 53)),
      ipv4Tcp(kServer, kWan, 80, 40000, {tcpf::kSyn | tcpf::kAck, 5, 1001}),
      ipv4Tcp(kServer, kWan, 33000, 443, {tcpf::kSyn, 1, 0}),
      ipv4Udp(kServer, kWan, 53, 5000),
      ipv6Tcp(kClient6, kServer6, 40000, 80, {tcpf::kSyn, 1, 0})};
  std::mt19937 rng(7);
  for (int round = 0; round < 20000; ++round) {
    std::vector<uint8_t> p = seeds[rng() % seeds.size()];
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) p[rng() % p.size()] = static_cast<uint8_t>(rng());
    if (rng() % 4 == 0) p.resize(rng() % p.size() + 1);
    PacketContext c{rng() % 2 ? "wan0" : "lan0", rng() % 2 ? "lan0" : "wan0", 0};
    tracker_->process(p.data(), p.size(), kT0, c);
  }
  EXPECT_GT(tracker_->counters().packets, 20000u);
}

// --- batches and fragments ----------------------------------------------------------------------

TEST_F(NatTest, BatchesRewriteAsSinglePacketsDo) {
  start({masquerade()});
  std::vector<std::vector<uint8_t>> single, batched;
  for (uint16_t i = 0; i < 40; ++i) {
    single.push_back(
        ipv4Udp(i % 2 ? kClient : kClient2, kServer, static_cast<uint16_t>(6000 + i / 2), 53));
  }
  batched = single;
  for (auto& p : single) out(p);
  TrackerSettings s;
  s.nat.rules = {masquerade()};
  Tracker other(s, 42, &addresses_);
  PacketContext c{"lan0", "wan0", 0};
  std::vector<MutablePacket> mp;
  for (auto& p : batched) mp.push_back({p.data(), static_cast<uint32_t>(p.size()), &c});
  std::vector<Verdict> verdicts(mp.size());
  other.processBatch(std::span<const MutablePacket>(mp), kT0, verdicts);
  EXPECT_EQ(batched, single);
  for (const Verdict& v : verdicts) EXPECT_EQ(v.state, CtState::kNew);
}

TEST_F(NatTest, AFragmentedDatagramIsRewrittenWholeOnceReassembled) {
  start({masquerade()});
  // A 1400-byte UDP datagram in two fragments.
  auto whole = ipv4Udp(kClient, kServer, 5000, 53, 1400);
  const size_t l4 = whole.size() - 20;
  auto frag = [&](size_t off, size_t n, bool more) {
    std::vector<uint8_t> f(20 + n);
    std::memcpy(f.data(), whole.data(), 20);
    std::memcpy(f.data() + 20, whole.data() + 20 + off, n);
    put16(&f[2], static_cast<uint16_t>(f.size()));
    put16(&f[4], 0x1234);
    put16(&f[6], static_cast<uint16_t>((more ? 0x2000 : 0) | (off / 8)));
    put16(&f[10], 0);
    put16(&f[10], fold(sum16(f.data(), 20)));
    return f;
  };
  auto f1 = frag(0, 800, true);
  auto f2 = frag(800, l4 - 800, false);
  EXPECT_EQ(out(f1).state, CtState::kHeld);
  const Verdict v = out(f2);
  ASSERT_EQ(v.state, CtState::kNew);
  ASSERT_FALSE(v.datagram.empty());
  std::vector<uint8_t> got(v.datagram.begin(), v.datagram.end());
  EXPECT_EQ(got.size(), whole.size());
  EXPECT_EQ(tupleOf(got).src, a4(kWan));
  EXPECT_EQ(checksumProblems(got), "");
}

}  // namespace
}  // namespace ctsync::table
