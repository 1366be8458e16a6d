// Convergence property: random workloads (create, update, reopen, delete, expire) on random
// nodes of 2-5 node clusters, random loss up to 30 %, duplication, reordering, partitions that
// heal and node restarts. After healing, every replica equals its source, field by field.
//
// CTSYNC_SEEDS=N runs seeds 1..N (default 150); CTSYNC_SEED=S runs seed S alone. A failure
// names its seed.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <unordered_map>

#include "sim.hpp"
#include "table/tcp.hpp"

namespace ctsync::replication {
namespace {

using sim::Cluster;
using table::kMillisecond;
using table::kSecond;

uint64_t envOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::strtoull(v, nullptr, 10) : fallback;
}

// What a node's kernel holds: its own flows, as the source reports them.
using Source = std::unordered_map<FlowKey, FlowRecord, FlowKeyHasher>;

FlowRecord newFlow(std::mt19937_64& rng, uint16_t owner, uint32_t serial) {
  FlowRecord f;
  const bool v6 = rng() % 8 == 0;
  f.key.orig.l3 = v6 ? table::L3::kIpv6 : table::L3::kIpv4;
  f.key.orig.l4 = rng() % 4 == 0 ? table::proto::kUdp : table::proto::kTcp;
  if (v6) {
    std::array<uint8_t, 16> a{0xfd, 0, 0, static_cast<uint8_t>(owner)};
    a[12] = static_cast<uint8_t>(serial >> 8);
    a[13] = static_cast<uint8_t>(serial);
    f.key.orig.src = table::Addr::fromBytes(a.data(), 16);
    a[15] = 1;
    a[12] = a[13] = 0;
    f.key.orig.dst = table::Addr::fromBytes(a.data(), 16);
  } else {
    f.key.orig.src = table::Addr::v4(0x0a000000u | (uint32_t{owner} << 16) | (serial & 0xffff));
    f.key.orig.dst = table::Addr::v4(0xc6336400u | static_cast<uint32_t>(rng() % 4));
  }
  f.key.orig.sport = static_cast<uint16_t>(1024 + rng() % 60000);
  f.key.orig.dport = static_cast<uint16_t>(rng() % 2 ? 443 : 53);
  f.key.zone = static_cast<uint16_t>(rng() % 10 == 0 ? 7 : 0);
  f.reply = *table::invertTuple(f.key.orig);
  if (!v6 && rng() % 2) {  // masqueraded, each to its own port so mappings never conflict
    f.reply.dst = table::Addr::v4(0xcb007100u | owner);
    f.reply.dport = static_cast<uint16_t>(serial % 60000 + 1024);
    f.status |= table::status::kSrcNat | table::status::kSrcNatDone;
  }
  f.status |= table::status::kConfirmed;
  if (f.key.orig.l4 == table::proto::kTcp) {
    f.tcpState = static_cast<uint8_t>(table::TcpState::kSynSent);
    f.tcpFlags[0] = 0x03;
    f.tcpScale[0] = static_cast<uint8_t>(rng() % 15);
  }
  f.timeoutSec = 120;
  f.mark = static_cast<uint32_t>(rng() % 3);
  return f;
}

// A later state of the same connection, as the kernel would report it: flags only get set, the
// TCP state only moves on (within one generation), timeouts and marks change freely.
void evolve(std::mt19937_64& rng, FlowRecord& f) {
  f.status |= table::status::kSeenReply;
  if (rng() % 2) f.status |= table::status::kAssured;
  if (f.tcpState != 0 && f.tcpState < static_cast<uint8_t>(table::TcpState::kTimeWait)) {
    f.tcpState = static_cast<uint8_t>(f.tcpState + 1);
    f.tcpFlags[1] = 0x03;
    f.tcpScale[1] = 7;
  }
  f.timeoutSec = static_cast<uint32_t>(30 + rng() % 432000);
  if (rng() % 3 == 0) f.mark = static_cast<uint32_t>(rng());
  if (rng() % 5 == 0) f.labels[rng() % 16] |= static_cast<uint8_t>(1u << (rng() % 8));
}

// A closed connection reopened (a SYN in TIME_WAIT): a new generation, sticky flags cleared.
void reopen(FlowRecord& f) {
  ++f.version.generation;
  f.status = table::status::kConfirmed | (f.status & table::status::kSrcNat) |
             (f.status & table::status::kSrcNatDone);
  if (f.tcpState != 0) f.tcpState = static_cast<uint8_t>(table::TcpState::kSynSent);
  f.timeoutSec = 120;
}

bool sameContent(const FlowRecord& a, const FlowRecord& b) {
  FlowRecord x = a;
  FlowRecord y = b;
  x.version = y.version = Version{};
  return x == y;
}

// Runs one seed; returns a description of the first difference, or "" when converged.
std::string runSeed(uint64_t seed) {
  std::mt19937_64 rng(seed);
  const size_t n = 2 + seed % 4;
  Cluster c(n, seed * 7919);
  c.faults().loss = 0.1 * static_cast<double>(seed % 4);  // 0, 10, 20, 30 %
  c.faults().duplicate = 0.05;
  c.faults().reorder = 0.1;
  std::vector<Source> sources(n);
  uint32_t serial = 0;
  bool partitioned = false;

  for (int step = 0; step < 400; ++step) {
    c.runFor(static_cast<Nanos>(rng() % (5 * kMillisecond)));
    const size_t who = rng() % n;
    if (!c.running(who)) continue;
    Source& src = sources[who];
    const uint16_t owner = static_cast<uint16_t>(who + 1);
    const unsigned op = rng() % 100;
    auto pick = [&]() -> FlowRecord* {
      if (src.empty()) return nullptr;
      auto it = src.begin();
      std::advance(it, static_cast<long>(rng() % src.size()));
      return &it->second;
    };
    if (op < 40) {
      FlowRecord f = newFlow(rng, owner, ++serial);
      if (src.count(f.key) != 0) continue;
      src[f.key] = f;
      c.node(who).upsert(f, c.now());
    } else if (op < 70) {
      if (FlowRecord* f = pick()) {
        evolve(rng, *f);
        c.node(who).upsert(*f, c.now());
      }
    } else if (op < 74) {
      if (FlowRecord* f = pick()) {
        // The source's generation is its own count; the engine keeps versions above it.
        FlowRecord again = *f;
        reopen(again);
        again.version.generation = std::max(
            again.version.generation,
            c.node(who).local(f->key) ? c.node(who).local(f->key)->version.generation + 1 : 0u);
        *f = again;
        c.node(who).upsert(*f, c.now());
      }
    } else if (op < 90) {  // closed, or expired: either way the source reports a destroy
      if (FlowRecord* f = pick()) {
        const FlowKey k = f->key;
        src.erase(k);
        c.node(who).remove(k, c.now());
      }
    } else if (op < 95) {
      if (partitioned) {
        c.heal();
        partitioned = false;
      } else {
        std::vector<size_t> group;
        for (size_t i = 0; i < n; ++i) {
          if (rng() % 2) group.push_back(i);
        }
        c.partition(group);
        partitioned = true;
      }
    } else if (op < 97) {
      // The daemon restarts; the kernel keeps the flows and they are dumped again.
      c.stop(who);
      c.runFor(static_cast<Nanos>(rng() % (3 * kSecond)));
      c.start(who);
      for (const auto& [k, f] : src) c.node(who).upsert(f, c.now());
    }
  }
  c.heal();
  if (!c.settle(120 * kSecond)) {
    return "did not settle in 120 s of simulated time:\n" + c.describe();
  }

  Source all;
  for (size_t i = 0; i < n; ++i) {
    for (const auto& [k, f] : sources[i]) all[k] = f;
  }
  if (std::getenv("CTSYNC_VERBOSE") != nullptr) {
    uint64_t resent = 0, bulks = 0, reasserts = 0;
    for (size_t i = 0; i < n; ++i) {
      resent += c.node(i).counters().resentRecords;
      bulks += c.node(i).counters().bulksSent;
      reasserts += c.node(i).counters().ownerReasserts;
    }
    std::printf(
        "seed %llu: %zu nodes, %zu flows, %llu delivered, %llu dropped, %llu resent, "
        "%llu bulks, %llu reasserts, t=%.1f s\n",
        static_cast<unsigned long long>(seed), n, all.size(),
        static_cast<unsigned long long>(c.delivered()),
        static_cast<unsigned long long>(c.dropped()), static_cast<unsigned long long>(resent),
        static_cast<unsigned long long>(bulks), static_cast<unsigned long long>(reasserts),
        static_cast<double>(c.now()) / kSecond);
  }
  for (size_t i = 0; i < n; ++i) {
    const Engine& e = c.node(i);
    // The engine's own state is the source's.
    if (e.localFlows() != sources[i].size()) {
      return "node " + std::to_string(i + 1) + " holds " + std::to_string(e.localFlows()) +
             " local flows, its source " + std::to_string(sources[i].size());
    }
    for (const auto& [k, f] : sources[i]) {
      const auto l = e.local(k);
      if (!l || !sameContent(*l, f)) return "node " + std::to_string(i + 1) + ": local differs";
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const ReplicaTable& r = c.node(i).replica();
    if (r.size() != all.size()) {
      std::string why = "node " + std::to_string(i + 1) + " replica holds " +
                        std::to_string(r.size()) + " flows, the sources " +
                        std::to_string(all.size());
      for (const auto& [k, f] : all) {
        if (r.get(k)) continue;
        for (size_t o = 0; o < n; ++o) {
          if (sources[o].count(k) == 0) continue;
          const auto l = c.node(o).local(k);
          const auto t = r.tombstone(k);
          why += "\n  missing flow sport " + std::to_string(k.orig.sport) + " src3 " +
                 std::to_string(k.orig.src.bytes[3]) + " of node " + std::to_string(o + 1) +
                 " version " +
                 (l ? std::to_string(l->version.generation) + "/" + std::to_string(l->version.hlc) +
                          "/" + std::to_string(l->version.node)
                    : std::string("none")) +
                 " tombstone here " +
                 (t ? std::to_string(t->generation) + "/" + std::to_string(t->hlc) + "/" +
                          std::to_string(t->node)
                    : std::string("none"));
        }
      }
      r.forEach([&](const ReplicaFlow& f) {
        if (all.count(f.record.key) != 0) return;
        const uint16_t o = f.record.version.node;
        const auto l = c.node(o - 1u).local(f.record.key);
        why += "\n  extra flow of node " + std::to_string(o) + " version " +
               std::to_string(f.record.version.generation) + "/" +
               std::to_string(f.record.version.hlc) + " owner local " + (l ? "live" : "gone");
      });
      return why + "\nat t=" + std::to_string(c.now() / kSecond) + " s\n" + c.describe();
    }
    for (const auto& [k, f] : all) {
      const auto got = r.get(k);
      if (!got) return "node " + std::to_string(i + 1) + " lacks a flow";
      const auto owned = c.node(got->record.version.node - 1u).local(k);
      if (!owned || got->record != *owned) {
        return "node " + std::to_string(i + 1) + ": a replica record differs from its owner's";
      }
      if (got->natShadowed) return "node " + std::to_string(i + 1) + ": a flow is NAT-shadowed";
    }
  }
  return "";
}

TEST(ClusterPropertyTest, EveryReplicaConvergesToItsSources) {
  const uint64_t only = envOr("CTSYNC_SEED", 0);
  const uint64_t first = only != 0 ? only : 1;
  const uint64_t last = only != 0 ? only : envOr("CTSYNC_SEEDS", 150);
  for (uint64_t seed = first; seed <= last; ++seed) {
    const std::string failure = runSeed(seed);
    EXPECT_EQ(failure, "") << "seed " << seed << " (rerun: CTSYNC_SEED=" << seed
                           << " replication_tests --gtest_filter=ClusterProperty*)";
  }
}

}  // namespace
}  // namespace ctsync::replication
