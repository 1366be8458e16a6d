// Tracker throughput and memory on one core, without NAT and with it (masquerade, packets
// rewritten), measured side by side in the same run: this machine is noisy, so each NAT
// figure is printed beside the same work without NAT and their ratio. Exits non-zero only if
// the tracker misjudged the benchmark's own packets (a benchmark that measures the invalid
// path measures nothing).
//
//   tracker_bench [--quick] [--only sequential|random|connections|ports|memory]
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <set>
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
// 4096 servers: a million flows through one masquerade address need distinct reply tuples
// (server, port) -> (address, port), and one server gives at most 64 512.
uint32_t serverOf(uint32_t i) {
  return v4(192, 0, static_cast<uint8_t>(16 + ((i >> 8) & 0x0f)), static_cast<uint8_t>(i));
}
uint16_t portOf(uint32_t i) {
  return static_cast<uint16_t>(10000 + (i % 50000));
}
const uint32_t kWan = v4(203, 0, 113, 1);

class WanAddress : public InterfaceAddresses {
 public:
  std::optional<Addr> addressOf(std::string_view iface, L3 l3) const override {
    if (iface == "wan0" && l3 == L3::kIpv4) return Addr::v4(kWan);
    return std::nullopt;
  }
};
const WanAddress kAddresses;
const PacketContext kOut{"lan0", "wan0", 0};
const PacketContext kIn{"wan0", "lan0", 0};

TrackerSettings settingsFor(uint32_t flows, bool nat, uint8_t flags = 0) {
  TrackerSettings s;
  uint32_t n = 1;
  while (n < flows) n <<= 1;
  s.table.maxEntries = n;
  s.table.buckets = 2 * n;  // one chain node per bucket on average (each entry has two)
  if (nat) {
    NatRule r;
    r.type = NatType::kMasquerade;
    r.outInterface = "wan0";
    r.flags = flags;
    s.nat.rules.push_back(r);
  }
  return s;
}

const char* label(bool nat) {
  return nat ? "NAT (masquerade, rewritten)" : "no NAT";
}

// Sets up `flows` established TCP flows with a handshake each; records for each flow where
// its replies arrive (the masquerade address and port with NAT, the client without). Returns
// false if any step was not judged as the kernel would.
struct Flow {
  uint32_t client, server;
  uint16_t port;
  uint32_t replyAddr;
  uint16_t replyPort;
};
bool establish(Tracker& t, uint32_t flows, Nanos now, std::vector<Flow>& out) {
  out.clear();
  out.reserve(flows);
  for (uint32_t i = 0; i < flows; ++i) {
    Flow f{clientOf(i), serverOf(i), portOf(i), 0, 0};
    auto syn = ipv4Tcp(f.client, f.server, f.port, 80, {tcpf::kSyn, 1000, 0, 65535});
    const Verdict v = t.process(syn.data(), syn.size(), now, kOut);
    if (v.state != CtState::kNew) return false;
    const Tuple reply = t.table().tuple(t.table().entry(v.index), Dir::kReply);
    f.replyAddr = reply.dst.v4HostOrder();
    f.replyPort = reply.dport;
    auto synack =
        ipv4Tcp(f.server, f.replyAddr, 80, f.replyPort, {tcpf::kSyn | tcpf::kAck, 5000, 1001});
    t.process(synack.data(), synack.size(), now, kIn);
    auto ack = ipv4Tcp(f.client, f.server, f.port, 80, {tcpf::kAck, 1001, 5001, 65535});
    if (t.process(ack.data(), ack.size(), now, kOut).state != CtState::kEstablished) return false;
    out.push_back(f);
  }
  return true;
}

// Packets as they sit in a receive ring, with a pristine copy: NAT rewrites the ring in
// place, and each burst gets its original bytes back (outside the timed region) before it
// is tracked again.
struct Ring {
  std::vector<uint8_t> pristine, live;
  std::vector<MutablePacket> pkts;
  size_t len = 0;
};

// One ACK each way per flow, as keepalive-sized established traffic, in the given order.
Ring acks(const std::vector<Flow>& flows, bool shuffle) {
  Ring r;
  r.len = ipv4Tcp(0, 0, 0, 0, {}).size();
  std::vector<std::pair<uint32_t, bool>> order;
  for (uint32_t i = 0; i < flows.size(); ++i) {
    order.push_back({i, false});
    order.push_back({i, true});
  }
  if (shuffle) std::shuffle(order.begin(), order.end(), std::mt19937_64(99));
  r.pristine.resize(order.size() * r.len);
  for (size_t k = 0; k < order.size(); ++k) {
    const Flow& f = flows[order[k].first];
    const auto p = order[k].second
                       ? ipv4Tcp(f.server, f.replyAddr, 80, f.replyPort, {tcpf::kAck, 5001, 1001})
                       : ipv4Tcp(f.client, f.server, f.port, 80, {tcpf::kAck, 1001, 5001});
    std::memcpy(&r.pristine[k * r.len], p.data(), r.len);
  }
  r.live = r.pristine;
  for (size_t k = 0; k < order.size(); ++k) {
    r.pkts.push_back(
        {&r.live[k * r.len], static_cast<uint32_t>(r.len), order[k].second ? &kIn : &kOut});
  }
  return r;
}

