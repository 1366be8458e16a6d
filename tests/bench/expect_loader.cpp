// Fills the kernel of the namespace it runs in with N FTP control flows (helper "ftp", the
// kernel's own, ESTABLISHED and ASSURED) and one expectation each, as the ftp helper makes them
// for a PORT: the expectation scenario of vs_conntrackd.sh, which conntrack(8) cannot create
// (it sets no helper on a flow, and an expectation needs one on its master). Uses ctsyncd's own
// kernel sink, batched. Prints "masters M expectations E seconds S".
//
// Usage: expect_loader N     (root, in the namespace: ip netns exec NS expect_loader N)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "syncd/kernel.hpp"
#include "syncd/kernel_expect.hpp"
#include "table/tcp.hpp"

using namespace ctsync;

int main(int argc, char** argv) {
  const long n = argc == 2 ? std::strtol(argv[1], nullptr, 10) : 0;
  if (n <= 0 || n > 1'000'000) {
    std::fprintf(stderr, "usage: expect_loader N   (1 .. 1000000)\n");
    return 2;
  }
  conf::KernelSettings settings;
  auto sinkOr = syncd::KernelSink::open(settings);
  auto expectOr = syncd::KernelExpectSink::open(settings);
  if (auto* e = std::get_if<std::string>(&sinkOr)) {
    std::fprintf(stderr, "expect_loader: %s\n", e->c_str());
    return 1;
  }
  if (auto* e = std::get_if<std::string>(&expectOr)) {
    std::fprintf(stderr, "expect_loader: %s\n", e->c_str());
    return 1;
  }
  auto& sink = *std::get<std::unique_ptr<syncd::KernelSink>>(sinkOr);
  auto& expectSink = *std::get<std::unique_ptr<syncd::KernelExpectSink>>(expectOr);

  const table::Addr server = table::Addr::v4(0xc0000a0a);  // 192.0.10.10
  std::vector<replication::FlowRecord> masters;
  std::vector<replication::ExpectRecord> expects;
  for (long i = 0; i < n; ++i) {
    // Clients 10.64.0.0/10 one per master: 10.64.0.1, 10.64.0.2, ...
    const table::Addr client = table::Addr::v4(0x0a400000u + static_cast<uint32_t>(i) + 1);
    replication::FlowRecord m;
    m.key.orig = {client, server, 40000, 21, table::L3::kIpv4, table::proto::kTcp};
    m.reply = {server, client, 21, 40000, table::L3::kIpv4, table::proto::kTcp};
    m.status = table::status::kSeenReply | table::status::kAssured;
    m.tcpState = static_cast<uint8_t>(table::TcpState::kEstablished);
    m.timeoutSec = 3600;
    m.helper = 1;  // ftp
    replication::ExpectRecord e;
    e.master = m.key.orig;
    // PORT from the client: the server connects from any port to the client's data port.
    e.key.expected = {server, client, 0, 50000, table::L3::kIpv4, table::proto::kTcp};
    e.mask = {table::Addr::v4(0xffffffff), table::Addr::v4(0xffffffff), 0, 0xffff,
              table::L3::kIpv4, table::proto::kTcp};
    e.timeoutSec = 3000;
    e.helper = 1;
    masters.push_back(m);
    expects.push_back(e);
  }
  const auto t0 = std::chrono::steady_clock::now();
  const syncd::CommitResult flows = sink.commit(masters);
  const syncd::ExpectCommitResult ex = expectSink.commit(expects);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("masters %zu expectations %zu seconds %.3f\n", flows.created, ex.created, s);
  if (!flows.errors.empty()) std::fprintf(stderr, "first flow error: %s\n", flows.errors[0].c_str());
  if (!ex.errors.empty()) std::fprintf(stderr, "first expectation error: %s\n", ex.errors[0].c_str());
  return flows.created == masters.size() && ex.created == expects.size() ? 0 : 1;
}
