#include "conf/config.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace ctsync::conf {
namespace {

using table::seconds;

#ifdef CTSYNC_EXAMPLE_CONFIG
const std::string kExampleConfig = CTSYNC_EXAMPLE_CONFIG;
#else
const std::string kExampleConfig =
    (std::filesystem::path(__FILE__).parent_path() / "../../conf/ctsyncd.example.toml").string();
#endif

// The settings structs have no operator==; compare field by field so a failure names the field.
void expectSameTracker(const table::TrackerSettings& a, const table::TrackerSettings& b) {
  const table::TcpSettings& at = a.protocols.tcp;
  const table::TcpSettings& bt = b.protocols.tcp;
  EXPECT_EQ(at.synSent, bt.synSent);
  EXPECT_EQ(at.synRecv, bt.synRecv);
  EXPECT_EQ(at.established, bt.established);
  EXPECT_EQ(at.finWait, bt.finWait);
  EXPECT_EQ(at.closeWait, bt.closeWait);
  EXPECT_EQ(at.lastAck, bt.lastAck);
  EXPECT_EQ(at.timeWait, bt.timeWait);
  EXPECT_EQ(at.close, bt.close);
  EXPECT_EQ(at.synSent2, bt.synSent2);
  EXPECT_EQ(at.maxRetrans, bt.maxRetrans);
  EXPECT_EQ(at.unacknowledged, bt.unacknowledged);
  EXPECT_EQ(at.loose, bt.loose);
  EXPECT_EQ(at.beLiberal, bt.beLiberal);
  EXPECT_EQ(at.ignoreInvalidRst, bt.ignoreInvalidRst);
  EXPECT_EQ(at.maxRetransCount, bt.maxRetransCount);
  EXPECT_EQ(a.protocols.udp.unreplied, b.protocols.udp.unreplied);
  EXPECT_EQ(a.protocols.udp.stream, b.protocols.udp.stream);
  EXPECT_EQ(a.protocols.icmp.icmp, b.protocols.icmp.icmp);
  EXPECT_EQ(a.protocols.icmp.icmpv6, b.protocols.icmp.icmpv6);
  EXPECT_EQ(a.protocols.generic.timeout, b.protocols.generic.timeout);
  EXPECT_EQ(a.protocols.verifyChecksums, b.protocols.verifyChecksums);
  EXPECT_EQ(a.table.buckets, b.table.buckets);
  EXPECT_EQ(a.table.maxEntries, b.table.maxEntries);
  EXPECT_EQ(a.table.eviction, b.table.eviction);
  EXPECT_EQ(a.table.minLifetime, b.table.minLifetime);
  EXPECT_EQ(a.table.adaptiveStart, b.table.adaptiveStart);
  EXPECT_EQ(a.table.adaptiveEnd, b.table.adaptiveEnd);
  EXPECT_EQ(a.table.refreshPercent, b.table.refreshPercent);
}

Config parseOk(std::string_view text) {
  ConfigResult r = parseConfig(text, "test.toml");
  EXPECT_TRUE(r.ok()) << r.error().message;
  return r.ok() ? r.value() : Config{};
}

std::string parseError(std::string_view text) {
  ConfigResult r = parseConfig(text, "test.toml");
  EXPECT_FALSE(r.ok());
  return r.ok() ? std::string() : r.error().message;
}

// Error for a single `[tracker]` key line; the value starts at column 1 + len("key = ").
std::string trackerError(std::string_view line) {
  return parseError("[tracker]\n" + std::string(line) + "\n");
}

// ------------------------------------------------------------------------------------ defaults

TEST(ConfigTest, EmptyTextGivesDefaults) {
  expectSameTracker(parseOk("").tracker, table::TrackerSettings{});
}

TEST(ConfigTest, CommentsAndEmptySectionGiveDefaults) {
  expectSameTracker(parseOk("# nothing here\n\n[tracker]\n# still nothing\n").tracker,
                    table::TrackerSettings{});
}

TEST(ConfigTest, ExampleFileParsesToDefaults) {
  ConfigResult r = loadConfig(kExampleConfig);
  ASSERT_TRUE(r.ok()) << r.error().message;
  expectSameTracker(r.value().tracker, table::TrackerSettings{});
}

TEST(ConfigTest, ExampleFileMentionsEveryKey) {
  // Each key set to a non-default value in EveryKeyIsRead must also be documented.
  std::ifstream in(kExampleConfig);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* key : {"tcp_loose",
                          "tcp_be_liberal",
                          "tcp_ignore_invalid_rst",
                          "tcp_max_retrans",
                          "checksum",
                          "tcp_timeout_syn_sent",
                          "tcp_timeout_syn_recv",
                          "tcp_timeout_established",
                          "tcp_timeout_fin_wait",
                          "tcp_timeout_close_wait",
                          "tcp_timeout_last_ack",
                          "tcp_timeout_time_wait",
                          "tcp_timeout_close",
                          "tcp_timeout_max_retrans",
                          "tcp_timeout_unacknowledged",
                          "udp_timeout",
                          "udp_timeout_stream",
                          "icmp_timeout",
                          "icmpv6_timeout",
                          "generic_timeout",
                          "buckets",
                          "max",
                          "eviction",
                          "min_lifetime",
                          "adaptive_start",
                          "adaptive_end",
                          "refresh_percent"}) {
    EXPECT_NE(text.find(std::string("\n") + key + " = "), std::string::npos) << key;
  }
}

// --------------------------------------------------------------------------------- every key

TEST(ConfigTest, EveryKeyIsRead) {
  Config c = parseOk(R"([tracker]
tcp_loose = false
tcp_be_liberal = true
tcp_ignore_invalid_rst = true
tcp_max_retrans = 7
checksum = false
tcp_timeout_syn_sent = 11
tcp_timeout_syn_recv = 12
tcp_timeout_established = 13
tcp_timeout_fin_wait = 14
tcp_timeout_close_wait = 15
tcp_timeout_last_ack = 16
tcp_timeout_time_wait = 17
tcp_timeout_close = 18
tcp_timeout_max_retrans = 19
tcp_timeout_unacknowledged = 20
udp_timeout = 21
udp_timeout_stream = 22
icmp_timeout = 23
icmpv6_timeout = 24
generic_timeout = 25
buckets = 1024
max = 4096
eviction = "closing-first"
min_lifetime = 5
adaptive_start = 60
adaptive_end = 90
refresh_percent = 25
)");
  const table::TcpSettings& tcp = c.tracker.protocols.tcp;
  EXPECT_FALSE(tcp.loose);
  EXPECT_TRUE(tcp.beLiberal);
  EXPECT_TRUE(tcp.ignoreInvalidRst);
  EXPECT_EQ(tcp.maxRetransCount, 7);
  EXPECT_FALSE(c.tracker.protocols.verifyChecksums);
  EXPECT_EQ(tcp.synSent, seconds(11));
  EXPECT_EQ(tcp.synSent2, seconds(11));
  EXPECT_EQ(tcp.synRecv, seconds(12));
  EXPECT_EQ(tcp.established, seconds(13));
  EXPECT_EQ(tcp.finWait, seconds(14));
  EXPECT_EQ(tcp.closeWait, seconds(15));
  EXPECT_EQ(tcp.lastAck, seconds(16));
  EXPECT_EQ(tcp.timeWait, seconds(17));
  EXPECT_EQ(tcp.close, seconds(18));
  EXPECT_EQ(tcp.maxRetrans, seconds(19));
  EXPECT_EQ(tcp.unacknowledged, seconds(20));
  EXPECT_EQ(c.tracker.protocols.udp.unreplied, seconds(21));
  EXPECT_EQ(c.tracker.protocols.udp.stream, seconds(22));
  EXPECT_EQ(c.tracker.protocols.icmp.icmp, seconds(23));
  EXPECT_EQ(c.tracker.protocols.icmp.icmpv6, seconds(24));
  EXPECT_EQ(c.tracker.protocols.generic.timeout, seconds(25));
  EXPECT_EQ(c.tracker.table.buckets, 1024u);
  EXPECT_EQ(c.tracker.table.maxEntries, 4096u);
  EXPECT_EQ(c.tracker.table.eviction, table::EvictionPolicy::kClosingFirst);
  EXPECT_EQ(c.tracker.table.minLifetime, seconds(5));
  EXPECT_EQ(c.tracker.table.adaptiveStart, 60);
  EXPECT_EQ(c.tracker.table.adaptiveEnd, 90);
  EXPECT_EQ(c.tracker.table.refreshPercent, 25);
}

TEST(ConfigTest, UnsetKeysKeepTheirDefaults) {
  Config c = parseOk("[tracker]\nudp_timeout = 45\n");
  table::TrackerSettings expected;
  expected.protocols.udp.unreplied = seconds(45);
  expectSameTracker(c.tracker, expected);
}

TEST(ConfigTest, SynSent2FollowsSynSentOnlyWhenGiven) {
  EXPECT_EQ(parseOk("[tracker]\ntcp_timeout_syn_sent = 7\n").tracker.protocols.tcp.synSent2,
            seconds(7));
  EXPECT_EQ(parseOk("[tracker]\ntcp_timeout_syn_recv = 7\n").tracker.protocols.tcp.synSent2,
            table::TcpSettings{}.synSent2);
}