struct Result {
  double mpps;
  uint64_t packets;
  uint64_t wrong;
};

Result run(Tracker& t, Ring& ring, uint64_t minPackets, Nanos now, bool nat) {
  // Bursts as a NIC poll loop hands them over (DPDK and AF_XDP use 32-256).
  constexpr size_t kBurst = 256;
  std::vector<Verdict> out(kBurst);
  uint64_t done = 0, wrong = 0;
  double busy = 0;
  const size_t n = ring.pkts.size();
  while (done < minPackets) {
    for (size_t i = 0; i < n; i += kBurst) {
      const size_t m = std::min(kBurst, n - i);
      std::memcpy(&ring.live[i * ring.len], &ring.pristine[i * ring.len], m * ring.len);
      now += 1000;  // 1 us per burst
      const auto start = Clock::now();
      t.processBatch(std::span<const MutablePacket>(ring.pkts).subspan(i, m), now,
                     std::span(out).first(m));
      busy += secondsSince(start);
      for (size_t k = 0; k < m; ++k) {
        wrong += out[k].state != CtState::kEstablished || out[k].rewritten != nat;
      }
      done += m;
    }
  }
  return {static_cast<double>(done) / busy / 1e6, done, wrong};
}

// Established traffic over `flows` flows, without and with NAT. Both trackers live at once
// and their runs alternate, so that both see the same machine (this one is shared: a run
// after another can be a fifth slower for reasons of its own).
struct Side {
  std::unique_ptr<Tracker> tracker;
  Ring ring;
  std::vector<double> rates;
  uint64_t packets = 0, wrong = 0;
};

int establishedPair(uint32_t flows, bool shuffle, uint64_t minPackets, double target,
                    double natTarget) {
  std::printf("established, %u flows, %s order, one core:\n", flows,
              shuffle ? "random" : "sequential");
  Side sides[2];
  for (int nat = 0; nat < 2; ++nat) {
    Side& s = sides[nat];
    s.tracker = std::make_unique<Tracker>(settingsFor(flows, nat != 0), 12345, &kAddresses);
    std::vector<Flow> fl;
    if (!establish(*s.tracker, flows, kT0, fl)) {
      std::printf("FAIL: handshakes were not tracked as expected (%s)\n", label(nat != 0));
      return 1;
    }
    s.ring = acks(fl, shuffle);
    run(*s.tracker, s.ring, std::min<uint64_t>(s.ring.pkts.size(), 2'000'000), kT0 + seconds(1),
        nat != 0);  // warm up
  }
  for (int rep = 0; rep < kReps; ++rep) {
    for (int nat = 0; nat < 2; ++nat) {
      Side& s = sides[nat];
      const Result r =
          run(*s.tracker, s.ring, minPackets / kReps, kT0 + seconds(2 + rep), nat != 0);
      s.rates.push_back(r.mpps);
      s.packets += r.packets;
      s.wrong += r.wrong;
    }
  }
  const size_t huge = hugeBytes();
  Spread sp[2];
  int rc = 0;
  for (int nat = 0; nat < 2; ++nat) {
    sp[nat] = spreadOfRates(sides[nat].rates);
    std::printf("  %-28s %.2f Mpps median (best %.2f, worst %.2f; %llu packets)\n", label(nat != 0),
                sp[nat].median, sp[nat].best, sp[nat].worst,
                static_cast<unsigned long long>(sides[nat].packets));
    if (sides[nat].wrong != 0) {
      std::printf("FAIL: %llu packets not judged ESTABLISHED%s\n",
                  static_cast<unsigned long long>(sides[nat].wrong), nat ? " and rewritten" : "");
      rc = 1;
    }
  }
  std::printf("  NAT/no NAT %.2f; targets: no NAT >= %.0f%s, NAT >= %.0f%s (%zu MiB huge pages)\n",
              sp[1].median / sp[0].median, target, sp[0].median >= target ? "" : " ** below **",
              natTarget, sp[1].median >= natTarget ? "" : " ** below **", huge >> 20);
  return rc;
}

