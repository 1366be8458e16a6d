#include "syncd/replay.hpp"

#include <gtest/gtest.h>
#include <pcap/pcap.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "syncd/pcap_reader.hpp"
#include "tests/support/checksum_check.hpp"
#include "tests/support/packet_builder.hpp"

namespace ctsync::syncd {
namespace {

using namespace ctsync::testing;

const uint32_t kClient = v4(10, 231, 1, 2);
const uint32_t kServer = v4(10, 231, 2, 2);

struct Pkt {
  int64_t sec;
  int64_t usec;
  std::vector<uint8_t> bytes;
};

std::vector<uint8_t> ethernet(const std::vector<uint8_t>& ip, bool v6 = false) {
  std::vector<uint8_t> f(14, 0);
  f[0] = 0x02;
  f[6] = 0x02;
  f[12] = v6 ? 0x86 : 0x08;
  f[13] = v6 ? 0xdd : 0x00;
  f.insert(f.end(), ip.begin(), ip.end());
  return f;
}

std::string writePcap(const std::string& name, int linkType, const std::vector<Pkt>& pkts) {
  const auto path = (std::filesystem::temp_directory_path() /
                     ("ctsync-" + std::to_string(::getpid()) + "-" + name))
                        .string();
  pcap_t* dead = pcap_open_dead(linkType, 65535);
  pcap_dumper_t* d = pcap_dump_open(dead, path.c_str());
  for (const auto& p : pkts) {
    pcap_pkthdr h{};
    h.ts.tv_sec = p.sec;
    h.ts.tv_usec = p.usec;
    h.caplen = h.len = static_cast<uint32_t>(p.bytes.size());
    pcap_dump(reinterpret_cast<u_char*>(d), &h, p.bytes.data());
  }
  pcap_dump_close(d);
  pcap_close(dead);
  return path;
}

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

TEST(ReplayTest, PrintsEventsThenTheTableAtTheLastPacketTime) {
  const auto syn = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0});
  const auto synack = ipv4Tcp(kServer, kClient, 80, 40000, {tcpf::kSyn | tcpf::kAck, 5000, 1001});
  const auto ack = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kAck, 1001, 5001});
  const auto udp = ipv4Udp(kClient, kServer, 5000, 53);
  const std::string path = writePcap("replay.pcap", DLT_EN10MB,
                                     {{100, 0, ethernet(syn)},
                                      {100, 10, ethernet(synack)},
                                      {100, 20, ethernet(ack)},
                                      {101, 0, ethernet(udp)},
                                      {110, 500000, ethernet(udp)}});
  ReplayOptions o;
  o.pcapPath = path;
  o.events = true;
  std::ostringstream out, err;
  ASSERT_EQ(runReplay(o, out, err), 0) << err.str();
  const auto l = lines(out.str());
  ASSERT_EQ(l.size(), 6u) << out.str();
  EXPECT_EQ(l[0].rfind("    [NEW] ipv4     2 tcp      6 120 SYN_SENT ", 0), 0u);
  EXPECT_EQ(l[1].rfind(" [UPDATE] ipv4     2 tcp      6 60 SYN_RECV ", 0), 0u);
  EXPECT_EQ(l[2].rfind(" [UPDATE] ipv4     2 tcp      6 432000 ESTABLISHED ", 0), 0u);
  EXPECT_EQ(l[3].rfind("    [NEW] ipv4     2 udp      17 30 ", 0), 0u);
  // Table at t=110.5: TCP created at 100.00002 -> 432000 - 10.5 s left, rounded down.
  EXPECT_EQ(l[4],
            "ipv4     2 tcp      6 431989 ESTABLISHED src=10.231.1.2 dst=10.231.2.2 sport=40000 "
            "dport=80 src=10.231.2.2 dst=10.231.1.2 sport=80 dport=40000 [ASSURED] mark=0 use=1");
  EXPECT_EQ(l[5],
            "ipv4     2 udp      17 30 src=10.231.1.2 dst=10.231.2.2 sport=5000 dport=53 "
            "[UNREPLIED] src=10.231.2.2 dst=10.231.1.2 sport=53 dport=5000 mark=0 use=1");
  std::filesystem::remove(path);
}