TEST(ConfigTest, EvictionKernel) {
  EXPECT_EQ(parseOk("[tracker]\neviction = \"kernel\"\n").tracker.table.eviction,
            table::EvictionPolicy::kKernel);
}

TEST(ConfigTest, InlineTableAndDottedKeysAreTheSameSection) {
  EXPECT_FALSE(parseOk("tracker = { tcp_loose = false }\n").tracker.protocols.tcp.loose);
  EXPECT_FALSE(parseOk("tracker.tcp_loose = false\n").tracker.protocols.tcp.loose);
}

TEST(ConfigTest, BoundaryValuesAreAccepted) {
  Config lo = parseOk(
      "[tracker]\ntcp_max_retrans = 0\nudp_timeout = 1\nbuckets = 1\nmax = 1\n"
      "min_lifetime = 0\nadaptive_start = 0\nadaptive_end = 1\nrefresh_percent = 0\n");
  EXPECT_EQ(lo.tracker.protocols.tcp.maxRetransCount, 0);
  EXPECT_EQ(lo.tracker.protocols.udp.unreplied, seconds(1));
  EXPECT_EQ(lo.tracker.table.buckets, 1u);
  EXPECT_EQ(lo.tracker.table.maxEntries, 1u);
  EXPECT_EQ(lo.tracker.table.adaptiveEnd, 1);
  EXPECT_EQ(lo.tracker.table.refreshPercent, 0);

  Config hi = parseOk(
      "[tracker]\ntcp_max_retrans = 255\nudp_timeout = 2147483\nbuckets = 268435456\n"
      "max = 1073741824\nmin_lifetime = 2147483\nadaptive_start = 99\nadaptive_end = 100\n"
      "refresh_percent = 100\n");
  EXPECT_EQ(hi.tracker.protocols.tcp.maxRetransCount, 255);
  EXPECT_EQ(hi.tracker.protocols.udp.unreplied, seconds(2147483));
  EXPECT_EQ(hi.tracker.table.buckets, 268435456u);
  EXPECT_EQ(hi.tracker.table.maxEntries, 1073741824u);
  EXPECT_EQ(hi.tracker.table.minLifetime, seconds(2147483));
  EXPECT_EQ(hi.tracker.table.adaptiveStart, 99);
  EXPECT_EQ(hi.tracker.table.adaptiveEnd, 100);
  EXPECT_EQ(hi.tracker.table.refreshPercent, 100);
}

// ------------------------------------------------------------------------- unknown names

TEST(ConfigTest, UnknownSection) {
  EXPECT_EQ(parseError("\n[trackr]\ntcp_loose = true\n"),
            "test.toml:2:2: unknown section 'trackr'");
}

TEST(ConfigTest, UnknownTopLevelKey) {
  EXPECT_EQ(parseError("  verbose = true\n"), "test.toml:1:3: unknown key 'verbose'");
}

TEST(ConfigTest, UnknownKeyInSection) {
  EXPECT_EQ(trackerError("tcp_timout_close = 10"),
            "test.toml:2:1: unknown key 'tracker.tcp_timout_close'");
}

TEST(ConfigTest, UnknownSubTable) {
  EXPECT_EQ(parseError("[tracker.tcp]\nloose = true\n"),
            "test.toml:1:10: unknown key 'tracker.tcp'");
}

TEST(ConfigTest, SectionThatIsNotATable) {
  EXPECT_EQ(parseError("tracker = 5\n"), "test.toml:1:11: key 'tracker': expected a table");
  EXPECT_EQ(parseError("[[tracker]]\n"), "test.toml:1:1: key 'tracker': expected a table");
}

TEST(ConfigTest, ControlCharactersInKeysAreEscaped) {
  EXPECT_EQ(trackerError("\"a\\nb\\u0001\" = 1"),
            "test.toml:2:1: unknown key 'tracker.a\\nb\\x01'");
}

// ----------------------------------------------------------------------------- wrong types

TEST(ConfigTest, WrongTypeBoolean) {
  EXPECT_EQ(trackerError("tcp_loose = 1"),
            "test.toml:2:13: key 'tracker.tcp_loose': expected a boolean");
  EXPECT_EQ(trackerError("checksum = \"yes\""),
            "test.toml:2:12: key 'tracker.checksum': expected a boolean");
}

TEST(ConfigTest, WrongTypeInteger) {
  EXPECT_EQ(trackerError("udp_timeout = 30.0"),
            "test.toml:2:15: key 'tracker.udp_timeout': expected an integer");
  EXPECT_EQ(trackerError("max = \"1000\""),
            "test.toml:2:7: key 'tracker.max': expected an integer");
  EXPECT_EQ(trackerError("buckets = true"),
            "test.toml:2:11: key 'tracker.buckets': expected an integer");
  EXPECT_EQ(trackerError("adaptive_start = [1]"),
            "test.toml:2:18: key 'tracker.adaptive_start': expected an integer");
}

TEST(ConfigTest, WrongTypeString) {
  EXPECT_EQ(trackerError("eviction = 1"),
            "test.toml:2:12: key 'tracker.eviction': expected a string");
}

// --------------------------------------------------------------------------- out of range

TEST(ConfigTest, OutOfRange) {
  EXPECT_EQ(trackerError("tcp_max_retrans = 256"),
            "test.toml:2:19: key 'tracker.tcp_max_retrans': 256 is out of range 0..255");
  EXPECT_EQ(trackerError("tcp_max_retrans = -1"),
            "test.toml:2:19: key 'tracker.tcp_max_retrans': -1 is out of range 0..255");
  EXPECT_EQ(trackerError("tcp_timeout_close = 0"),
            "test.toml:2:21: key 'tracker.tcp_timeout_close': 0 is out of range 1..2147483 "
            "(seconds)");
  EXPECT_EQ(trackerError("generic_timeout = 2147484"),
            "test.toml:2:19: key 'tracker.generic_timeout': 2147484 is out of range 1..2147483 "
            "(seconds)");
  EXPECT_EQ(trackerError("min_lifetime = -1"),
            "test.toml:2:16: key 'tracker.min_lifetime': -1 is out of range 0..2147483 (seconds)");
  EXPECT_EQ(trackerError("buckets = 0"),
            "test.toml:2:11: key 'tracker.buckets': 0 is out of range 1..268435456");
  EXPECT_EQ(trackerError("buckets = 268435457"),
            "test.toml:2:11: key 'tracker.buckets': 268435457 is out of range 1..268435456");
  EXPECT_EQ(trackerError("max = 1073741825"),
            "test.toml:2:7: key 'tracker.max': 1073741825 is out of range 1..1073741824");
  EXPECT_EQ(trackerError("max = 9223372036854775807"),
            "test.toml:2:7: key 'tracker.max': 9223372036854775807 is out of range 1..1073741824");
  EXPECT_EQ(trackerError("adaptive_end = 101"),
            "test.toml:2:16: key 'tracker.adaptive_end': 101 is out of range 0..100");
  EXPECT_EQ(trackerError("refresh_percent = 101"),
            "test.toml:2:19: key 'tracker.refresh_percent': 101 is out of range 0..100");
}

TEST(ConfigTest, UnknownEvictionPolicy) {
  EXPECT_EQ(trackerError("eviction = \"random\""),
            "test.toml:2:12: key 'tracker.eviction': expected one of \"kernel\", "
            "\"closing-first\", got \"random\"");
}

TEST(ConfigTest, AdaptiveStartMustBeBelowEnd) {
  EXPECT_EQ(parseError("[tracker]\nadaptive_start = 90\nadaptive_end = 90\n"),
            "test.toml:3:16: key 'tracker.adaptive_end': adaptive_start (90) must be below "
            "adaptive_end (90); set both to 0 to turn adaptive timeouts off");
  // Only the start given: the end defaults to 0, reported at the section.
  EXPECT_EQ(parseError("\n[tracker]\nadaptive_start = 50\n"),
            "test.toml:2:1: key 'tracker.adaptive_end': adaptive_start (50) must be below "
            "adaptive_end (0); set both to 0 to turn adaptive timeouts off");
  EXPECT_EQ(parseOk("[tracker]\nadaptive_end = 50\n").tracker.table.adaptiveEnd, 50);
}

// ---------------------------------------------------------------------------- syntax errors