// Whole connections: SYN, SYN+ACK, ACK, request, response (acking the request), FIN, FIN, last
// ACK; entries go to TIME_WAIT and are destroyed when the clock passes their expiry. Client
// ports are unique per server, so masquerade keeps every port and replies can be built ahead.
struct Round {
  std::unique_ptr<Tracker> tracker;
  std::vector<std::vector<uint8_t>> seqs, pristine;
  std::vector<MutablePacket> raw;
  std::vector<Verdict> out;
  std::vector<double> rates;
  Nanos now = kT0;
  uint64_t conns = 0, wrong = 0;
};

void buildRound(Round& r, uint32_t perRound, bool nat) {
  r.tracker = std::make_unique<Tracker>(settingsFor(perRound * 2, nat), 777, &kAddresses);
  std::vector<const PacketContext*> ctx;
  for (uint32_t i = 0; i < perRound; ++i) {
    const uint32_t c = clientOf(i);
    const uint32_t s = v4(192, 0, 2, static_cast<uint8_t>(1 + i / 50000));
    const uint32_t back = nat ? kWan : c;  // where replies arrive
    const uint16_t p = portOf(i);
    auto add = [&](std::vector<uint8_t> pkt, bool reply) {
      r.seqs.push_back(std::move(pkt));
      ctx.push_back(reply ? &kIn : &kOut);
    };
    add(ipv4Tcp(c, s, p, 80, {tcpf::kSyn, 1000, 0}), false);
    add(ipv4Tcp(s, back, 80, p, {tcpf::kSyn | tcpf::kAck, 5000, 1001}), true);
    add(ipv4Tcp(c, s, p, 80, {tcpf::kAck, 1001, 5001}), false);
    add(ipv4Tcp(c, s, p, 80, {tcpf::kAck | tcpf::kPsh, 1001, 5001, 65535, {}, 100}), false);
    add(ipv4Tcp(s, back, 80, p, {tcpf::kAck | tcpf::kPsh, 5001, 1101, 65535, {}, 400}), true);
    add(ipv4Tcp(c, s, p, 80, {tcpf::kAck | tcpf::kFin, 1101, 5401}), false);
    add(ipv4Tcp(s, back, 80, p, {tcpf::kAck | tcpf::kFin, 5401, 1102}), true);
    add(ipv4Tcp(c, s, p, 80, {tcpf::kAck, 1102, 5402}), false);
  }
  r.pristine = r.seqs;
  for (size_t k = 0; k < r.seqs.size(); ++k) {
    r.raw.push_back({r.seqs[k].data(), static_cast<uint32_t>(r.seqs[k].size()), ctx[k]});
  }
  r.out.resize(r.raw.size());
}

void runRound(Round& r, uint32_t perRound, bool nat) {
  for (size_t k = 0; k < r.seqs.size(); ++k) {
    std::memcpy(r.seqs[k].data(), r.pristine[k].data(), r.seqs[k].size());
  }
  const auto start = Clock::now();
  // Per connection its own packets in order; batches carry several connections.
  r.tracker->processBatch(std::span<const MutablePacket>(r.raw), r.now, r.out);
  r.now += seconds(121);  // past TIME_WAIT: expiry destroys the whole round
  r.tracker->advance(r.now);
  r.rates.push_back(perRound / secondsSince(start) / 1e6);
  r.conns += perRound;
  for (const Verdict& v : r.out) r.wrong += v.rewritten != nat;
}

int connectionsPair(uint32_t perRound, int rounds, double target, double natTarget) {
  std::printf("whole TCP connections (8 packets each, create + destroy), one core:\n");
  Round rs[2];
  for (int nat = 0; nat < 2; ++nat) buildRound(rs[nat], perRound, nat != 0);
  for (int i = 0; i < rounds; ++i) {
    for (int nat = 0; nat < 2; ++nat) runRound(rs[nat], perRound, nat != 0);
  }
  Spread sp[2];
  int rc = 0;
  for (int nat = 0; nat < 2; ++nat) {
    const Round& r = rs[nat];
    sp[nat] = spreadOfRates(r.rates);
    std::printf(
        "  %-28s %.2f M/s median of %d rounds (best %.2f, worst %.2f; %llu "
        "connections)\n",
        label(nat != 0), sp[nat].median, rounds, sp[nat].best, sp[nat].worst,
        static_cast<unsigned long long>(r.conns));
    const auto& tc = r.tracker->table().counters();
    if (tc.inserted != r.conns || tc.expired != r.conns ||
        r.tracker->counters().invalidTotal != 0 || r.wrong != 0) {
      std::printf(
          "FAIL: inserted %llu expired %llu invalid %llu unrewritten %llu for %llu "
          "connections\n",
          static_cast<unsigned long long>(tc.inserted), static_cast<unsigned long long>(tc.expired),
          static_cast<unsigned long long>(r.tracker->counters().invalidTotal),
          static_cast<unsigned long long>(r.wrong), static_cast<unsigned long long>(r.conns));
      rc = 1;
    }
  }
  std::printf("  NAT/no NAT %.2f; targets: no NAT >= %.1f%s, NAT >= %.1f%s\n",
              sp[1].median / sp[0].median, target, sp[0].median >= target ? "" : " ** below **",
              natTarget, sp[1].median >= natTarget ? "" : " ** below **");
  return rc;
}