TEST(ReplayTest, ReadsRawIpAndLinuxCookedCaptures) {
  const auto udp = ipv4Udp(kClient, kServer, 5000, 53);
  std::vector<uint8_t> sll(16, 0);
  sll[14] = 0x08;
  sll.insert(sll.end(), udp.begin(), udp.end());
  for (const auto& [name, lt, frame] :
       {std::tuple{"raw.pcap", DLT_RAW, udp}, std::tuple{"sll.pcap", DLT_LINUX_SLL, sll}}) {
    const std::string path = writePcap(name, lt, {{5, 0, frame}});
    ReplayOptions o;
    o.pcapPath = path;
    o.json = true;
    std::ostringstream out, err;
    ASSERT_EQ(runReplay(o, out, err), 0) << err.str();
    EXPECT_NE(out.str().find("\"proto\":\"udp\""), std::string::npos) << name << out.str();
    std::filesystem::remove(path);
  }
}

TEST(ReplayTest, SkipsFramesWithoutIp) {
  std::vector<uint8_t> arp(42, 0);
  arp[12] = 0x08;
  arp[13] = 0x06;
  EXPECT_FALSE(locateIp(DLT_EN10MB, arp.data(), arp.size()));
  std::vector<uint8_t> vlan = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x81, 0x00, 0, 5, 0x08, 0x00};
  const auto udp = ipv4Udp(kClient, kServer, 1, 2);
  vlan.insert(vlan.end(), udp.begin(), udp.end());
  const auto at = locateIp(DLT_EN10MB, vlan.data(), vlan.size());
  ASSERT_TRUE(at);
  EXPECT_EQ(at->first, 18u);
}

TEST(ReplayTest, MissingFileIsOneClearLineAndStatusTwo) {
  ReplayOptions o;
  o.pcapPath = "/nonexistent/capture.pcap";
  std::ostringstream out, err;
  EXPECT_EQ(runReplay(o, out, err), 2);
  EXPECT_TRUE(out.str().empty());
  const auto l = lines(err.str());
  ASSERT_EQ(l.size(), 1u);
  EXPECT_NE(l[0].find("/nonexistent/capture.pcap"), std::string::npos);
}

TEST(ReplayTest, NotACaptureIsStatusTwo) {
  const auto path = (std::filesystem::temp_directory_path() / "ctsync-not-a-pcap").string();
  std::ofstream(path) << "hello, I am not a capture\n";
  ReplayOptions o;
  o.pcapPath = path;
  std::ostringstream out, err;
  EXPECT_EQ(runReplay(o, out, err), 2);
  EXPECT_EQ(lines(err.str()).size(), 1u);
  std::filesystem::remove(path);
}

TEST(ReplayTest, ConfigErrorIsStatusTwoNamingFileAndKey) {
  const auto cfg = (std::filesystem::temp_directory_path() / "ctsync-bad.toml").string();
  std::ofstream(cfg) << "[tracker]\ntcp_loose = 3\n";
  const auto pcap = writePcap("empty.pcap", DLT_EN10MB, {});
  ReplayOptions o;
  o.pcapPath = pcap;
  o.configPath = cfg;
  std::ostringstream out, err;
  EXPECT_EQ(runReplay(o, out, err), 2);
  EXPECT_NE(err.str().find(cfg + ":2:"), std::string::npos) << err.str();
  EXPECT_NE(err.str().find("tracker.tcp_loose"), std::string::npos) << err.str();
  std::filesystem::remove(cfg);
  std::filesystem::remove(pcap);
}

TEST(ReplayTest, ConfigChangesTrackerBehaviour) {
  // With tcp_loose = false a mid-stream ACK creates nothing.
  const auto cfg = (std::filesystem::temp_directory_path() / "ctsync-loose.toml").string();
  std::ofstream(cfg) << "[tracker]\ntcp_loose = false\n";
  const auto ack = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kAck, 1001, 5001});
  const auto pcap = writePcap("pickup.pcap", DLT_EN10MB, {{1, 0, ethernet(ack)}});
  ReplayOptions o;
  o.pcapPath = pcap;
  std::ostringstream out1, err1;
  ASSERT_EQ(runReplay(o, out1, err1), 0);
  EXPECT_EQ(lines(out1.str()).size(), 1u);  // loose pickup: one ESTABLISHED entry
  o.configPath = cfg;
  std::ostringstream out2, err2;
  ASSERT_EQ(runReplay(o, out2, err2), 0);
  EXPECT_TRUE(out2.str().empty());
  std::filesystem::remove(cfg);
  std::filesystem::remove(pcap);
}