TEST(ConfigTest, SyntaxErrorHasPosition) {
  std::string e = parseError("[tracker]\ntcp_loose = tru\n");
  EXPECT_EQ(e.rfind("test.toml:2:", 0), 0u) << e;
  EXPECT_NE(e.find("boolean"), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
}

TEST(ConfigTest, DuplicateKeyIsASyntaxError) {
  std::string e = parseError("[tracker]\nmax = 10\nmax = 20\n");
  EXPECT_EQ(e.rfind("test.toml:3:", 0), 0u) << e;
  EXPECT_NE(e.find("max"), std::string::npos) << e;
}

TEST(ConfigTest, IntegerTooBigForTomlIsASyntaxError) {
  std::string e = parseError("[tracker]\nmax = 99999999999999999999\n");
  EXPECT_EQ(e.rfind("test.toml:2:", 0), 0u) << e;
}

TEST(ConfigTest, InvalidUtf8IsASyntaxError) {
  EXPECT_EQ(parseError("[tracker]\neviction = \"\xff\"\n").rfind("test.toml:2:", 0), 0u);
}

// ------------------------------------------------------------------------- several errors

TEST(ConfigTest, AllErrorsAreReportedInFileOrder) {
  EXPECT_EQ(parseError("[tracker]\nudp_timeout = 0\nbogus = 1\ntcp_loose = \"no\"\n[extra]\n"),
            "test.toml:2:15: key 'tracker.udp_timeout': 0 is out of range 1..2147483 (seconds)\n"
            "test.toml:3:1: unknown key 'tracker.bogus'\n"
            "test.toml:4:13: key 'tracker.tcp_loose': expected a boolean\n"
            "test.toml:5:2: unknown section 'extra'");
}

TEST(ConfigTest, CrossKeyCheckIsSkippedWhenAKeyIsBad) {
  EXPECT_EQ(trackerError("adaptive_start = 50\nadaptive_end = 101"),
            "test.toml:3:16: key 'tracker.adaptive_end': 101 is out of range 0..100");
}

// ------------------------------------------------------------------------------- files

class ConfigFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("ctsync_conf_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    std::string path = (dir_ / name).string();
    std::ofstream(path) << text;
    return path;
  }

  std::filesystem::path dir_;
};

TEST_F(ConfigFileTest, LoadsAFile) {
  ConfigResult r = loadConfig(write("a.toml", "[tracker]\nmax = 77\n"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().tracker.table.maxEntries, 77u);
}

TEST_F(ConfigFileTest, ErrorsNameThePath) {
  std::string path = write("bad.toml", "[tracker]\nmax = 0\n");
  ConfigResult r = loadConfig(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, path + ":2:7: key 'tracker.max': 0 is out of range 1..1073741824");
}

TEST_F(ConfigFileTest, MissingFile) {
  std::string path = (dir_ / "missing.toml").string();
  ConfigResult r = loadConfig(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, path + ": cannot read config file: No such file or directory");
}

TEST_F(ConfigFileTest, DirectoryIsUnreadable) {
  ConfigResult r = loadConfig(dir_.string());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, dir_.string() + ": cannot read config file: Is a directory");
}

TEST_F(ConfigFileTest, OversizedFileIsRefused) {
  std::string path = write("big.toml", std::string((1 << 20) + 1, '#'));
  ConfigResult r = loadConfig(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, path + ": cannot read config file: larger than 1048576 bytes");
}

// ------------------------------------------------------------------- the daemon's sections

TEST(ConfigTest, EmptyTextGivesDaemonDefaults) {
  const Config c = parseOk("");
  EXPECT_EQ(c.node.id, 0);  // not set: the daemon refuses to start without it
  EXPECT_EQ(c.node.role, NodeSettings::Role::kBackup);
  EXPECT_TRUE(c.sync.links.empty());
  EXPECT_EQ(c.sync.mtu, 1500u);
  EXPECT_EQ(c.sync.peerTimeout, seconds(2));
  EXPECT_EQ(c.kernel.commit, KernelSettings::Commit::kOnPromote);
  EXPECT_EQ(c.control.socket, "/run/ctsyncd.sock");
  EXPECT_EQ(c.metrics.listen, "");
  EXPECT_EQ(c.log.level, LogSettings::Level::kInfo);
}

TEST(ConfigTest, ExampleFileConfiguresTwoLinks) {
  ConfigResult r = loadConfig(kExampleConfig);
  ASSERT_TRUE(r.ok()) << r.error().message;
  const Config& c = r.value();
  EXPECT_EQ(c.node.id, 1);
  EXPECT_EQ(c.sync.keyFile, "/etc/ctsync/sync.key");
  ASSERT_EQ(c.sync.links.size(), 2u);
  EXPECT_EQ(c.sync.links[0].kind, LinkSettings::Kind::kMulticast);
  EXPECT_EQ(c.sync.links[0].group, "239.255.42.1");
  EXPECT_EQ(c.sync.links[1].kind, LinkSettings::Kind::kUnicast);
  EXPECT_EQ(c.sync.links[1].peers.size(), 2u);
  // Every other value in the example is the default.
  const Config d;
  EXPECT_EQ(c.sync.aliveInterval, d.sync.aliveInterval);
  EXPECT_EQ(c.sync.digestInterval, d.sync.digestInterval);
  EXPECT_EQ(c.sync.paceBytesPerSecond, d.sync.paceBytesPerSecond);
  EXPECT_EQ(c.kernel.netlinkRcvbufBytes, d.kernel.netlinkRcvbufBytes);
  EXPECT_EQ(c.kernel.commitBatch, d.kernel.commitBatch);
}

TEST(ConfigTest, EveryDaemonKeyIsRead) {
  const Config c = parseOk(R"([node]
id = 7
cluster_id = 4000000000
role = "active"
[sync]
key_file = "/k"
encrypt = true
mtu = 9000
alive_interval_ms = 50
peer_timeout_ms = 500
digest_interval_ms = 0
tombstone_seconds = 30
resend_log_flows = 4096
pace_bytes_per_second = 0
[[sync.link]]
kind = "multicast"
interface = "bond0.12"
group = "ff02::c75:1"
port = 4000
rcvbuf = 65536
sndbuf = 1073741824
[[sync.link]]
kind = "unicast"
local_address = "fd00::1"
peers = ["fd00::2", "[fd00::3]:4001", "fe80::1%eth1"]
[source]
kind = "kernel"
[kernel]
commit = "continuous"
netlink_rcvbuf = 1048576
netlink_sndbuf = 65536
commit_batch = 1
commit_threads = 3
protocols = ["tcp", "udp", "tcp"]
ignore_addresses = ["10.0.0.0/8", "fd00::/64", "192.0.2.1"]
tcp_states = ["established", "syn_sent2"]
expectations = false
expect_helpers = ["ftp", "sip", "Q.931", "ftp"]
[control]
socket = "/tmp/c.sock"
[metrics]
listen = "[::1]:9100"
[log]
level = "debug"
target = "syslog"
)");
  EXPECT_EQ(c.node.id, 7);
  EXPECT_EQ(c.node.clusterId, 4000000000u);
  EXPECT_EQ(c.node.role, NodeSettings::Role::kActive);
  EXPECT_EQ(c.sync.keyFile, "/k");
  EXPECT_TRUE(c.sync.encrypt);
  EXPECT_EQ(c.sync.mtu, 9000u);
  EXPECT_EQ(c.sync.aliveInterval, 50 * table::kMillisecond);
  EXPECT_EQ(c.sync.peerTimeout, 500 * table::kMillisecond);
  EXPECT_EQ(c.sync.digestInterval, 0);
  EXPECT_EQ(c.sync.tombstoneTime, seconds(30));
  EXPECT_EQ(c.sync.resendLogFlows, 4096u);
  EXPECT_EQ(c.sync.paceBytesPerSecond, 0u);
  ASSERT_EQ(c.sync.links.size(), 2u);
  EXPECT_EQ(c.sync.links[0].interface, "bond0.12");
  EXPECT_EQ(c.sync.links[0].group, "ff02::c75:1");
  EXPECT_EQ(c.sync.links[0].port, 4000);
  EXPECT_EQ(c.sync.links[0].rcvbufBytes, 65536u);
  EXPECT_EQ(c.sync.links[0].sndbufBytes, 1u << 30);
  EXPECT_EQ(c.sync.links[1].localAddress, "fd00::1");
  EXPECT_EQ(c.sync.links[1].peers,
            (std::vector<std::string>{"fd00::2", "[fd00::3]:4001", "fe80::1%eth1"}));
  EXPECT_EQ(c.kernel.commit, KernelSettings::Commit::kContinuous);
  EXPECT_EQ(c.kernel.netlinkRcvbufBytes, 1u << 20);
  EXPECT_EQ(c.kernel.netlinkSndbufBytes, 65536u);
  EXPECT_EQ(c.kernel.commitBatch, 1u);
  EXPECT_EQ(c.kernel.commitThreads, 3u);
  EXPECT_EQ(c.kernel.protocols, (std::vector<uint8_t>{6, 17}));  // duplicates folded
  EXPECT_EQ(c.kernel.ignoreAddresses.size(), 3u);
  EXPECT_EQ(c.kernel.tcpStates, (std::vector<uint8_t>{3, 9}));
  EXPECT_FALSE(c.kernel.expectations);
  EXPECT_EQ(c.kernel.expectHelpers, (std::vector<uint8_t>{1, 3, 5}));  // duplicates once
  EXPECT_EQ(c.control.socket, "/tmp/c.sock");
  EXPECT_EQ(c.metrics.listen, "[::1]:9100");
  EXPECT_EQ(c.log.level, LogSettings::Level::kDebug);
  EXPECT_EQ(c.log.target, LogSettings::Target::kSyslog);
}

