#pragma once
// Expectation sync in kernel mode, between the kernel and the replication engine: conntrackd's
// ExpectationSync. While active, the kernel's expectations (KernelExpectSource) become this
// node's own in the engine; on a backup, the replica's expectations go into the kernel
// (KernelExpectSink) after their masters: all at once at promotion, or as they change in
// continuous mode. The Daemon decides when; this class does the what. One io_context thread.
// clang-format off
#include <utility>  // before asio: Boost 1.74 with GCC 12 in C++20 mode needs it
// clang-format on

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <memory>
#include <string>
#include <unordered_set>
#include <variant>
#include <vector>

#include "conf/config.hpp"
#include "replication/node.hpp"
#include "syncd/kernel_expect.hpp"

namespace ctsync::syncd {

using replication::ExpectKeyHasher;

class ExpectSync {
 public:
  // Opens the netlink sockets. `node` outlives this object.
  static std::variant<std::unique_ptr<ExpectSync>, std::string> open(
      boost::asio::io_context& io, const conf::Config& config, replication::Node& node);

  // Called (a few milliseconds later, once the packet that made it has left the helper) with the
  // master of every expectation the kernel announced: the helper may have changed that flow in
  // ways the kernel reports with no event (its sequence adjustment).
  void onMasterTouched(std::function<void(const replication::FlowKey&)> fn) {
    masterTouched_ = std::move(fn);
  }

  // Mirroring the kernel (active): on, with a dump; off.
  void start();
  void stop();
  void resync();

  // The replica's expectation `key` changed (Engine::onExpectChange): kept for commitPending().
  void changed(const ExpectKey& key) { pending_.insert(key); }
  bool hasPending() const { return !pending_.empty(); }
  // Writes every committable replica expectation into the kernel (promotion, manual commit).
  ExpectCommitResult commitAll();
  // Writes what changed since the last commit: committable ones created (their timers set),
  // the others deleted from the kernel (continuous mode).
  ExpectCommitResult commitPending();
  void dropPending() { pending_.clear(); }

  // `conntrack -L expect` lines or JSON: this node's own, or the replica's.
  std::vector<std::string> list(bool replica, bool json) const;

  const KernelExpectCounters& sourceCounters() const { return source_->counters(); }
  const KernelExpectSinkCounters& sinkCounters() const { return sink_->counters(); }
  const ExpectCommitResult& lastCommit() const { return last_; }
  size_t mirrored() const { return mirror_.size(); }

 private:
  ExpectSync(boost::asio::io_context& io, const conf::Config& config, replication::Node& node);
  void armMasterTimer();
  // A replica expectation as the kernel should get it, if it should (live, master live here,
  // not ours, time left): its timeout aged since it arrived.
  std::optional<ExpectRecord> committable(const replication::ReplicaExpect& e) const;
  uint32_t remainingSeconds(const replication::ReplicaExpect& e) const;
  ExpectCommitResult note(ExpectCommitResult r, const char* why);

  void onUpsert(const ExpectRecord& e);
  void onRemove(const ExpectKey& key);
  void onDumpBegin();
  void onDumpEnd();

  conf::Config config_;
  replication::Node& node_;
  std::unique_ptr<KernelExpectSource> source_;
  std::unique_ptr<KernelExpectSink> sink_;
  // What this node reported to the engine as its own and has not seen end: a dump that no
  // longer shows one means it ended while we were not listening.
  std::unordered_set<ExpectKey, ExpectKeyHasher> mirror_;
  std::unordered_set<ExpectKey, ExpectKeyHasher> dumpSeen_;
  bool inDump_ = false;
  std::unordered_set<ExpectKey, ExpectKeyHasher> pending_;
  ExpectCommitResult last_;
  std::function<void(const replication::FlowKey&)> masterTouched_;
  boost::asio::steady_timer masterTimer_;
  bool masterTimerArmed_ = false;
  std::vector<replication::FlowKey> touchedMasters_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

 public:
  ~ExpectSync() { *alive_ = false; }
};

}  // namespace ctsync::syncd