std::vector<std::vector<uint8_t>> readAll(const std::string& path, int* linkType = nullptr) {
  auto opened = PcapReader::open(path);
  EXPECT_TRUE(std::holds_alternative<PcapReader>(opened));
  std::vector<std::vector<uint8_t>> out;
  if (!std::holds_alternative<PcapReader>(opened)) return out;
  PcapReader& r = std::get<PcapReader>(opened);
  if (linkType != nullptr) *linkType = r.linkType();
  while (auto f = r.next()) out.emplace_back(f->ip, f->ip + f->len);
  return out;
}

class ReplayNatTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto dir = std::filesystem::temp_directory_path();
    const std::string tag = std::to_string(::getpid());
    cfg_ = (dir / ("ctsync-nat-" + tag + ".toml")).string();
    out_ = (dir / ("ctsync-nat-out-" + tag + ".pcap")).string();
  }
  void TearDown() override {
    std::filesystem::remove(cfg_);
    std::filesystem::remove(out_);
    if (!in_.empty()) std::filesystem::remove(in_);
  }
  int replay(const std::string& toml, const std::vector<Pkt>& pkts, std::string& err) {
    std::ofstream(cfg_) << toml;
    in_ = writePcap("nat-in.pcap", DLT_EN10MB, pkts);
    ReplayOptions o;
    o.pcapPath = in_;
    o.configPath = cfg_;
    o.writePath = out_;
    o.stats = true;
    o.events = true;
    std::ostringstream out, e;
    const int rc = runReplay(o, out, e);
    err = e.str();
    table_ = out.str();
    return rc;
  }
  std::string cfg_, out_, in_, table_;
};

const char* kMasquerade = R"(
[[nat.rule]]
type = "masquerade"
out_interface = "wan0"

[replay]
inside = ["10.231.1.0/24"]
in_interface = "lan0"
out_interface = "wan0"
out_addresses = ["10.231.2.1"]
)";

TEST_F(ReplayNatTest, WritesPacketsAsTheFirewallSendsThem) {
  const uint32_t wan = v4(10, 231, 2, 1);
  const auto syn = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0});
  const auto synack = ipv4Tcp(kServer, wan, 80, 40000, {tcpf::kSyn | tcpf::kAck, 5000, 1001});
  const auto bogus = ipv4Tcp(kServer, wan, 80, 40000, {tcpf::kFin, 9, 9});  // a bare FIN: invalid
  const auto ack = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kAck, 1001, 5001});
  std::string err;
  ASSERT_EQ(replay(kMasquerade,
                   {{1, 0, ethernet(syn)},
                    {1, 1, ethernet(synack)},
                    {1, 2, ethernet(bogus)},
                    {1, 3, ethernet(ack)}},
                   err),
            0)
      << err;
  int lt = 0;
  const auto sent = readAll(out_, &lt);
  EXPECT_EQ(lt, DLT_RAW);
  ASSERT_EQ(sent.size(), 3u) << err;  // the invalid packet is left out
  for (const auto& p : sent) EXPECT_EQ(ctsync::testing::checksumProblems(p), "");
  // Translated, and one hop older.
  EXPECT_EQ(sent[0][8], 63);
  EXPECT_EQ(std::vector<uint8_t>(sent[0].begin() + 12, sent[0].begin() + 16),
            (std::vector<uint8_t>{10, 231, 2, 1}));
  EXPECT_EQ(std::vector<uint8_t>(sent[1].begin() + 16, sent[1].begin() + 20),
            (std::vector<uint8_t>{10, 231, 1, 2}));
  EXPECT_NE(table_.find("src=10.231.2.2 dst=10.231.2.1 sport=80 dport=40000"), std::string::npos)
      << table_;
  EXPECT_NE(err.find("nat: 1 flows source-translated"), std::string::npos) << err;
  EXPECT_NE(err.find("written: 3 packets"), std::string::npos) << err;
}

TEST_F(ReplayNatTest, ExhaustedFlowsAreDroppedAndCountedAsNewBeforeNat) {
  const std::string toml = R"(
[[nat.rule]]
type = "snat"
protocol = "udp"
to_address = "10.231.2.100"
to_port = "1000-1001"

[replay]
inside = ["10.231.1.0/24"]
)";
  std::vector<Pkt> pkts;
  for (uint16_t i = 0; i < 3; ++i) {
    pkts.push_back(
        {2, i, ethernet(ipv4Udp(kClient, kServer, static_cast<uint16_t>(5000 + i), 53))});
  }
  std::string err;
  ASSERT_EQ(replay(toml, pkts, err), 0) << err;
  EXPECT_EQ(readAll(out_).size(), 2u);
  EXPECT_NE(err.find("ctstate new=3 "), std::string::npos) << err;
  EXPECT_NE(err.find("nat_dropped=1"), std::string::npos) << err;
  EXPECT_NE(err.find("nat_exhausted=1"), std::string::npos) << err;
}