TEST(ConfigTest, LinkErrorsNameTheLinkAndPosition) {
  EXPECT_EQ(parseError("[[sync.link]]\nkind = \"multicast\"\ngroup = \"239.1.1.1\"\n"),
            "test.toml:1:1: key 'sync.link[1]': a multicast link needs 'interface'");
  EXPECT_EQ(parseError("[[sync.link]]\ninterface = \"eth1\"\ngroup = \"10.1.1.1\"\n"),
            "test.toml:1:1: key 'sync.link[1]': group \"10.1.1.1\" is not a multicast address");
  EXPECT_EQ(parseError("[[sync.link]]\nkind = \"unicast\"\n"),
            "test.toml:1:1: key 'sync.link[1]': a unicast link needs 'peers'");
  EXPECT_EQ(parseError("[[sync.link]]\nkind = \"unicast\"\npeers = [\"10.0.0.2\", \"fd00::2\"]\n"),
            "test.toml:1:1: key 'sync.link[1]': peer \"fd00::2\" is of another address family "
            "(one family per link)");
  EXPECT_EQ(parseError("[[sync.link]]\nkind = \"unicast\"\npeers = [\"10.0.0.2:70000\"]\n"),
            "test.toml:3:9: key 'sync.link[1].peers': element 1: port 70000 is out of range "
            "1..65535");
  EXPECT_EQ(parseError("[[sync.link]]\nkind = \"unicast\"\npeers = [\"gw.example\"]\n"),
            "test.toml:3:9: key 'sync.link[1].peers': element 1: \"gw.example\" is not an IPv4 "
            "or IPv6 address");
  EXPECT_EQ(parseError("[[sync.link]]\ninterface = \"eth1\"\ngroup = \"239.1.1.1\"\n"
                       "[[sync.link]]\ninterface = \"a/b\"\n"),
            "test.toml:5:13: key 'sync.link[2].interface': not a valid interface name");
  EXPECT_EQ(parseError("[[sync.link]]\nmtu = 1500\n"),
            "test.toml:2:1: unknown key 'sync.link[1].mtu'");
  EXPECT_EQ(parseError("[sync]\nlink = { interface = \"eth1\" }\n"),
            "test.toml:2:8: key 'sync.link': expected tables: write each link as a [[sync.link]] "
            "section");
}

TEST(ConfigTest, DaemonValuesAreChecked) {
  EXPECT_EQ(parseError("[node]\nid = 0\n"),
            "test.toml:2:6: key 'node.id': 0 is out of range 1..65535");
  EXPECT_EQ(parseError("[node]\nrole = \"master\"\n"),
            "test.toml:2:8: key 'node.role': expected one of \"backup\", \"active\", got "
            "\"master\"");
  EXPECT_EQ(parseError("[sync]\nalive_interval_ms = 1000\npeer_timeout_ms = 1500\n"),
            "test.toml:3:19: key 'sync.peer_timeout_ms': must be more than twice "
            "alive_interval_ms, or one lost Alive takes a healthy peer for gone");
  EXPECT_EQ(parseError("[sync]\nmtu = 100\n"),
            "test.toml:2:7: key 'sync.mtu': 100 is out of range 576..65535");
  EXPECT_EQ(parseError("[kernel]\ncommit = \"now\"\n"),
            "test.toml:2:10: key 'kernel.commit': expected one of \"on-promote\", "
            "\"continuous\", got \"now\"");
  EXPECT_EQ(parseError("[kernel]\nprotocols = [\"tcp\", \"ospf\"]\n"),
            "test.toml:2:13: key 'kernel.protocols': element 2: expected one of \"tcp\", "
            "\"udp\", \"udplite\", \"icmp\", \"icmpv6\", \"sctp\", \"dccp\", \"gre\", got "
            "\"ospf\"");
  EXPECT_EQ(parseError("[kernel]\nexpect_helpers = [\"ftp\", \"http\"]\n"),
            "test.toml:2:18: key 'kernel.expect_helpers': element 2: expected one of \"ftp\", "
            "\"tftp\", \"sip\", \"RAS\", \"Q.931\", \"H.245\", \"irc\", \"pptp\", \"amanda\", "
            "\"sane\", \"snmp\", \"snmp_trap\", \"netbios-ns\", got \"http\"");
  EXPECT_EQ(parseError("[kernel]\nexpectations = \"yes\"\n"),
            "test.toml:2:16: key 'kernel.expectations': expected a boolean");
  EXPECT_EQ(parseError("[kernel]\nignore_addresses = [\"10.0.0.0/33\"]\n"),
            "test.toml:2:20: key 'kernel.ignore_addresses': element 1: \"/33\" is not a prefix "
            "length 0..32");
  EXPECT_EQ(parseError("[control]\nsocket = \"ctsyncd.sock\"\n"),
            "test.toml:2:10: key 'control.socket': expected an absolute path");
  EXPECT_EQ(parseError("[metrics]\nlisten = \"127.0.0.1\"\n"),
            "test.toml:2:10: key 'metrics.listen': expected ADDRESS:PORT (\"[ADDRESS]:PORT\" "
            "for IPv6)");
  EXPECT_EQ(parseError("[log]\ntarget = \"file\"\n"),
            "test.toml:2:10: key 'log.target': expected one of \"stderr\", \"syslog\", got "
            "\"file\"");
}

// ------------------------------------------------------------------------------- [[nat.rule]]

using table::AddrRange;
using table::L3;
using table::NatRule;
using table::NatType;
using table::PortRange;
using table::Prefix;

table::Addr v4(const char* text) {
  table::Addr a;
  EXPECT_EQ(inet_pton(AF_INET, text, a.bytes.data()), 1) << text;
  return a;
}

table::Addr v6(const char* text) {
  table::Addr a;
  EXPECT_EQ(inet_pton(AF_INET6, text, a.bytes.data()), 1) << text;
  return a;
}

void expectSameRule(const NatRule& a, const NatRule& b) {
  EXPECT_EQ(a.type, b.type);
  EXPECT_EQ(a.family, b.family);
  EXPECT_EQ(a.protocol, b.protocol);
  EXPECT_EQ(a.source, b.source);
  EXPECT_EQ(a.destination, b.destination);
  EXPECT_EQ(a.sport, b.sport);
  EXPECT_EQ(a.dport, b.dport);
  EXPECT_EQ(a.inInterface, b.inInterface);
  EXPECT_EQ(a.outInterface, b.outInterface);
  EXPECT_EQ(a.zone, b.zone);
  EXPECT_EQ(a.toAddress, b.toAddress);
  EXPECT_EQ(a.toPort, b.toPort);
  EXPECT_EQ(a.flags, b.flags);
}

// The one rule of "[[nat.rule]]\n" + `keys`.
NatRule natRule(std::string_view keys) {
  const Config c = parseOk("[[nat.rule]]\n" + std::string(keys) + "\n");
  EXPECT_EQ(c.tracker.nat.rules.size(), 1u);
  return c.tracker.nat.rules.empty() ? NatRule{} : c.tracker.nat.rules.front();
}

// Error for "[[nat.rule]]\n" + `keys`: the first key is on line 2.
std::string natError(std::string_view keys) {
  return parseError("[[nat.rule]]\n" + std::string(keys) + "\n");
}

TEST(NatConfigTest, NoRulesByDefault) {
  EXPECT_TRUE(parseOk("").tracker.nat.rules.empty());
  EXPECT_TRUE(parseOk("[nat]\n").tracker.nat.rules.empty());
}

TEST(NatConfigTest, EveryKeyIsRead) {
  const NatRule r = natRule(R"(type = "snat"
family = "ipv4"
protocol = "udp"
source = "10.1.0.0/16"
destination = "192.0.2.0/24"
sport = "1000-2000"
dport = 53
in_interface = "eth0"
out_interface = "ppp*"
zone = 7
to_address = "203.0.113.1-203.0.113.9"
to_port = "1024-65535"
flags = ["persistent", "random", "fully-random"])");
  NatRule e;
  e.type = NatType::kSnat;
  e.family = L3::kIpv4;
  e.protocol = 17;
  e.source = Prefix{L3::kIpv4, v4("10.1.0.0"), 16};
  e.destination = Prefix{L3::kIpv4, v4("192.0.2.0"), 24};
  e.sport = PortRange{1000, 2000};
  e.dport = PortRange{53, 53};
  e.inInterface = "eth0";
  e.outInterface = "ppp*";
  e.zone = 7;
  e.toAddress = AddrRange{L3::kIpv4, v4("203.0.113.1"), v4("203.0.113.9")};
  e.toPort = PortRange{1024, 65535};
  e.flags = table::natflag::kPersistent | table::natflag::kRandom | table::natflag::kFullyRandom;
  expectSameRule(r, e);
  EXPECT_EQ(r, e);
}

TEST(NatConfigTest, UnsetKeysMatchEverything) {
  const NatRule r = natRule("type = \"masquerade\"");
  NatRule e;
  e.type = NatType::kMasquerade;
  expectSameRule(r, e);
  EXPECT_FALSE(r.family.has_value());  // both families
  EXPECT_EQ(r.inInterface, "");
  EXPECT_EQ(r.flags, 0);
}

