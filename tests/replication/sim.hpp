#pragma once
// A deterministic in-process cluster: N sync engines over a fake multicast network that drops,
// duplicates, reorders, delays and partitions datagrams, driven by a manual clock. No sleeps,
// no sockets; a seed fixes everything.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "replication/auth.hpp"
#include "replication/codec.hpp"
#include "replication/engine.hpp"

namespace ctsync::replication::sim {

using table::kMillisecond;
using table::kSecond;

inline Key testKey() {
  std::array<uint8_t, kKeySize> bytes{};
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7 + 1);
  return Key::fromBytes(bytes);
}

struct LinkFaults {
  double loss = 0;          // probability a datagram to one receiver is dropped
  double duplicate = 0;     // probability it is delivered twice
  double reorder = 0;       // probability it is held back by up to reorderDelay
  Nanos delayMin = 50'000;  // one-way delay, uniform in [delayMin, delayMax]
  Nanos delayMax = 300'000;
  Nanos reorderDelay = 5 * kMillisecond;
};

class Cluster {
 public:
  // Nodes get ids 1..n. Engines start at time 0 unless started later with start().
  Cluster(size_t n, uint64_t seed, EngineSettings base = defaults())
      : rng_(seed), base_(base), nodes_(n), key_(testKey()) {
    for (size_t i = 0; i < n; ++i) start(i);
  }

  static EngineSettings defaults() {
    EngineSettings s;
    s.clusterId = 0xc1;
    s.digestInterval = 2 * kSecond;
    s.paceBytesPerSecond = 0;
    s.replica.tombstoneTtl = 3600 * kSecond;  // longer than any simulation
    return s;
  }

  size_t size() const { return nodes_.size(); }
  Nanos now() const { return now_; }
  Engine& node(size_t i) { return *nodes_[i].engine; }
  bool running(size_t i) const { return nodes_[i].engine != nullptr; }
  LinkFaults& faults() { return faults_; }
  // Drops the datagrams from `from` to `to` for which it returns true (as well as the random
  // faults): a test aims at one kind of datagram.
  std::function<bool(size_t from, size_t to, const Decoded&)> dropIf;
  uint64_t delivered() const { return delivered_; }
  uint64_t dropped() const { return dropped_; }

  // (Re)starts node i with a new boot epoch and nothing in memory.
  void start(size_t i) {
    EngineSettings s = base_;
    s.node = static_cast<uint16_t>(i + 1);
    s.bootEpoch = ++epochs_ * 1000 + i + 1;
    nodes_[i].engine = std::make_unique<Engine>(
        s, key_, [this, i](std::span<const uint8_t> d) { transmit(i, d); }, now_);
  }
  void stop(size_t i) { nodes_[i].engine.reset(); }

  // Datagrams from a to b (and b to a when `both`) are dropped until heal().
  void cut(size_t a, size_t b, bool both = true) {
    blocked_.insert({a, b});
    if (both) blocked_.insert({b, a});
  }
  // Splits the cluster into the given group and the rest.
  void partition(const std::vector<size_t>& group) {
    for (size_t a = 0; a < size(); ++a) {
      for (size_t b = 0; b < size(); ++b) {
        const bool inA = std::find(group.begin(), group.end(), a) != group.end();
        const bool inB = std::find(group.begin(), group.end(), b) != group.end();
        if (inA != inB) blocked_.insert({a, b});
      }
    }
  }
  void heal() { blocked_.clear(); }

  // Runs the cluster until `until` (absolute time).
  void runUntil(Nanos until) {
    for (uint64_t steps = 0; steps < 50'000'000; ++steps) {
      Nanos next = until + 1;
      if (!inFlight_.empty()) next = std::min(next, inFlight_.top().at);
      for (const auto& n : nodes_) {
        if (n.engine) next = std::min(next, std::max(n.engine->nextWakeup(), now_));
      }
      if (next > until) break;
      // An engine that keeps asking for `now` without making progress is a bug: fail loudly.
      sameTime_ = next == now_ ? sameTime_ + 1 : 0;
      if (sameTime_ > 100'000) {
        ADD_FAILURE() << "simulation stuck at t=" << now_;
        return;
      }
      now_ = next;
      while (!inFlight_.empty() && inFlight_.top().at <= now_) {
        InFlight m = inFlight_.top();
        inFlight_.pop();
        if (nodes_[m.to].engine) {
          nodes_[m.to].engine->receive(m.bytes, now_);
          ++delivered_;
        }
      }
      for (auto& n : nodes_) {
        if (n.engine && n.engine->nextWakeup() <= now_) n.engine->poll(now_);
      }
      // Engines poll after a receive too (the daemon does so after every batch).
      for (auto& n : nodes_) {
        if (n.engine) n.engine->poll(now_);
      }
    }
    now_ = std::max(now_, until);
  }
  void runFor(Nanos d) { runUntil(now_ + d); }