TEST_F(ReplayNatTest, KeepsInvalidPacketsWhenAskedAndDropsExpiredTtl) {
  std::string toml = kMasquerade;
  toml += "drop_invalid = false\n";
  auto lastHop = ipv4Udp(kClient, kServer, 5000, 53);
  lastHop[8] = 1;
  put16(&lastHop[10], 0);
  put16(&lastHop[10], fold(sum16(lastHop.data(), 20)));
  const auto stray = ipv4Tcp(kServer, kClient, 80, 1, {tcpf::kFin, 1, 1});  // invalid flags
  std::string err;
  ASSERT_EQ(replay(toml, {{1, 0, ethernet(stray)}, {1, 1, ethernet(lastHop)}}, err), 0) << err;
  const auto sent = readAll(out_);
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0][9], 6);  // the stray TCP packet, passed on untranslated
  EXPECT_NE(err.find("TTL or hop limit ran out"), std::string::npos) << err;
}

TEST_F(ReplayNatTest, RedirectedPacketsAreDeliveredLocallyNotWritten) {
  const std::string toml = R"(
[[nat.rule]]
type = "redirect"
protocol = "tcp"
dport = 80
to_port = 3128

[replay]
inside = ["10.231.1.0/24"]
in_addresses = ["10.231.1.1"]
)";
  const auto syn = ipv4Tcp(kClient, kServer, 40000, 80, {tcpf::kSyn, 1000, 0});
  const auto other = ipv4Tcp(kClient, kServer, 40001, 443, {tcpf::kSyn, 1000, 0});
  std::string err;
  ASSERT_EQ(replay(toml, {{1, 0, ethernet(syn)}, {1, 1, ethernet(other)}}, err), 0) << err;
  EXPECT_EQ(readAll(out_).size(), 1u);  // only the port-443 flow is forwarded
  EXPECT_NE(err.find("1 delivered to the firewall itself"), std::string::npos) << err;
  EXPECT_NE(table_.find("src=10.231.1.1 dst=10.231.1.2 sport=3128 dport=40000"), std::string::npos)
      << table_;
}

TEST_F(ReplayNatTest, UnwritableOutputIsStatusTwo) {
  std::ofstream(cfg_) << kMasquerade;
  in_ = writePcap("nat-in.pcap", DLT_EN10MB, {});
  ReplayOptions o;
  o.pcapPath = in_;
  o.configPath = cfg_;
  o.writePath = "/nonexistent/dir/out.pcap";
  std::ostringstream out, e;
  EXPECT_EQ(runReplay(o, out, e), 2);
  EXPECT_NE(e.str().find("/nonexistent/dir/out.pcap"), std::string::npos) << e.str();
}

TEST(ReplayForward, TtlDecrementKeepsTheHeaderChecksumRightForEveryStartingValue) {
  // ip_decrease_ttl's incremental update against a full recomputation, over every id (so the
  // header checksum takes every value it can).
  for (uint32_t id = 0; id < 65536; ++id) {
    auto p = ipv4Udp(kClient, kServer, 1, 2);
    put16(&p[4], static_cast<uint16_t>(id));
    put16(&p[10], 0);
    put16(&p[10], fold(sum16(p.data(), 20)));
    ASSERT_TRUE(forwardHop(p.data()));
    ASSERT_EQ(p[8], 63);
    auto full = p;
    put16(&full[10], 0);
    put16(&full[10], fold(sum16(full.data(), 20)));
    ASSERT_EQ(p[10], full[10]) << "id " << id;
    ASSERT_EQ(p[11], full[11]) << "id " << id;
  }
  auto six = ipv6Udp(v6(2, 1), v6(2, 2), 1, 2);
  ASSERT_TRUE(forwardHop(six.data()));
  EXPECT_EQ(six[7], 63);
  six[7] = 1;
  EXPECT_FALSE(forwardHop(six.data()));
}

}  // namespace
}  // namespace ctsync::syncd