TEST(NatConfigTest, SeveralRulesOfEveryTypeInFileOrder) {
  const Config c = parseOk(R"(# NAT for a small office
[[nat.rule]]
type = "masquerade"
out_interface = "eth1"
source = "192.168.0.0/16"
flags = ["random"]

[[nat.rule]]
type = "dnat"
protocol = "tcp"
in_interface = "eth1"
dport = 8080
to_address = "192.168.1.10"
to_port = 80

[[nat.rule]]
type = "snat"
family = "ipv6"
out_interface = "eth2"
source = "fd00::/64"
to_address = "2001:db8::10-2001:db8::1f"
flags = ["persistent", "persistent"]

[[nat.rule]]
type = "redirect"
protocol = "udp"
in_interface = "br*"
dport = "53"
to_port = 5353
zone = 3

[[nat.rule]]
type = "dnat"
protocol = "icmpv6"
to_address = "fd00::2"

[nat]
)");
  const std::vector<NatRule>& rules = c.tracker.nat.rules;
  ASSERT_EQ(rules.size(), 5u);

  NatRule masquerade;
  masquerade.type = NatType::kMasquerade;
  masquerade.family = L3::kIpv4;  // pinned by the source
  masquerade.source = Prefix{L3::kIpv4, v4("192.168.0.0"), 16};
  masquerade.outInterface = "eth1";
  masquerade.flags = table::natflag::kRandom;
  expectSameRule(rules[0], masquerade);

  NatRule forward;
  forward.type = NatType::kDnat;
  forward.family = L3::kIpv4;  // pinned by to_address
  forward.protocol = 6;
  forward.inInterface = "eth1";
  forward.dport = PortRange{8080, 8080};
  forward.toAddress = AddrRange{L3::kIpv4, v4("192.168.1.10"), v4("192.168.1.10")};
  forward.toPort = PortRange{80, 80};
  expectSameRule(rules[1], forward);

  NatRule snat;
  snat.type = NatType::kSnat;
  snat.family = L3::kIpv6;
  snat.source = Prefix{L3::kIpv6, v6("fd00::"), 64};
  snat.outInterface = "eth2";
  snat.toAddress = AddrRange{L3::kIpv6, v6("2001:db8::10"), v6("2001:db8::1f")};
  snat.flags = table::natflag::kPersistent;  // duplicates fold
  expectSameRule(rules[2], snat);

  NatRule redirect;
  redirect.type = NatType::kRedirect;
  redirect.protocol = 17;
  redirect.inInterface = "br*";
  redirect.dport = PortRange{53, 53};
  redirect.toPort = PortRange{5353, 5353};
  redirect.zone = 3;
  expectSameRule(rules[3], redirect);  // no address: both families

  NatRule ping;
  ping.type = NatType::kDnat;
  ping.family = L3::kIpv6;
  ping.protocol = 58;
  ping.toAddress = AddrRange{L3::kIpv6, v6("fd00::2"), v6("fd00::2")};
  expectSameRule(rules[4], ping);
}

TEST(NatConfigTest, InlineArrayOfTables) {
  const Config c = parseOk(
      "[nat]\nrule = [{ type = \"masquerade\" }, { type = \"dnat\", to_address = \"10.0.0.1\" "
      "}]\n");
  ASSERT_EQ(c.tracker.nat.rules.size(), 2u);
  EXPECT_EQ(c.tracker.nat.rules[0].type, NatType::kMasquerade);
  EXPECT_EQ(c.tracker.nat.rules[1].type, NatType::kDnat);
}

TEST(NatConfigTest, TypesAndProtocols) {
  EXPECT_EQ(natRule("type = \"redirect\"").type, NatType::kRedirect);
  const std::pair<const char*, uint8_t> protocols[] = {
      {"tcp", 6},     {"udp", 17},   {"udplite", 136}, {"icmp", 1},
      {"icmpv6", 58}, {"sctp", 132}, {"dccp", 33},     {"gre", 47},
  };
  for (const auto& [name, number] : protocols) {
    EXPECT_EQ(natRule("type = \"masquerade\"\nprotocol = \"" + std::string(name) + "\"").protocol,
              number)
        << name;
  }
}

TEST(NatConfigTest, PortForms) {
  auto sport = [](std::string_view value) {
    return natRule("type = \"masquerade\"\nprotocol = \"tcp\"\nsport = " + std::string(value))
        .sport;
  };
  EXPECT_EQ(sport("80"), (PortRange{80, 80}));
  EXPECT_EQ(sport("\"80\""), (PortRange{80, 80}));
  EXPECT_EQ(sport("\"1000-2000\""), (PortRange{1000, 2000}));
  EXPECT_EQ(sport("\"7-7\""), (PortRange{7, 7}));
  EXPECT_EQ(sport("0"), (PortRange{0, 0}));
  EXPECT_EQ(sport("\"0-65535\""), (PortRange{0, 65535}));
  EXPECT_EQ(sport("\"00443\""), (PortRange{443, 443}));
  for (const char* protocol : {"udp", "udplite", "sctp", "dccp"}) {
    const NatRule r = natRule("type = \"redirect\"\nprotocol = \"" + std::string(protocol) +
                              "\"\ndport = \"1-2\"\nto_port = 65535");
    EXPECT_EQ(r.dport, (PortRange{1, 2})) << protocol;
    EXPECT_EQ(r.toPort, (PortRange{65535, 65535})) << protocol;
  }
  EXPECT_EQ(natRule("type = \"masquerade\"\nprotocol = \"tcp\"\nto_port = \"1-1\"").toPort,
            (PortRange{1, 1}));
}

TEST(NatConfigTest, AddressForms) {
  EXPECT_EQ(natRule("type = \"masquerade\"\nsource = \"10.0.0.1\"").source,
            (Prefix{L3::kIpv4, v4("10.0.0.1"), 32}));
  EXPECT_EQ(natRule("type = \"masquerade\"\ndestination = \"fd00::1\"").destination,
            (Prefix{L3::kIpv6, v6("fd00::1"), 128}));
  EXPECT_EQ(natRule("type = \"masquerade\"\nsource = \"0.0.0.0/0\"").source,
            (Prefix{L3::kIpv4, v4("0.0.0.0"), 0}));
  EXPECT_EQ(natRule("type = \"masquerade\"\nsource = \"::/0\"").source,
            (Prefix{L3::kIpv6, v6("::"), 0}));
  // Bits beyond the length are kept as written (Prefix::contains ignores them).
  EXPECT_EQ(natRule("type = \"masquerade\"\nsource = \"10.1.2.3/8\"").source,
            (Prefix{L3::kIpv4, v4("10.1.2.3"), 8}));
  EXPECT_EQ(natRule("type = \"snat\"\nto_address = \"fd00::1-fd00::1\"").toAddress,
            (AddrRange{L3::kIpv6, v6("fd00::1"), v6("fd00::1")}));
  // Compared as big-endian numbers: .10 is above .9.
  EXPECT_EQ(natRule("type = \"snat\"\nto_address = \"10.0.0.9-10.0.0.10\"").toAddress,
            (AddrRange{L3::kIpv4, v4("10.0.0.9"), v4("10.0.0.10")}));
}

TEST(NatConfigTest, InterfacePatterns) {
  EXPECT_EQ(natRule("type = \"masquerade\"\nout_interface = \"eth*\"").outInterface, "eth*");
  EXPECT_EQ(natRule("type = \"masquerade\"\nout_interface = \"*\"").outInterface, "*");
  EXPECT_EQ(natRule("type = \"snat\"\nto_address = \"10.0.0.1\"\nin_interface = \"bond0.12\"")
                .inInterface,
            "bond0.12");
  // 15 characters before the '*': the longest prefix of a name.
  EXPECT_EQ(natRule("type = \"masquerade\"\nout_interface = \"abcdefghijklmno*\"").outInterface,
            "abcdefghijklmno*");
  EXPECT_EQ(natError("type = \"masquerade\"\nout_interface = \"abcdefghijklmnop*\""),
            "test.toml:3:17: key 'nat.rule[1].out_interface': an interface name has 1 to 15 "
            "characters");
  EXPECT_EQ(natError("type = \"masquerade\"\nout_interface = \"\""),
            "test.toml:3:17: key 'nat.rule[1].out_interface': an interface name has 1 to 15 "
            "characters");
  EXPECT_EQ(natError("type = \"masquerade\"\nin_interface = \"a/b*\""),
            "test.toml:3:16: key 'nat.rule[1].in_interface': not a valid interface name");
  EXPECT_EQ(natError("type = \"masquerade\"\nin_interface = 1"),
            "test.toml:3:16: key 'nat.rule[1].in_interface': expected a string");
}

