// The daemon's pieces that need no kernel: flow lines as conntrack prints them, the Prometheus
// text, and metrics over HTTP.
// clang-format off
#include <utility>  // before asio: Boost 1.74 with GCC 12 in C++20 mode needs it
// clang-format on

#include <gtest/gtest.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <string>
#include <thread>

#include "syncd/flow_format.hpp"
#include "syncd/metrics.hpp"
#include "table/tcp.hpp"

namespace ctsync::syncd {
namespace {

using replication::FlowRecord;
using table::Addr;
using table::Tuple;

FlowRecord natTcp() {
  FlowRecord r;
  r.key.orig = {Addr::v4(0x0a010002), Addr::v4(0xc0a80a02), 40000, 80,
                table::L3::kIpv4,     table::proto::kTcp};
  r.reply = {Addr::v4(0xc0a80a02), Addr::v4(0xc0a80a01), 80, 61000,
             table::L3::kIpv4,     table::proto::kTcp};
  r.status = table::status::kSeenReply | table::status::kAssured | table::status::kConfirmed |
             table::status::kSrcNat | table::status::kSrcNatDone;
  r.tcpState = static_cast<uint8_t>(table::TcpState::kEstablished);
  r.mark = 7;
  r.version.node = 2;
  r.version.generation = 3;
  return r;
}

TEST(FlowFormatTest, ListLineIsConntrackExtended) {
  EXPECT_EQ(formatFlow(natTcp(), 431999),
            "ipv4     2 tcp      6 431999 ESTABLISHED src=10.1.0.2 dst=192.168.10.2 sport=40000 "
            "dport=80 src=192.168.10.2 dst=192.168.10.1 sport=80 dport=61000 [ASSURED] mark=7 "
            "use=1");
}

TEST(FlowFormatTest, EventLinesAndUnrepliedUdp) {
  FlowRecord r;
  r.key.orig = {Addr::v4(0x0a010002), Addr::v4(0xc0a80a02), 5000, 53,
                table::L3::kIpv4,     table::proto::kUdp};
  r.reply = {Addr::v4(0xc0a80a02), Addr::v4(0x0a010002), 53, 5000,
             table::L3::kIpv4,     table::proto::kUdp};
  r.key.zone = 4;
  EXPECT_EQ(formatFlow(r, 30, "NEW"),
            "    [NEW] ipv4     2 udp      17 30 src=10.1.0.2 dst=192.168.10.2 sport=5000 dport=53 "
            "[UNREPLIED] src=192.168.10.2 dst=10.1.0.2 sport=53 dport=5000 mark=0 zone=4");
  EXPECT_EQ(formatFlowKey(r.key, "DESTROY"),
            "[DESTROY] ipv4     2 udp      17 src=10.1.0.2 dst=192.168.10.2 sport=5000 dport=53 "
            "zone=4");
}

// What conntrack -L prints for an FTP control flow and an SCTP association (checked against
// conntrack v1.4.7 on Linux 6.18: the state word, then helper= after mark and zone).
TEST(FlowFormatTest, HelperAndSctpState) {
  FlowRecord ftp = natTcp();
  ftp.key.orig.dport = 21;
  ftp.reply.sport = 21;
  ftp.helper = 1;
  ftp.key.zone = 3;
  EXPECT_EQ(formatFlow(ftp, 300),
            "ipv4     2 tcp      6 300 ESTABLISHED src=10.1.0.2 dst=192.168.10.2 sport=40000 "
            "dport=21 src=192.168.10.2 dst=192.168.10.1 sport=21 dport=61000 [ASSURED] mark=7 "
            "zone=3 helper=ftp use=1");
  ftp.status |= table::status::kSeqAdjust;
  ftp.seqAdj[0] = {1000, 0, -1};
  const std::string j = formatFlowJson(ftp, 300);
  EXPECT_NE(j.find("\"helper\":\"ftp\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"seq_adjust_orig\":{\"correction_pos\":1000,\"offset_before\":0,"
                   "\"offset_after\":-1}"),
            std::string::npos)
      << j;

  FlowRecord sctp;
  sctp.key.orig = {Addr::v4(0x0a000001), Addr::v4(0x0a000002), 1, 2, table::L3::kIpv4, 132};
  sctp.reply = {Addr::v4(0x0a000002), Addr::v4(0x0a000001), 2, 1, table::L3::kIpv4, 132};
  sctp.sctpState = 4;
  EXPECT_EQ(formatFlow(sctp, 99),
            "ipv4     2 sctp     132 99 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2 "
            "[UNREPLIED] src=10.0.0.2 dst=10.0.0.1 sport=2 dport=1 mark=0 use=1");
}

// The line conntrack -L expect printed for this expectation on Linux 6.18 (kernel_netns's
// ExpectationsCommittedDumpedAndFollowed made it there).
TEST(FlowFormatTest, ExpectationLineIsConntracks) {
  replication::ExpectRecord e;
  e.key.expected = {Addr::v4(0x0a460002), Addr::v4(0x0a460101), 0, 50000, table::L3::kIpv4,
                    table::proto::kTcp};
  e.mask = {Addr::v4(0xffffffff), Addr::v4(0xffffffff), 0, 0xffff, table::L3::kIpv4,
            table::proto::kTcp};
  e.master = {Addr::v4(0x0a460001), Addr::v4(0x0a460002), 40000, 21, table::L3::kIpv4,
              table::proto::kTcp};
  e.helper = 1;
  EXPECT_EQ(formatExpect(e, 199),
            "199 proto=6 src=10.70.0.2 dst=10.70.1.1 sport=0 dport=50000 "
            "mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535 "
            "master-src=10.70.0.1 master-dst=10.70.0.2 sport=40000 dport=21 class=0 helper=ftp");
  e.flags = replication::expectflag::kPermanent | replication::expectflag::kInactive;
  e.key.zone = 2;
  EXPECT_NE(formatExpect(e, 5, "NEW").find("    [NEW] 5 proto=6 "), std::string::npos);
  EXPECT_NE(formatExpect(e, 5).find("dport=21 zone=2 PERMANENT,INACTIVE class=0 helper=ftp"),
            std::string::npos)
      << formatExpect(e, 5);
  e.fn = 1;
  e.natTuple = table::Tuple{Addr::v4(0x0a010064), Addr{}, 40001, 0, table::L3::kIpv4,
                            table::proto::kTcp};
  e.natDir = 1;
  const std::string j = formatExpectJson(e, 5);
  EXPECT_NE(j.find("\"fn\":\"nat-follow-master\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"nat\":{\"dir\":1,\"src\":\"10.1.0.100\",\"sport\":40001}"),
            std::string::npos)
      << j;
}

TEST(FlowFormatTest, JsonCarriesOwnerAndFlags) {
  const std::string j = formatFlowJson(natTcp(), 100, "UPDATE");
  EXPECT_EQ(j.front(), '{');
  EXPECT_EQ(j.back(), '}');
  EXPECT_NE(j.find("\"event\":\"UPDATE\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"state\":\"ESTABLISHED\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"flags\":[\"seen_reply\",\"assured\",\"src_nat\"]"), std::string::npos) << j;
  EXPECT_NE(j.find("\"reply\":{\"src\":\"192.168.10.2\",\"dst\":\"192.168.10.1\",\"sport\":80,"
                   "\"dport\":61000}"),
            std::string::npos)
      << j;
  EXPECT_NE(j.find("\"owner\":2,\"generation\":3"), std::string::npos) << j;
}

TEST(MetricsTest, PrometheusTextDescribesEachNameOnce) {
  const std::vector<Metric> m = {
      {"ctsync_peer_lag", "peer=\"2\"", "unacknowledged", false, 3},
      {"ctsync_peer_lag", "peer=\"3\"", "unacknowledged", false, 0},
      {"ctsync_bytes_sent_total", "", "bytes", true, 12345678901.0},
  };
  EXPECT_EQ(prometheusText(m),
            "# HELP ctsync_peer_lag unacknowledged\n"
            "# TYPE ctsync_peer_lag gauge\n"
            "ctsync_peer_lag{peer=\"2\"} 3\n"
            "ctsync_peer_lag{peer=\"3\"} 0\n"
            "# HELP ctsync_bytes_sent_total bytes\n"
            "# TYPE ctsync_bytes_sent_total counter\n"
            "ctsync_bytes_sent_total 12345678901\n");
}

// A real HTTP exchange on 127.0.0.1: /metrics answers, other paths are 404, and a listen
// address that is not one is refused with its text.
TEST(MetricsTest, ServesMetricsOverHttp) {
  boost::asio::io_context io;
  auto opened = MetricsServer::open(io, "127.0.0.1:0", [] {
    return std::vector<Metric>{{"ctsync_replica_flows", "", "flows", false, 42}};
  });
  ASSERT_TRUE(std::holds_alternative<std::unique_ptr<MetricsServer>>(opened));
  auto& server = std::get<std::unique_ptr<MetricsServer>>(opened);
  const uint16_t port = server->port();
  ASSERT_NE(port, 0);
  std::thread t([&io] { io.run_for(std::chrono::seconds(5)); });
  auto get = [port](const std::string& path) {
    boost::asio::io_context cio;
    boost::asio::ip::tcp::socket s(cio);
    s.connect({boost::asio::ip::make_address("127.0.0.1"), port});
    const std::string req = "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    boost::asio::write(s, boost::asio::buffer(req));
    std::string resp;
    boost::system::error_code ec;
    boost::asio::read(s, boost::asio::dynamic_buffer(resp), ec);
    return resp;
  };
  const std::string ok = get("/metrics");
  const std::string missing = get("/other");
  io.stop();
  t.join();
  EXPECT_EQ(ok.rfind("HTTP/1.1 200 OK", 0), 0u) << ok;
  EXPECT_NE(ok.find("\r\n\r\n# HELP ctsync_replica_flows flows\n# TYPE ctsync_replica_flows "
                    "gauge\nctsync_replica_flows 42\n"),
            std::string::npos)
      << ok;
  EXPECT_EQ(missing.rfind("HTTP/1.1 404", 0), 0u) << missing;

  boost::asio::io_context io2;
  auto bad = MetricsServer::open(io2, "localhost:9100", [] { return std::vector<Metric>{}; });
  ASSERT_TRUE(std::holds_alternative<std::string>(bad));
  EXPECT_NE(std::get<std::string>(bad).find("'localhost' is not an address"), std::string::npos);
}

}  // namespace
}  // namespace ctsync::syncd
