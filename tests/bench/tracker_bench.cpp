// Tracker throughput and memory on one core. Prints its figures; exits non-zero only if the
// tracker misjudged the benchmark's own packets (a benchmark that measures the invalid path
// measures nothing).
//
//   tracker_bench [--quick]
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "table/tracker.hpp"
#include "tests/bench/bench_util.hpp"
#include "tests/support/packet_builder.hpp"

using namespace ctsync::table;
using namespace ctsync::testing;
using namespace ctsync::bench;

namespace {

constexpr Nanos kT0 = seconds(1'700'000'000);

uint32_t clientOf(uint32_t i) {
  return v4(10, static_cast<uint8_t>(1 + (i >> 16)), 0, 0) | (i & 0xffff);
}
const uint32_t kServer = v4(192, 0, 2, 1);
uint16_t portOf(uint32_t i) {
  return static_cast<uint16_t>(10000 + (i % 50000));
}

TrackerSettings settingsFor(uint32_t flows) {
  TrackerSettings s;
  uint32_t n = 1;
  while (n < flows) n <<= 1;
  s.table.maxEntries = n;
  s.table.buckets = 2 * n;  // one chain node per bucket on average (each entry has two)
  return s;
}

// Sets up `flows` established TCP flows with a handshake each. Returns false if any step was
// not judged as the kernel would.
bool establish(Tracker& t, uint32_t flows, Nanos now) {
  for (uint32_t i = 0; i < flows; ++i) {
    const uint32_t c = clientOf(i);
    const uint16_t p = portOf(i);
    const auto syn = ipv4Tcp(c, kServer, p, 80, {tcpf::kSyn, 1000, 0, 65535});
    const auto synack = ipv4Tcp(kServer, c, 80, p, {tcpf::kSyn | tcpf::kAck, 5000, 1001, 65535});
    const auto ack = ipv4Tcp(c, kServer, p, 80, {tcpf::kAck, 1001, 5001, 65535});
    if (t.process(syn.data(), syn.size(), now).state != CtState::kNew) return false;
    t.process(synack.data(), synack.size(), now);
    if (t.process(ack.data(), ack.size(), now).state != CtState::kEstablished) return false;
  }
  return true;
}

struct PacketSet {
  std::vector<uint8_t> storage;
  std::vector<RawPacket> pkts;
};

// One ACK each way per flow, as keepalive-sized established traffic.
PacketSet acks(uint32_t flows) {
  PacketSet s;
  std::vector<std::vector<uint8_t>> tmp;
  const size_t len = ipv4Tcp(0, 0, 0, 0, {}).size();
  s.storage.resize(size_t{flows} * 2 * len);
  for (uint32_t i = 0; i < flows; ++i) {
    const uint32_t c = clientOf(i);
    const uint16_t p = portOf(i);
    const auto a = ipv4Tcp(c, kServer, p, 80, {tcpf::kAck, 1001, 5001, 65535});
    const auto b = ipv4Tcp(kServer, c, 80, p, {tcpf::kAck, 5001, 1001, 65535});
    std::memcpy(&s.storage[(size_t{i} * 2) * len], a.data(), len);
    std::memcpy(&s.storage[(size_t{i} * 2 + 1) * len], b.data(), len);
  }
  for (size_t k = 0; k < size_t{flows} * 2; ++k) {
    s.pkts.push_back({&s.storage[k * len], static_cast<uint32_t>(len)});
  }
  return s;
}

struct Result {
  double mpps;
  uint64_t packets;
  uint64_t wrong;
};

Result run(Tracker& t, const std::vector<RawPacket>& order, uint64_t minPackets, Nanos now) {
  // Bursts as a NIC poll loop hands them over (DPDK and AF_XDP use 32-256).
  constexpr size_t kBurst = 256;
  std::vector<Verdict> out(kBurst);
  uint64_t done = 0, wrong = 0;
  const auto start = Clock::now();
  while (done < minPackets) {
    for (size_t i = 0; i < order.size(); i += kBurst) {
      const size_t n = std::min(kBurst, order.size() - i);
      now += 1000;  // 1 us per burst
      t.processBatch(std::span(order).subspan(i, n), now, std::span(out).first(n));
      for (size_t k = 0; k < n; ++k) wrong += out[k].state != CtState::kEstablished;
      done += n;
    }
  }
  const double secs = secondsSince(start);
  return {static_cast<double>(done) / secs / 1e6, done, wrong};
}

int established(uint32_t flows, bool shuffle, uint64_t minPackets, double target) {
  Tracker t(settingsFor(flows), 12345);
  if (!establish(t, flows, kT0)) {
    std::printf("FAIL: handshakes were not tracked as expected\n");
    return 1;
  }
  PacketSet set = acks(flows);
  std::vector<RawPacket> order = set.pkts;
  // Packets arrive in memory one after the other, as in a receive ring: shuffle which flow
  // comes next, then lay the packets out in that order.
  std::vector<uint8_t> ring;
  if (shuffle) {
    std::shuffle(order.begin(), order.end(), std::mt19937_64(99));
    ring.reserve(order.size() * order[0].len);
    for (const auto& p : order) ring.insert(ring.end(), p.data, p.data + p.len);
    for (size_t i = 0; i < order.size(); ++i) order[i].data = &ring[i * order[0].len];
  }
  run(t, order, std::min<uint64_t>(order.size(), 2'000'000), kT0 + seconds(1));  // warm up
  std::vector<double> rates;
  uint64_t packets = 0, wrong = 0;
  for (int rep = 0; rep < kReps; ++rep) {
    const Result r = run(t, order, minPackets / kReps, kT0 + seconds(2 + rep));
    rates.push_back(r.mpps);
    packets += r.packets;
    wrong += r.wrong;
  }
  const Spread sp = spreadOfRates(rates);
  std::printf(
      "established, %u flows, %s order: %.2f Mpps median (best %.2f, worst %.2f; %llu packets;"
      " %zu MiB of huge pages) target >= %.0f%s\n",
      flows, shuffle ? "random" : "sequential", sp.median, sp.best, sp.worst,
      static_cast<unsigned long long>(packets), hugeBytes() >> 20, target,
      sp.median >= target ? "" : "  ** median below target **");
  if (wrong != 0) {
    std::printf("FAIL: %llu packets not judged ESTABLISHED\n",
                static_cast<unsigned long long>(wrong));
    return 1;
  }
  return 0;
}

// Whole connections: SYN, SYN+ACK, ACK, request, response (acking the request), FIN, FIN, last
// ACK; entries go to TIME_WAIT and are destroyed when the clock passes their expiry.
int connections(uint32_t perRound, int rounds, double target) {
  Tracker t(settingsFor(perRound * 2), 777);
  std::vector<std::vector<uint8_t>> seqs;
  for (uint32_t i = 0; i < perRound; ++i) {
    const uint32_t c = clientOf(i);
    const uint16_t p = portOf(i);
    seqs.push_back(ipv4Tcp(c, kServer, p, 80, {tcpf::kSyn, 1000, 0}));
    seqs.push_back(ipv4Tcp(kServer, c, 80, p, {tcpf::kSyn | tcpf::kAck, 5000, 1001}));
    seqs.push_back(ipv4Tcp(c, kServer, p, 80, {tcpf::kAck, 1001, 5001}));
    seqs.push_back(
        ipv4Tcp(c, kServer, p, 80, {tcpf::kAck | tcpf::kPsh, 1001, 5001, 65535, {}, 100}));
    seqs.push_back(
        ipv4Tcp(kServer, c, 80, p, {tcpf::kAck | tcpf::kPsh, 5001, 1101, 65535, {}, 400}));
    seqs.push_back(ipv4Tcp(c, kServer, p, 80, {tcpf::kAck | tcpf::kFin, 1101, 5401}));
    seqs.push_back(ipv4Tcp(kServer, c, 80, p, {tcpf::kAck | tcpf::kFin, 5401, 1102}));
    seqs.push_back(ipv4Tcp(c, kServer, p, 80, {tcpf::kAck, 1102, 5402}));
  }
  std::vector<RawPacket> raw;
  for (const auto& s : seqs) raw.push_back({s.data(), static_cast<uint32_t>(s.size())});
  std::vector<Verdict> out(raw.size());
  Nanos now = kT0;
  uint64_t conns = 0;
  std::vector<double> rates;
  for (int r = 0; r < rounds; ++r) {
    const auto start = Clock::now();
    // Per connection its own packets in order; batches carry several connections.
    t.processBatch(raw, now, out);
    conns += perRound;
    now += seconds(121);  // past TIME_WAIT: expiry destroys the whole round
    t.advance(now);
    rates.push_back(perRound / secondsSince(start) / 1e6);
  }
  const Spread sp = spreadOfRates(rates);
  std::printf(
      "whole TCP connections (8 packets each, create + destroy): %.2f M/s median of %d rounds"
      " (best %.2f, worst %.2f; %llu connections) target >= %.0f%s\n",
      sp.median, rounds, sp.best, sp.worst, static_cast<unsigned long long>(conns), target,
      sp.median >= target ? "" : "  ** median below target **");
  const auto& tc = t.table().counters();
  if (tc.inserted != conns || tc.expired != conns || t.counters().invalidTotal != 0) {
    std::printf("FAIL: inserted %llu expired %llu invalid %llu for %llu connections\n",
                static_cast<unsigned long long>(tc.inserted),
                static_cast<unsigned long long>(tc.expired),
                static_cast<unsigned long long>(t.counters().invalidTotal),
                static_cast<unsigned long long>(conns));
    return 1;
  }
  return 0;
}

int memory(uint32_t flows) {
  const size_t before = rssBytes();
  TrackerSettings s;
  s.table.maxEntries = flows;
  s.table.buckets = flows;
  Tracker t(s, 5);
  if (!establish(t, flows, kT0)) {
    std::printf("FAIL: handshakes for the memory test\n");
    return 1;
  }
  const size_t after = rssBytes();
  std::printf(
      "memory, %u IPv4 TCP flows: %.1f bytes/flow resident (entry %zu + %zu B, table %.1f "
      "B/flow incl. hash index and wheel; %zu MiB in huge pages) target <= 192\n",
      flows, static_cast<double>(after - before) / flows, sizeof(Entry), sizeof(EntryMeta),
      static_cast<double>(t.table().memoryBytes()) / flows, hugeBytes() >> 20);
  return t.table().size() == flows ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (std::strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
      only = argv[++i];  // sequential | random | connections | memory
    } else {
      std::fprintf(
          stderr, "usage: tracker_bench [--quick] [--only sequential|random|connections|memory]\n");
      return 2;
    }
  }
  auto want = [&only](const char* name) { return only.empty() || only == name; };
  int rc = 0;
  if (want("sequential")) rc |= established(1000, false, quick ? 2'000'000 : 60'000'000, 15);
  if (want("random")) {
    rc |= established(quick ? 100'000 : 1'000'000, true, quick ? 2'000'000 : 30'000'000, 8);
  }
  if (want("connections")) rc |= connections(quick ? 10'000 : 100'000, quick ? 3 : 20, 1);
  if (want("memory")) rc |= memory(quick ? 100'000 : 1'000'000);
  return rc;
}