TEST(NatConfigTest, FamilyIsPinnedByAddressesAndIcmp) {
  EXPECT_FALSE(natRule("type = \"masquerade\"\nprotocol = \"tcp\"").family.has_value());
  EXPECT_EQ(natRule("type = \"masquerade\"\nfamily = \"ipv6\"").family, L3::kIpv6);
  EXPECT_EQ(natRule("type = \"snat\"\nto_address = \"10.0.0.1\"").family, L3::kIpv4);
  EXPECT_EQ(natRule("type = \"snat\"\nto_address = \"fd00::1\"").family, L3::kIpv6);
  EXPECT_EQ(natRule("type = \"masquerade\"\ndestination = \"fd00::/8\"").family, L3::kIpv6);
  EXPECT_EQ(natRule("type = \"masquerade\"\nprotocol = \"icmp\"").family, L3::kIpv4);
  EXPECT_EQ(natRule("type = \"masquerade\"\nprotocol = \"icmpv6\"").family, L3::kIpv6);
  EXPECT_EQ(natRule("type = \"dnat\"\nfamily = \"ipv4\"\nprotocol = \"icmp\"\n"
                    "source = \"10.0.0.0/8\"\ndestination = \"192.0.2.1\"\n"
                    "to_address = \"10.0.0.1\"")
                .family,
            L3::kIpv4);
}

TEST(NatConfigTest, Flags) {
  EXPECT_EQ(natRule("type = \"masquerade\"\nflags = []").flags, 0);
  EXPECT_EQ(natRule("type = \"masquerade\"\nflags = [\"fully-random\"]").flags,
            table::natflag::kFullyRandom);
  EXPECT_EQ(
      natRule("type = \"masquerade\"\nflags = [\"random\", \"persistent\", \"random\"]").flags,
      table::natflag::kRandom | table::natflag::kPersistent);
}

// ------------------------------------------------------------------------ [[nat.rule]] errors

TEST(NatConfigTest, TypeIsRequired) {
  EXPECT_EQ(natError("out_interface = \"eth1\""),
            "test.toml:1:1: key 'nat.rule[1]': a rule needs 'type': \"snat\", \"dnat\", "
            "\"masquerade\" or \"redirect\"");
  EXPECT_EQ(natError("type = \"nat\""),
            "test.toml:2:8: key 'nat.rule[1].type': expected one of \"snat\", \"dnat\", "
            "\"masquerade\", \"redirect\", got \"nat\"");
}

TEST(NatConfigTest, ToAddressIsForSnatAndDnatOnly) {
  EXPECT_EQ(natError("type = \"snat\""),
            "test.toml:1:1: key 'nat.rule[1]': a snat rule needs 'to_address'");
  EXPECT_EQ(natError("type = \"dnat\"\nto_port = 80\nprotocol = \"tcp\""),
            "test.toml:1:1: key 'nat.rule[1]': a dnat rule needs 'to_address'");
  EXPECT_EQ(natError("type = \"masquerade\"\nto_address = \"10.0.0.1\""),
            "test.toml:3:14: key 'nat.rule[1].to_address': a masquerade rule takes the output "
            "interface's address; leave 'to_address' out (or use snat)");
  EXPECT_EQ(natError("type = \"redirect\"\nto_address = \"10.0.0.1\""),
            "test.toml:3:14: key 'nat.rule[1].to_address': a redirect rule takes the input "
            "interface's address; leave 'to_address' out (or use dnat)");
}

TEST(NatConfigTest, NoOutInterfaceBeforeRouting) {
  EXPECT_EQ(natError("type = \"dnat\"\nto_address = \"10.0.0.1\"\nout_interface = \"eth0\""),
            "test.toml:4:17: key 'nat.rule[1].out_interface': a dnat rule is decided before "
            "routing (as at prerouting), when the output interface is not known yet");
  EXPECT_EQ(natError("type = \"redirect\"\nout_interface = \"eth*\""),
            "test.toml:3:17: key 'nat.rule[1].out_interface': a redirect rule is decided before "
            "routing (as at prerouting), when the output interface is not known yet");
  // in_interface is known at both hooks.
  EXPECT_EQ(natRule("type = \"masquerade\"\nin_interface = \"eth0\"\nout_interface = \"eth1\"")
                .inInterface,
            "eth0");
}

TEST(NatConfigTest, PortsNeedAProtocolWithPorts) {
  EXPECT_EQ(natError("type = \"masquerade\"\nsport = 80"),
            "test.toml:3:9: key 'nat.rule[1].sport': needs 'protocol' set to one with ports: tcp, "
            "udp, udplite, sctp or dccp");
  EXPECT_EQ(natError("type = \"masquerade\"\ndport = \"80\""),
            "test.toml:3:9: key 'nat.rule[1].dport': needs 'protocol' set to one with ports: tcp, "
            "udp, udplite, sctp or dccp");
  EXPECT_EQ(natError("type = \"redirect\"\nto_port = 8080"),
            "test.toml:3:11: key 'nat.rule[1].to_port': needs 'protocol' set to one with ports: "
            "tcp, udp, udplite, sctp or dccp");
  EXPECT_EQ(natError("type = \"masquerade\"\nprotocol = \"gre\"\nto_port = 8080"),
            "test.toml:4:11: key 'nat.rule[1].to_port': protocol \"gre\" has no ports; only tcp, "
            "udp, udplite, sctp and dccp have");
  // Each key is reported.
  EXPECT_EQ(
      natError("type = \"masquerade\"\nprotocol = \"icmp\"\nsport = 1\ndport = 2\nto_port = 3"),
      "test.toml:4:9: key 'nat.rule[1].sport': protocol \"icmp\" has no ports; only tcp, "
      "udp, udplite, sctp and dccp have\n"
      "test.toml:5:9: key 'nat.rule[1].dport': protocol \"icmp\" has no ports; only tcp, "
      "udp, udplite, sctp and dccp have\n"
      "test.toml:6:11: key 'nat.rule[1].to_port': protocol \"icmp\" has no ports; only tcp, "
      "udp, udplite, sctp and dccp have");
}

TEST(NatConfigTest, IcmpProtocolsHaveTheirFamily) {
  EXPECT_EQ(natError("type = \"masquerade\"\nprotocol = \"icmp\"\nfamily = \"ipv6\""),
            "test.toml:3:12: key 'nat.rule[1].protocol': \"icmp\" is for IPv4, but 'family' is "
            "\"ipv6\" (one address family per rule)");
  EXPECT_EQ(natError("type = \"masquerade\"\nfamily = \"ipv4\"\nprotocol = \"icmpv6\""),
            "test.toml:4:12: key 'nat.rule[1].protocol': \"icmpv6\" is for IPv6, but 'family' is "
            "\"ipv4\" (one address family per rule)");
  EXPECT_EQ(natError("type = \"masquerade\"\nprotocol = \"icmp\"\nsource = \"fd00::/8\""),
            "test.toml:3:12: key 'nat.rule[1].protocol': \"icmp\" is for IPv4, but 'source' is "
            "IPv6 (one address family per rule)");
}

TEST(NatConfigTest, OneAddressFamilyPerRule) {
  // Reported at each key that disagrees with the first one in the file.
  EXPECT_EQ(natError("type = \"masquerade\"\nfamily = \"ipv4\"\nsource = \"fd00::/8\""),
            "test.toml:4:10: key 'nat.rule[1].source': an IPv6 address, but 'family' is \"ipv4\" "
            "(one address family per rule)");
  EXPECT_EQ(natError("type = \"masquerade\"\nsource = \"fd00::/8\"\nfamily = \"ipv4\""),
            "test.toml:4:10: key 'nat.rule[1].family': \"ipv4\", but 'source' is IPv6 (one "
            "address family per rule)");
  EXPECT_EQ(natError("type = \"snat\"\nsource = \"10.0.0.0/8\"\ndestination = \"fd00::1\"\n"
                     "to_address = \"fd00::2\""),
            "test.toml:4:15: key 'nat.rule[1].destination': an IPv6 address, but 'source' is IPv4 "
            "(one address family per rule)\n"
            "test.toml:5:14: key 'nat.rule[1].to_address': an IPv6 address, but 'source' is IPv4 "
            "(one address family per rule)");
  EXPECT_EQ(natError("type = \"dnat\"\nfamily = \"ipv6\"\nto_address = \"10.0.0.1\""),
            "test.toml:4:14: key 'nat.rule[1].to_address': an IPv4 address, but 'family' is "
            "\"ipv6\" (one address family per rule)");
  EXPECT_EQ(natError("type = \"snat\"\nto_address = \"10.0.0.1-fd00::1\""),
            "test.toml:3:14: key 'nat.rule[1].to_address': \"10.0.0.1-fd00::1\" mixes IPv4 and "
            "IPv6");
}