  // Runs until every running engine is idle and nothing is in flight, for at most `limit`.
  // Returns whether it got there.
  bool settle(Nanos limit) {
    const Nanos end = now_ + limit;
    while (now_ < end) {
      runFor(10 * kMillisecond);
      if (quiet()) return true;
    }
    return quiet();
  }
  // What each node thinks of its peers, for failure messages.
  std::string describe() const {
    std::string out;
    for (size_t n = 0; n < nodes_.size(); ++n) {
      if (!nodes_[n].engine) continue;
      const Engine& e = *nodes_[n].engine;
      const EngineCounters& k = e.counters();
      out += "node " + std::to_string(n + 1) + ": lastSeq " + std::to_string(e.lastSeq()) +
             " idle " + std::to_string(e.idle(now_)) + " bulk " + std::to_string(e.bulkRunning()) +
             " replica " + std::to_string(e.replica().size()) + " nacksRx " +
             std::to_string(k.nacksReceived) + " bulksSent " + std::to_string(k.bulksSent) +
             " coveredSent " + std::to_string(k.coveredSent) + " bulksRx " +
             std::to_string(k.bulksReceived) + " sweeps " + std::to_string(k.sweeps) + " swept " +
             std::to_string(k.sweptFlows) + " reasserts " + std::to_string(k.ownerReasserts) +
             " expired " + std::to_string(e.replica().stats().flowsExpired) + "\n";
      for (const PeerStatus& p : e.peers(now_)) {
        out += "  peer " + std::to_string(p.node) + " up " + std::to_string(p.up) + " epoch " +
               std::to_string(p.epoch) + " received " + std::to_string(p.received) + " highest " +
               std::to_string(p.highest) + " acked " + std::to_string(p.acked) + " lag " +
               std::to_string(p.lag) + " bulkOpen " + std::to_string(p.bulkOpen) +
               " resyncWanted " + std::to_string(p.resyncWanted) + "\n";
      }
    }
    return out;
  }

  // Nothing in flight, every running engine idle and seeing every other running node as up
  // (a healed partition is not settled before the nodes met again).
  bool quiet() const {
    if (!inFlight_.empty()) return false;
    size_t running = 0;
    for (const auto& n : nodes_) running += n.engine != nullptr;
    for (const auto& n : nodes_) {
      if (!n.engine) continue;
      if (!n.engine->idle(now_)) return false;
      size_t up = 0;
      for (const PeerStatus& p : n.engine->peers(now_)) up += p.up;
      if (up + 1 < running) return false;
    }
    return true;
  }

 private:
  struct InFlight {
    Nanos at;
    uint64_t order;
    size_t to;
    std::vector<uint8_t> bytes;
    bool operator>(const InFlight& o) const { return at != o.at ? at > o.at : order > o.order; }
  };
  struct Slot {
    std::unique_ptr<Engine> engine;
  };

  double uniform() { return std::uniform_real_distribution<double>(0, 1)(rng_); }
  Nanos between(Nanos a, Nanos b) {
    return a >= b ? a : std::uniform_int_distribution<Nanos>(a, b)(rng_);
  }

  void transmit(size_t from, std::span<const uint8_t> d) {
    for (size_t to = 0; to < nodes_.size(); ++to) {
      if (to == from) continue;  // multicast loopback is off
      if (blocked_.count({from, to}) != 0 || uniform() < faults_.loss || aimedAt(from, to, d)) {
        ++dropped_;
        continue;
      }
      const int copies = uniform() < faults_.duplicate ? 2 : 1;
      for (int c = 0; c < copies; ++c) {
        Nanos at = now_ + between(faults_.delayMin, faults_.delayMax);
        if (uniform() < faults_.reorder) at += between(0, faults_.reorderDelay);
        inFlight_.push(InFlight{at, order_++, to, std::vector<uint8_t>(d.begin(), d.end())});
      }
    }
  }

  bool aimedAt(size_t from, size_t to, std::span<const uint8_t> d) {
    if (!dropIf) return false;
    Opener opener(key_, base_.clusterId, base_.authMode);  // fresh: no replay state
    auto opened = opener.open(d);
    const auto* o = std::get_if<Opened>(&opened);
    if (o == nullptr) return false;
    auto decoded = decode(o->payload);
    const auto* dd = std::get_if<Decoded>(&decoded);
    return dd != nullptr && dropIf(from, to, *dd);
  }

  std::mt19937_64 rng_;
  EngineSettings base_;
  std::vector<Slot> nodes_;
  Key key_;
  LinkFaults faults_;
  std::set<std::pair<size_t, size_t>> blocked_;
  std::priority_queue<InFlight, std::vector<InFlight>, std::greater<>> inFlight_;
  Nanos now_ = 0;
  uint64_t order_ = 0;
  uint64_t epochs_ = 0;
  uint64_t delivered_ = 0;
  uint64_t dropped_ = 0;
  uint64_t sameTime_ = 0;
};

}  // namespace ctsync::replication::sim