// Port allocation under pressure: `flows` connections from one inside host to one server port
// through one masquerade address with random ports (nft's `masquerade random`), so every new
// flow searches the range from a random offset; the cost of a new flow as the range fills.
int ports(uint32_t flows) {
  std::printf(
      "port allocation: %u SYNs from one host to one server port through one "
      "masquerade address, random ports (range 1024-65535):\n",
      flows);
  Tracker t(settingsFor(flows * 2, true, natflag::kRandom), 4242, &kAddresses);
  const uint32_t host = v4(10, 0, 0, 2), server = v4(192, 0, 2, 1);
  constexpr uint32_t kSteps = 6;
  const uint32_t step = flows / kSteps;
  std::set<uint16_t> mapped;
  uint64_t bad = 0;
  for (uint32_t s = 0; s < kSteps; ++s) {
    std::vector<std::vector<uint8_t>> syns;
    for (uint32_t i = s * step; i < (s + 1) * step; ++i) {
      syns.push_back(
          ipv4Tcp(host, server, static_cast<uint16_t>(1024 + i), 443, {tcpf::kSyn, 1000 + i, 0}));
    }
    const uint64_t a0 = t.natCounters().attempts;
    const auto start = Clock::now();
    for (auto& p : syns) bad += t.process(p.data(), p.size(), kT0, kOut).state != CtState::kNew;
    const double ns = secondsSince(start) * 1e9 / step;
    for (const auto& p : syns) mapped.insert(static_cast<uint16_t>((p[20] << 8) | p[21]));
    std::printf(
        "  flows %6u-%6u (range %4.1f%% full at the end): %6.0f ns per new flow, "
        "%6.1f tuples tried per flow\n",
        s * step, (s + 1) * step, 100.0 * (s + 1) * step / 64512, ns,
        static_cast<double>(t.natCounters().attempts - a0) / step);
  }
  const uint32_t total = step * kSteps;
  std::printf("  %zu unique mappings for %u flows, %llu exhausted, %llu not created\n",
              mapped.size(), total, static_cast<unsigned long long>(t.natCounters().exhausted),
              static_cast<unsigned long long>(bad));
  return mapped.size() == total && bad == 0 ? 0 : 1;
}

int memory(uint32_t flows) {
  std::printf("memory, %u IPv4 TCP flows (resident, every index included):\n", flows);
  int rc = 0;
  for (const bool nat : {false, true}) {
    const size_t before = rssBytes();
    TrackerSettings s = settingsFor(flows, nat);
    s.table.maxEntries = flows;
    s.table.buckets = flows;
    auto t = std::make_unique<Tracker>(s, 5, &kAddresses);
    std::vector<Flow> fl;
    if (!establish(*t, flows, kT0, fl)) {
      std::printf("FAIL: handshakes for the memory test\n");
      return 1;
    }
    const size_t vectorBytes = fl.capacity() * sizeof(Flow);
    const size_t after = rssBytes();
    const double perFlow = static_cast<double>(after - before - vectorBytes) / flows;
    std::printf(
        "  %-28s %.1f bytes/flow (entry %zu + %zu B; table's own count %.1f B/flow; "
        "%u in the by-source index) target <= %d\n",
        label(nat), perFlow, sizeof(Entry), sizeof(EntryMeta),
        static_cast<double>(t->table().memoryBytes()) / flows, t->table().sourceIndexed(),
        nat ? 200 : 192);
    if (t->table().size() != flows) rc = 1;
  }
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (std::strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
      only = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: tracker_bench [--quick] "
                   "[--only sequential|random|connections|ports|memory]\n");
      return 2;
    }
  }
  auto want = [&only](const char* name) { return only.empty() || only == name; };
  int rc = 0;
  if (want("sequential")) {
    rc |= establishedPair(1000, false, quick ? 2'000'000 : 60'000'000, 15, 10);
  }
  if (want("random")) {
    rc |= establishedPair(quick ? 100'000 : 1'000'000, true, quick ? 2'000'000 : 30'000'000, 8, 6);
  }
  if (want("connections")) {
    rc |= connectionsPair(quick ? 10'000 : 100'000, quick ? 3 : 20, 1, 0.8);
  }
  if (want("ports")) rc |= ports(60'000);
  if (want("memory")) rc |= memory(quick ? 100'000 : 1'000'000);
  return rc;
}