TEST(NatConfigTest, ValuesAreChecked) {
  EXPECT_EQ(natError("type = \"masquerade\"\nfamily = \"inet\""),
            "test.toml:3:10: key 'nat.rule[1].family': expected one of \"ipv4\", \"ipv6\", got "
            "\"inet\"");
  EXPECT_EQ(natError("type = \"masquerade\"\nprotocol = 6"),
            "test.toml:3:12: key 'nat.rule[1].protocol': expected a string");
  EXPECT_EQ(natError("type = \"masquerade\"\nprotocol = \"ospf\""),
            "test.toml:3:12: key 'nat.rule[1].protocol': expected one of \"tcp\", \"udp\", "
            "\"udplite\", \"icmp\", \"icmpv6\", \"sctp\", \"dccp\", \"gre\", got \"ospf\"");
  EXPECT_EQ(natError("type = \"masquerade\"\nsource = \"lan\""),
            "test.toml:3:10: key 'nat.rule[1].source': \"lan\" is not an IPv4 or IPv6 address");
  EXPECT_EQ(natError("type = \"masquerade\"\nsource = \"10.0.0.0/33\""),
            "test.toml:3:10: key 'nat.rule[1].source': \"/33\" is not a prefix length 0..32");
  EXPECT_EQ(natError("type = \"masquerade\"\ndestination = \"fd00::/129\""),
            "test.toml:3:15: key 'nat.rule[1].destination': \"/129\" is not a prefix length "
            "0..128");
  EXPECT_EQ(natError("type = \"masquerade\"\ndestination = \"fe80::1%eth0\""),
            "test.toml:3:15: key 'nat.rule[1].destination': \"fe80::1%eth0\": a zone suffix "
            "(\"%eth0\") is not allowed here");
  EXPECT_EQ(natError("type = \"masquerade\"\ndestination = \"fe80::%eth0/64\""),
            "test.toml:3:15: key 'nat.rule[1].destination': \"fe80::%eth0\": a zone suffix "
            "(\"%eth0\") is not allowed here");
  EXPECT_EQ(natError("type = \"masquerade\"\ndestination = [\"10.0.0.1\"]"),
            "test.toml:3:15: key 'nat.rule[1].destination': expected a string");
  EXPECT_EQ(natError("type = \"masquerade\"\nzone = 65536"),
            "test.toml:3:8: key 'nat.rule[1].zone': 65536 is out of range 0..65535");
  EXPECT_EQ(natError("type = \"masquerade\"\nzone = \"1\""),
            "test.toml:3:8: key 'nat.rule[1].zone': expected an integer");
  EXPECT_EQ(natError("type = \"masquerade\"\nflags = \"random\""),
            "test.toml:3:9: key 'nat.rule[1].flags': expected an array");
  EXPECT_EQ(natError("type = \"masquerade\"\nflags = [\"random\", \"sticky\"]"),
            "test.toml:3:9: key 'nat.rule[1].flags': element 2: expected one of \"persistent\", "
            "\"random\", \"fully-random\", got \"sticky\"");
}

TEST(NatConfigTest, PortValuesAreChecked) {
  auto error = [](std::string_view key, std::string_view value) {
    return natError("type = \"masquerade\"\nprotocol = \"tcp\"\n" + std::string(key) + " = " +
                    std::string(value));
  };
  EXPECT_EQ(error("sport", "65536"),
            "test.toml:4:9: key 'nat.rule[1].sport': port 65536 is out of range 0..65535");
  EXPECT_EQ(error("sport", "-1"),
            "test.toml:4:9: key 'nat.rule[1].sport': port -1 is out of range 0..65535");
  EXPECT_EQ(error("dport", "\"1-65536\""),
            "test.toml:4:9: key 'nat.rule[1].dport': port 65536 is out of range 0..65535");
  EXPECT_EQ(error("dport", "\"999999999\""),
            "test.toml:4:9: key 'nat.rule[1].dport': port 999999999 is out of range 0..65535");
  EXPECT_EQ(error("sport", "\"90-80\""),
            "test.toml:4:9: key 'nat.rule[1].sport': \"90-80\" is not a range: 90 is above 80");
  for (const char* bad : {"\"http\"", "\"\"", "\"-5\"", "\"5-\"", "\"1-2-3\"", "\" 80\"", "\"+80\"",
                          "\"1000000000\""}) {
    EXPECT_EQ(error("sport", bad), "test.toml:4:9: key 'nat.rule[1].sport': " + std::string(bad) +
                                       " is not a port or a port range \"MIN-MAX\"")
        << bad;
  }
  EXPECT_EQ(error("dport", "80.0"),
            "test.toml:4:9: key 'nat.rule[1].dport': expected a port: an integer, or a string "
            "\"PORT\" or \"MIN-MAX\"");
  EXPECT_EQ(error("dport", "[80]"),
            "test.toml:4:9: key 'nat.rule[1].dport': expected a port: an integer, or a string "
            "\"PORT\" or \"MIN-MAX\"");
  // A translation to port 0 is meaningless.
  EXPECT_EQ(error("to_port", "0"),
            "test.toml:4:11: key 'nat.rule[1].to_port': port 0 is out of range 1..65535");
  EXPECT_EQ(error("to_port", "\"0-100\""),
            "test.toml:4:11: key 'nat.rule[1].to_port': port 0 is out of range 1..65535");
  EXPECT_EQ(error("to_port", "\"2000-1000\""),
            "test.toml:4:11: key 'nat.rule[1].to_port': \"2000-1000\" is not a range: 2000 is "
            "above 1000");
}

TEST(NatConfigTest, ToAddressValuesAreChecked) {
  auto error = [](std::string_view value) {
    return natError("type = \"snat\"\nto_address = " + std::string(value));
  };
  EXPECT_EQ(error("\"10.0.0.9-10.0.0.1\""),
            "test.toml:3:14: key 'nat.rule[1].to_address': \"10.0.0.9-10.0.0.1\" is not a range: "
            "10.0.0.9 is above 10.0.0.1");
  EXPECT_EQ(error("\"fd00::2:0-fd00::1:ffff\""),
            "test.toml:3:14: key 'nat.rule[1].to_address': \"fd00::2:0-fd00::1:ffff\" is not a "
            "range: fd00::2:0 is above fd00::1:ffff");
  EXPECT_EQ(error("\"gw\""),
            "test.toml:3:14: key 'nat.rule[1].to_address': \"gw\" is not an IPv4 or IPv6 address");
  EXPECT_EQ(error("\"10.0.0.1-\""),
            "test.toml:3:14: key 'nat.rule[1].to_address': \"\" is not an IPv4 or IPv6 address");
  EXPECT_EQ(error("\"10.0.0.0/24\""),
            "test.toml:3:14: key 'nat.rule[1].to_address': \"10.0.0.0/24\" is not an IPv4 or IPv6 "
            "address");
  EXPECT_EQ(error("\"fe80::1%eth0\""),
            "test.toml:3:14: key 'nat.rule[1].to_address': \"fe80::1%eth0\": a zone suffix "
            "(\"%eth0\") is not allowed here");
  EXPECT_EQ(error("\"10.0.0.1\\u0000x\""),
            "test.toml:3:14: key 'nat.rule[1].to_address': \"10.0.0.1\\x00x\" is not an IPv4 or "
            "IPv6 address");
  EXPECT_EQ(error("167772161"), "test.toml:3:14: key 'nat.rule[1].to_address': expected a string");
}

TEST(NatConfigTest, UnknownKeysAndShapes) {
  EXPECT_EQ(natError("type = \"masquerade\"\nfoo = 1"),
            "test.toml:3:1: unknown key 'nat.rule[1].foo'");
  EXPECT_EQ(parseError("[nat]\nrules = []\n"), "test.toml:2:1: unknown key 'nat.rules'");
  EXPECT_EQ(parseError("[nat.masquerade]\n"), "test.toml:1:6: unknown key 'nat.masquerade'");
  EXPECT_EQ(parseError("nat = 5\n"), "test.toml:1:7: key 'nat': expected a table");
  EXPECT_EQ(parseError("[nat]\nrule = { type = \"masquerade\" }\n"),
            "test.toml:2:8: key 'nat.rule': expected tables: write each rule as a [[nat.rule]] "
            "section");
  EXPECT_EQ(parseError("[nat]\nrule = [\"masquerade\"]\n"),
            "test.toml:2:8: key 'nat.rule': expected tables: write each rule as a [[nat.rule]] "
            "section");
  EXPECT_EQ(parseError("[nat.rule]\ntype = \"masquerade\"\n"),
            "test.toml:1:1: key 'nat.rule': expected tables: write each rule as a [[nat.rule]] "
            "section");
}

TEST(NatConfigTest, ErrorsNameTheRuleAndComeInFileOrder) {
  EXPECT_EQ(parseError(R"([[nat.rule]]
type = "masquerade"
[[nat.rule]]
type = "snat"
to_address = "10.0.0.1"
zone = -1
bogus = true
[[nat.rule]]
type = "dnat"
[tracker]
max = 0
)"),
            "test.toml:6:8: key 'nat.rule[2].zone': -1 is out of range 0..65535\n"
            "test.toml:7:1: unknown key 'nat.rule[2].bogus'\n"
            "test.toml:8:1: key 'nat.rule[3]': a dnat rule needs 'to_address'\n"
            "test.toml:11:7: key 'tracker.max': 0 is out of range 1..1073741824");
}

