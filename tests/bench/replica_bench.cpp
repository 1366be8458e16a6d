// ReplicaTable at bulk-resync scale, on one core: apply() per record for new flows, newer
// versions and duplicates, expire(), memory per flow, and a whole bulk resync as a receiver sees
// it (authenticate, decode, apply). Prints its figures; exits non-zero only if an apply() had an
// outcome other than the one its figure claims to measure (a benchmark of the wrong path
// measures nothing).
//
//   replica_bench [--quick] [--only insert|update|expire|memory|resync]
#include <malloc.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <span>
#include <string>
#include <unordered_set>
#include <variant>
#include <vector>

#include "replication/auth.hpp"
#include "replication/codec.hpp"
#include "replication/replica_table.hpp"
#include "table/tcp.hpp"
#include "tests/bench/bench_util.hpp"

using namespace ctsync::replication;
using ctsync::table::Nanos;
using ctsync::table::seconds;
namespace st = ctsync::table::status;
using namespace ctsync::bench;

namespace {

constexpr Nanos kT0 = seconds(1'700'000'000);
constexpr uint16_t kPeer = 1;

// Bytes handed out by malloc (mmap'd chunks included), for allocation accounting beside RSS.
size_t heapBytes() {
  const struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;
}

bool full = true;  // figures at the scale their targets are set for (not --quick)

void report(const char* what, const char* unit, const Spread& s, double target,
            const std::string& extra = "", int decimals = 1) {
  std::printf("%s: %.*f %s median (best %.*f, worst %.*f%s)", what, decimals, s.median, unit,
              decimals, s.best, decimals, s.worst, extra.c_str());
  if (target > 0) {
    std::printf(" target <= %.0f%s", target,
                full && s.median > target ? "  ** median above target **" : "");
  }
  std::printf("\n");
}

ReplicaSettings settings() {
  ReplicaSettings s;
  s.tombstoneTtl = seconds(120);
  s.digestRanges = 256;
  return s;
}

// `n` distinct IPv4 TCP flows, established, in random order: clients in 10/8 to servers
// anywhere on a few well-known ports; every other flow source-NATed to a pool of public
// addresses (a unique address and port each, as the kernel's NAT allocates them). Node kPeer
// wrote them all.
std::vector<FlowRecord> makeFlows(uint32_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  constexpr std::array<uint16_t, 10> kServices = {443, 443, 443, 443, 80, 80, 53, 22, 993, 8443};
  std::unordered_set<uint64_t> seen;
  seen.reserve(size_t{n} * 2);
  std::vector<FlowRecord> flows;
  flows.reserve(n);
  uint32_t natted = 0;
  while (flows.size() < n) {
    FlowRecord r;
    r.key.orig.src = ctsync::table::Addr::v4(0x0a000000 | static_cast<uint32_t>(rng() & 0xffffff));
    r.key.orig.dst = ctsync::table::Addr::v4(static_cast<uint32_t>(rng()));
    r.key.orig.sport = static_cast<uint16_t>(1024 + rng() % 64512);
    r.key.orig.dport = kServices[rng() % kServices.size()];
    r.key.orig.l4 = ctsync::table::proto::kTcp;
    if (!seen.insert(flowKeyHash(r.key)).second) continue;
    r.reply = *ctsync::table::invertTuple(r.key.orig);
    r.status = st::kConfirmed | st::kSeenReply | st::kAssured;
    if (flows.size() % 2 == 1) {
      const uint32_t k = natted++;
      r.reply.dst = ctsync::table::Addr::v4(0xcb007100 + k / 64000);  // 203.0.113.0/24
      r.reply.dport = static_cast<uint16_t>(1024 + k % 64000);
      r.status |= st::kSrcNat | st::kSrcNatDone;
    }
    r.tcpState = static_cast<uint8_t>(ctsync::table::TcpState::kEstablished);
    r.tcpFlags[0] = r.tcpFlags[1] = 0x23;
    r.tcpScale[0] = r.tcpScale[1] = 7;
    r.timeoutSec = static_cast<uint32_t>(60 + rng() % 431940);  // what is left of 5 days
    r.version = Version{0, (uint64_t{1'700'000'000'000} << 16) + flows.size(), kPeer};
    flows.push_back(r);
  }
  return flows;
}

// Flow records a 1500-byte datagram carries in a bulk (the resync figure below counts them).
constexpr size_t kPerDatagram = 39;

// How records reach the table: apply() one at a time, or applyBatch() a datagram's worth.
enum class Path { kOne, kBatch };
const char* pathName(Path p) {
  return p == Path::kOne ? "apply()" : "applyBatch() of 39";
}

// Counts applies whose outcome is not `want`.
uint64_t applyAll(ReplicaTable& t, const std::vector<FlowRecord>& flows, Nanos now,
                  ApplyOutcome want, Path path = Path::kOne) {
  uint64_t wrong = 0;
  if (path == Path::kOne) {
    for (const FlowRecord& r : flows) wrong += t.apply(r, now).outcome != want;
    return wrong;
  }
  for (size_t i = 0; i < flows.size(); i += kPerDatagram) {
    const size_t n = std::min(kPerDatagram, flows.size() - i);
    for (const ApplyResult& r : t.applyBatch(std::span(flows).subspan(i, n), now)) {
      wrong += r.outcome != want;
    }
  }
  return wrong;
}

int failed(const char* what, uint64_t wrong) {
  if (wrong == 0) return 0;
  std::printf("FAIL: %s: %llu applies with another outcome than measured\n", what,
              static_cast<unsigned long long>(wrong));
  return 1;
}

int insert(const std::vector<FlowRecord>& flows) {
  const double n = static_cast<double>(flows.size());
  int rc = 0;
  for (const Path path : {Path::kOne, Path::kBatch}) {
    for (const bool reserve : {true, false}) {
      std::vector<double> ns;
      uint64_t wrong = 0;
      for (int rep = 0; rep < kReps; ++rep) {
        ReplicaTable t(settings());
        const auto start = Clock::now();
        if (reserve) t.reserve(flows.size());
        wrong += applyAll(t, flows, kT0, ApplyOutcome::kInserted, path);
        ns.push_back(secondsSince(start) * 1e9 / n);
        wrong += t.size() != flows.size();
      }
      const std::string what = std::string(pathName(path)) + ", new flows into " +
                               std::to_string(flows.size()) + ", " +
                               (reserve ? "after reserve()" : "no reserve()");
      report(what.c_str(), "ns/record", spreadOfCosts(ns), reserve ? 400 : 0);
      rc |= failed(what.c_str(), wrong);
    }
  }
  return rc;
}

// Newer versions and duplicates of flows the table holds, in another order than they arrived.
int update(std::vector<FlowRecord> flows) {
  const double n = static_cast<double>(flows.size());
  ReplicaTable t(settings());
  t.reserve(flows.size());
  int rc = failed("update setup", applyAll(t, flows, kT0, ApplyOutcome::kInserted));
  std::shuffle(flows.begin(), flows.end(), std::mt19937_64(7));
  Nanos now = kT0;
  for (const Path path : {Path::kOne, Path::kBatch}) {
    std::vector<double> upd, dup;
    uint64_t wrongUpd = 0, wrongDup = 0;
    for (int rep = 0; rep < kReps; ++rep) {
      now += seconds(1);
      for (FlowRecord& r : flows) {
        r.version.hlc += 1;
        r.timeoutSec = 432000;
      }
      auto start = Clock::now();
      wrongUpd += applyAll(t, flows, now, ApplyOutcome::kUpdated, path);
      upd.push_back(secondsSince(start) * 1e9 / n);
      start = Clock::now();
      wrongDup += applyAll(t, flows, now, ApplyOutcome::kIgnoredDuplicate, path);
      dup.push_back(secondsSince(start) * 1e9 / n);
    }
    const std::string how = std::string(pathName(path)) + ", ";
    const std::string at = " of " + std::to_string(flows.size()) + " held flows";
    report((how + "newer versions" + at).c_str(), "ns/record", spreadOfCosts(upd), 250);
    report((how + "duplicates (same version)" + at).c_str(), "ns/record", spreadOfCosts(dup), 150);
    rc |= failed("update", wrongUpd) | failed("duplicate", wrongDup);
  }
  return rc;
}

int expire(const std::vector<FlowRecord>& flows) {
  const double n = static_cast<double>(flows.size());
  int rc = 0;
  // Everything due at once (the peer went away for longer than any timeout).
  std::vector<double> all;
  for (int rep = 0; rep < kReps; ++rep) {
    ReplicaTable t(settings());
    t.reserve(flows.size());
    rc |= failed("expire setup", applyAll(t, flows, kT0, ApplyOutcome::kInserted));
    const auto start = Clock::now();
    const ExpireResult r = t.expire(kT0 + seconds(432001));
    all.push_back(secondsSince(start) * 1e9 / n);
    rc |= failed("expire all", r.flows != flows.size() || t.size() != 0);
  }
  report(("expire, " + std::to_string(flows.size()) + " flows all due").c_str(), "ns/flow",
         spreadOfCosts(all), 0);

  // Steady state: timeouts spread over an hour, expire() every 100 ms of it.
  std::vector<FlowRecord> spreadOut = flows;
  std::mt19937_64 rng(11);
  for (FlowRecord& r : spreadOut) r.timeoutSec = static_cast<uint32_t>(1 + rng() % 3600);
  std::vector<double> steady;
  size_t calls = 0;
  for (int rep = 0; rep < kReps; ++rep) {
    ReplicaTable t(settings());
    t.reserve(flows.size());
    rc |= failed("expire setup", applyAll(t, spreadOut, kT0, ApplyOutcome::kInserted));
    size_t expired = 0;
    calls = 0;
    const auto start = Clock::now();
    for (Nanos now = kT0; now <= kT0 + seconds(3601); now += seconds(1) / 10) {
      expired += t.expire(now).flows;
      ++calls;
    }
    steady.push_back(secondsSince(start) * 1e9 / n);
    rc |= failed("expire steady", expired != flows.size());
  }
  report(("expire, " + std::to_string(flows.size()) + " flows due over 1 h, expire() every 100 ms")
             .c_str(),
         "ns/flow", spreadOfCosts(steady), 0, "; " + std::to_string(calls) + " calls");
  return rc;
}

int memory(const std::vector<FlowRecord>& flows) {
  malloc_trim(0);
  const size_t rss0 = rssBytes(), heap0 = heapBytes();
  ReplicaTable t(settings());
  t.reserve(flows.size());
  const uint64_t wrong = applyAll(t, flows, kT0, ApplyOutcome::kInserted);
  const double n = static_cast<double>(flows.size());
  const double rss = static_cast<double>(rssBytes() - rss0) / n;
  const double heap = static_cast<double>(heapBytes() - heap0) / n;
  std::printf(
      "memory, %zu live IPv4 TCP flows (reserved): %.1f bytes/flow resident, %.1f bytes/flow "
      "from malloc, %.1f bytes/flow by the table's count; %zu MiB in huge pages\n",
      flows.size(), rss, heap, static_cast<double>(t.memoryBytes()) / n, hugeBytes() >> 20);
  return failed("memory", wrong);
}

// The receiver's side of a bulk resync into an empty table: every datagram authenticated,
// decoded and applied, BulkBegin in every datagram (so that the bulk opens when the first is
// lost) and BulkEnd in the last.
int resync(const std::vector<FlowRecord>& flows) {
  constexpr uint32_t kCluster = 0xc7;
  constexpr uint64_t kEpoch = 42;
  constexpr uint32_t kBulkId = 9;
  std::array<uint8_t, kKeySize> raw{};
  raw.fill(0x5a);
  const Key key = Key::fromBytes(raw);
  const Sealer sealer(key, AuthMode::kMac);
  // A 1500-byte MTU less IPv4 and UDP headers, less the envelope.
  DatagramBuilder builder(1500 - 28 - Sealer::overhead(AuthMode::kMac));
  std::vector<std::vector<uint8_t>> datagrams;
  auto seal = [&] {
    const uint64_t seq = datagrams.size() + 1;
    const Header h{kProtocolVersion, kCluster, kPeer, kEpoch, seq};
    datagrams.push_back(
        sealer.seal(EnvelopeHeader{kCluster, kPeer, kEpoch, seq}, builder.finish(h)));
  };
  builder.add(BulkBegin{kBulkId});
  for (const FlowRecord& r : flows) {
    if (!builder.add(r)) {
      seal();
      builder.add(BulkBegin{kBulkId});
      builder.add(r);
    }
  }
  if (!builder.add(BulkEnd{kBulkId, flows.size()})) {
    seal();
    builder.add(BulkBegin{kBulkId});
    builder.add(BulkEnd{kBulkId, flows.size()});
  }
  seal();

  uint64_t wrong = 0;
  for (const Path path : {Path::kOne, Path::kBatch}) {
    std::vector<double> total, unwrap, apply;
    std::vector<FlowRecord> batch;
    for (int rep = 0; rep < kReps; ++rep) {
      Opener opener(key, kCluster, AuthMode::kMac);
      ReplicaTable t(settings());
      double unwrapSecs = 0;
      const auto start = Clock::now();
      t.reserve(flows.size());
      auto flush = [&] {
        for (const ApplyResult& r : t.applyBatch(batch, kT0)) {
          wrong += r.outcome != ApplyOutcome::kInserted;
        }
        batch.clear();
      };
      for (const auto& d : datagrams) {
        const auto u0 = Clock::now();
        auto opened = opener.open(d);
        if (!std::holds_alternative<Opened>(opened)) {
          ++wrong;
          continue;
        }
        auto decoded = decode(std::get<Opened>(opened).payload);
        unwrapSecs += secondsSince(u0);
        if (!std::holds_alternative<Decoded>(decoded)) {
          ++wrong;
          continue;
        }
        const Decoded& dec = std::get<Decoded>(decoded);
        for (const Record& rec : dec.records) {
          if (const auto* f = std::get_if<FlowRecord>(&rec)) {
            if (path == Path::kBatch) {
              batch.push_back(*f);
            } else {
              wrong += t.apply(*f, kT0).outcome != ApplyOutcome::kInserted;
            }
            continue;
          }
          flush();  // records apply in their order
          if (const auto* b = std::get_if<BulkBegin>(&rec)) {
            t.beginBulk(dec.header.node, b->bulkId);
          } else if (const auto* e = std::get_if<BulkEnd>(&rec)) {
            wrong += t.endBulk(dec.header.node, e->bulkId) != 0u;
          }
        }
        flush();
      }
      const double secs = secondsSince(start);
      total.push_back(secs);
      unwrap.push_back(unwrapSecs);
      apply.push_back(secs - unwrapSecs);
      wrong += t.size() != flows.size();
    }
    const Spread u = spreadOfCosts(unwrap), a = spreadOfCosts(apply);
    char extra[160];
    std::snprintf(extra, sizeof extra,
                  "; %zu datagrams; of the median: open + decode %.3f s, the rest %.3f s",
                  datagrams.size(), u.median, a.median);
    report(("bulk resync end to end, " + std::to_string(flows.size()) +
            " flows into an empty table, " + pathName(path) + " per datagram")
               .c_str(),
           "s", spreadOfCosts(total), 0, extra, 3);
  }
  if (full) std::printf("  (target: well under 2 s)\n");
  return failed("resync", wrong);
}

}  // namespace

int main(int argc, char** argv) {
  std::string only;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      full = false;
    } else if (std::strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
      only = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: replica_bench [--quick] [--only insert|update|expire|memory|resync]\n");
      return 2;
    }
  }
  auto want = [&only](const char* name) { return only.empty() || only == name; };
  const std::vector<FlowRecord> flows = makeFlows(full ? 1'000'000 : 50'000, 1);
  int rc = 0;
  // First, while the heap is fresh: later phases leave freed memory behind.
  if (want("memory")) rc |= memory(flows);
  if (want("insert")) rc |= insert(flows);
  if (want("update")) rc |= update(flows);
  if (want("expire")) rc |= expire(flows);
  if (want("resync")) rc |= resync(flows);
  return rc;
}