TEST(NatConfigTest, ChecksAcrossKeysAreSkippedWhenAKeyIsBad) {
  // No "needs 'to_address'" and no "needs 'protocol'" on top of the real problem.
  EXPECT_EQ(natError("type = \"snat\"\nsport = \"x\""),
            "test.toml:3:9: key 'nat.rule[1].sport': \"x\" is not a port or a port range "
            "\"MIN-MAX\"");
  // Several problems across keys of one rule are all reported.
  EXPECT_EQ(natError("type = \"dnat\"\nout_interface = \"eth0\"\ndport = 80"),
            "test.toml:1:1: key 'nat.rule[1]': a dnat rule needs 'to_address'\n"
            "test.toml:3:17: key 'nat.rule[1].out_interface': a dnat rule is decided before "
            "routing (as at prerouting), when the output interface is not known yet\n"
            "test.toml:4:9: key 'nat.rule[1].dport': needs 'protocol' set to one with ports: tcp, "
            "udp, udplite, sctp or dccp");
}

// ---------------------------------------------------------------------------------- [replay]

TEST(ReplayConfigTest, Defaults) {
  const ReplaySettings r = parseOk("").replay;
  EXPECT_TRUE(r.inside.empty());
  EXPECT_EQ(r.inInterface, "in0");
  EXPECT_EQ(r.outInterface, "out0");
  EXPECT_TRUE(r.outAddresses.empty());
  EXPECT_TRUE(r.inAddresses.empty());
  EXPECT_TRUE(r.dropInvalid);
  EXPECT_EQ(parseOk("[replay]\n").replay.inInterface, "in0");
}

TEST(ReplayConfigTest, EveryKeyIsRead) {
  const ReplaySettings r = parseOk(R"([replay]
inside = ["192.168.0.0/16", "fd00::/64", "10.9.9.9"]
in_interface = "lan"
out_interface = "wan"
out_addresses = ["203.0.113.1", "2001:db8::1"]
in_addresses = ["192.168.0.1"]
drop_invalid = false
)")
                               .replay;
  EXPECT_EQ(r.inside, (std::vector<Prefix>{{L3::kIpv4, v4("192.168.0.0"), 16},
                                           {L3::kIpv6, v6("fd00::"), 64},
                                           {L3::kIpv4, v4("10.9.9.9"), 32}}));
  EXPECT_EQ(r.inInterface, "lan");
  EXPECT_EQ(r.outInterface, "wan");
  EXPECT_EQ(r.outAddresses, (std::vector<table::IpAddress>{{L3::kIpv4, v4("203.0.113.1")},
                                                           {L3::kIpv6, v6("2001:db8::1")}}));
  EXPECT_EQ(r.inAddresses, (std::vector<table::IpAddress>{{L3::kIpv4, v4("192.168.0.1")}}));
  EXPECT_FALSE(r.dropInvalid);
}

TEST(ReplayConfigTest, InterfacesMustDiffer) {
  EXPECT_EQ(parseError("[replay]\nin_interface = \"eth0\"\nout_interface = \"eth0\"\n"),
            "test.toml:3:17: key 'replay.out_interface': must differ from in_interface (both "
            "\"eth0\")");
  EXPECT_EQ(parseError("[replay]\nin_interface = \"out0\"\n"),
            "test.toml:2:16: key 'replay.in_interface': must differ from out_interface (both "
            "\"out0\")");
  EXPECT_EQ(parseError("[replay]\nout_interface = \"in0\"\n"),
            "test.toml:2:17: key 'replay.out_interface': must differ from in_interface (both "
            "\"in0\")");
  // Swapped is fine.
  const ReplaySettings r =
      parseOk("[replay]\nin_interface = \"out0\"\nout_interface = \"in0\"\n").replay;
  EXPECT_EQ(r.inInterface, "out0");
  EXPECT_EQ(r.outInterface, "in0");
}

TEST(ReplayConfigTest, ValuesAreChecked) {
  EXPECT_EQ(parseError("[replay]\nin_interface = \"eth*\"\n"),
            "test.toml:2:16: key 'replay.in_interface': \"eth*\" is a pattern; this names one "
            "interface");
  EXPECT_EQ(parseError("[replay]\nout_interface = \"a:b\"\n"),
            "test.toml:2:17: key 'replay.out_interface': not a valid interface name");
  EXPECT_EQ(parseError("[replay]\nout_interface = \"\"\n"),
            "test.toml:2:17: key 'replay.out_interface': an interface name has 1 to 15 characters");
  EXPECT_EQ(parseError("[replay]\ninside = \"10.0.0.0/8\"\n"),
            "test.toml:2:10: key 'replay.inside': expected an array");
  EXPECT_EQ(parseError("[replay]\ninside = [\"10.0.0.0/8\", \"10.0.0.0/40\"]\n"),
            "test.toml:2:10: key 'replay.inside': element 2: \"/40\" is not a prefix length 0..32");
  EXPECT_EQ(parseError("[replay]\nout_addresses = [\"203.0.113.0/24\"]\n"),
            "test.toml:2:17: key 'replay.out_addresses': element 1: \"203.0.113.0/24\" is not an "
            "IPv4 or IPv6 address");
  EXPECT_EQ(parseError("[replay]\nin_addresses = [\"fd00::1\", \"fe80::1%in0\"]\n"),
            "test.toml:2:16: key 'replay.in_addresses': element 2: \"fe80::1%in0\": a zone suffix "
            "(\"%in0\") is not allowed here");
  EXPECT_EQ(parseError("[replay]\nin_addresses = [1]\n"),
            "test.toml:2:16: key 'replay.in_addresses': element 1: expected a string");
  EXPECT_EQ(parseError("[replay]\ndrop_invalid = \"yes\"\n"),
            "test.toml:2:16: key 'replay.drop_invalid': expected a boolean");
  EXPECT_EQ(parseError("[replay]\ninterface = \"eth0\"\n"),
            "test.toml:2:1: unknown key 'replay.interface'");
}

TEST(ReplayConfigTest, InterfaceCheckIsSkippedWhenAKeyIsBad) {
  EXPECT_EQ(parseError("[replay]\nin_interface = \"out0\"\ndrop_invalid = 1\n"),
            "test.toml:3:16: key 'replay.drop_invalid': expected a boolean");
}

// --------------------------------------------------------------------- the example's sections

// The example file with its commented-out settings ("#key = ...", "#[section]") switched on.
std::string exampleWithCommentedSettings() {
  std::ifstream in(kExampleConfig);
  std::string text, line;
  while (std::getline(in, line)) {
    if (line.size() > 1 && line[0] == '#' && line[1] != ' ' && line[1] != '#') line.erase(0, 1);
    text += line + "\n";
  }
  return text;
}

TEST(ConfigTest, ExampleFileHasNoNatRulesAndDefaultReplay) {
  ConfigResult r = loadConfig(kExampleConfig);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(r.value().tracker.nat.rules.empty());
  EXPECT_EQ(r.value().replay.inInterface, "in0");
  EXPECT_TRUE(r.value().replay.inside.empty());
}

TEST(ConfigTest, ExampleFileCommentedNatAndReplaySectionsParse) {
  const std::string text = exampleWithCommentedSettings();
  for (const char* key : {"type", "family", "protocol", "source", "destination", "sport", "dport",
                          "in_interface", "out_interface", "zone", "to_address", "to_port", "flags",
                          "inside", "out_addresses", "in_addresses", "drop_invalid"}) {
    EXPECT_NE(text.find(std::string("\n") + key + " = "), std::string::npos) << key;
  }
  const Config c = parseOk(text);
  const std::vector<NatRule>& rules = c.tracker.nat.rules;
  ASSERT_EQ(rules.size(), 2u);

  NatRule masquerade;
  masquerade.type = NatType::kMasquerade;
  masquerade.family = L3::kIpv4;
  masquerade.source = Prefix{L3::kIpv4, v4("192.168.0.0"), 16};
  masquerade.outInterface = "eth1";
  masquerade.flags = table::natflag::kRandom;
  expectSameRule(rules[0], masquerade);

  NatRule forward;
  forward.type = NatType::kDnat;
  forward.family = L3::kIpv4;
  forward.protocol = 6;
  forward.inInterface = "eth1";
  forward.destination = Prefix{L3::kIpv4, v4("203.0.113.1"), 32};
  forward.sport = PortRange{1024, 65535};
  forward.dport = PortRange{8080, 8080};
  forward.zone = 0;
  forward.toAddress = AddrRange{L3::kIpv4, v4("192.168.1.10"), v4("192.168.1.10")};
  forward.toPort = PortRange{80, 80};
  expectSameRule(rules[1], forward);

  // The commented [replay] shows the defaults, with example addresses.
  const ReplaySettings d;
  EXPECT_EQ(c.replay.inside.size(), 2u);
  EXPECT_EQ(c.replay.inInterface, d.inInterface);
  EXPECT_EQ(c.replay.outInterface, d.outInterface);
  EXPECT_EQ(c.replay.outAddresses.size(), 2u);
  EXPECT_EQ(c.replay.inAddresses.size(), 2u);
  EXPECT_EQ(c.replay.dropInvalid, d.dropInvalid);
}

}  // namespace
}  // namespace ctsync::conf
