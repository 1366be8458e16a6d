#pragma once
// ctsyncd's composition root: a sync node (engine + links), the kernel source (the active
// node's conntrack table, mirrored) and sink (replicas written into the kernel), the role, and
// the operations the control socket offers. Everything runs on one io_context thread.
// clang-format off
#include <utility>  // before asio: Boost 1.74 with GCC 12 in C++20 mode needs it
// clang-format on

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <unordered_set>
#include <variant>
#include <vector>

#include "conf/config.hpp"
#include "replication/node.hpp"
#include "syncd/expect_sync.hpp"
#include "syncd/kernel.hpp"

namespace ctsync::syncd {

// backup: applies the peers' flows (and, in continuous mode, keeps its kernel filled with them);
// active: its kernel's flows are the cluster's, mirrored and sent; fault: as backup, reported as
// unfit to take over (keepalived's FAULT state).
enum class Role : uint8_t { kBackup, kActive, kFault };
const char* roleName(Role role);

// What a command did: `ok` false means it failed, `text` says what happened either way.
struct Reply {
  bool ok = true;
  std::string text;
};

// One counter or gauge, for `ctsyncctl stats` and the Prometheus endpoint alike.
struct Metric {
  std::string name;    // ctsync_..., Prometheus style
  std::string labels;  // "" or `peer="2"`
  std::string help;
  bool counter = true;  // false: gauge
  double value = 0;
};

// Where the role set by ctsyncctl is kept for this boot: the control socket's path with
// ".role" for ".sock" (or appended). In /run, so a reboot starts from the configured role, while
// a daemon restarted by systemd or an upgrade resumes the role keepalived gave it — a node that
// forwards traffic must not come back as backup and let its flows be deleted cluster-wide.
std::string roleFile(const std::string& controlSocket);

class Daemon {
 public:
  // Opens the links, the netlink sockets and starts in the role last set during this boot (the
  // state file beside the control socket, roleFile()), else in the configured one. Errors name
  // what failed (missing key, a link that cannot be opened, netlink not permitted, ...).
  static std::variant<std::unique_ptr<Daemon>, std::string> create(boost::asio::io_context& io,
                                                                   const conf::Config& config);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // SIGTERM: a last Alive and what is queued goes out, sockets close, timers stop. Idempotent.
  void shutdown();

  Role role() const { return role_; }

  // Backup → active: commits the replica into the kernel (in continuous mode only what is not
  // there yet), takes ownership of every flow, then mirrors the kernel. `done` runs once the
  // kernel holds the flows; the commit runs on worker threads meanwhile (one netlink socket
  // each), so replication and the control socket carry on.
  using ReplyFn = std::function<void(Reply)>;
  void promote(ReplyFn done);
  // Active → backup (or fault): stops mirroring the kernel; the flows stay in the kernel and in
  // the peers' replicas until the new active node takes them over.
  Reply demote(bool fault);
  // Writes every replica flow into the kernel now (conntrackd -c); `done` when finished.
  void commit(ReplyFn done);
  // Empties the kernel's conntrack table (conntrack -F); refused on the active node.
  Reply flushKernel();
  // Dumps the kernel again (active) and asks every peer for a bulk of its flows.
  Reply resync();

  std::string status(bool json) const;
  std::vector<Metric> metrics() const;
  // Flows as text lines (`conntrack -L -o extended`) or JSON objects: this node's own (internal)
  // or the replica (every node's flows as merged here).
  std::vector<std::string> list(bool replica, bool json) const;
  // Expectations as `conntrack -L expect` lines or JSON, this node's own or the replica's;
  // empty when [kernel] expectations is off.
  std::vector<std::string> listExpectations(bool replica, bool json) const;

  // Live event lines (`conntrack -E -o extended` form): this node's kernel events while active,
  // and with `replica` the replica's changes. Returns an id for unsubscribe().
  using EventFn = std::function<void(const std::string& line)>;
  int subscribe(bool replica, EventFn fn);
  void unsubscribe(int id);

 private:
  Daemon(boost::asio::io_context& io, const conf::Config& config);
  table::Nanos now() const;
  uint32_t remainingSeconds(const replication::ReplicaFlow& f) const;
  // Kernel source callbacks.
  void onKernelFlow(const FlowRecord& r);
  void onKernelDestroy(const FlowKey& key);
  void onDumpBegin();
  void onDumpEnd();
  // Replica changes: continuous commit and replica event lines.
  void onReplicaChange(const FlowKey& key);
  void onExpectChange(const ExpectKey& key);
  // Expectations after their masters: everything (promotion) or what changed (continuous).
  ExpectCommitResult commitExpectations(bool all);
  void scheduleContinuous();
  std::pair<std::vector<FlowRecord>, std::vector<FlowKey>> takePending();
  CommitResult commitPending();
  // Synchronous, on the io thread, one socket: small commits (continuous mode, stragglers).
  CommitResult commitFlows(std::vector<FlowRecord> flows, std::vector<FlowKey> deletes,
                           const char* why);
  // Large commits: flows without a master spread over every sink's thread, then related flows
  // and deletes on the first; `done` runs on the io thread.
  void commitInBackground(std::vector<FlowRecord> flows, const char* why,
                          std::function<void(CommitResult)> done);
  void noteCommit(const CommitResult& r, const char* why);
  std::vector<FlowRecord> replicaToCommit() const;
  void replyPromoted(const CommitResult& r, const ExpectCommitResult& e, Role from,
                     ReplyFn done);
  void completePromotion();
  void setRole(Role role);
  // A replica flow as it should be written into the kernel, if it should be (live, not ours,
  // not shadowed by a NAT conflict): its timeout aged by the time since it arrived.
  std::optional<FlowRecord> committable(const FlowKey& key) const;
  void startSource();
  void stopSource();
  void armRefresh();
  void emit(bool replica, const std::string& line);
  std::string commitSummary(const CommitResult& r) const;
  static std::string expectSummary(const ExpectCommitResult& e);  // "N expectations (...)"

  boost::asio::io_context& io_;
  conf::Config config_;
  Role role_ = Role::kBackup;
  std::unique_ptr<replication::Node> node_;
  std::unique_ptr<KernelSource> source_;
  std::unique_ptr<ExpectSync> expect_;  // null with [kernel] expectations = false
  std::vector<std::unique_ptr<KernelSink>> sinks_;  // one per commit thread; [0] for small ones
  bool committing_ = false;                         // a background commit owns the sinks
  // From promote() until the flows are adopted and the kernel mirrored (after the reply).
  bool promoting_ = false;
  ReplyFn queuedPromote_;             // asked for while a commit ran: runs after it
  std::optional<Role> queuedDemote_;  // asked for while a promotion ran: applied after it
  KernelSinkCounters sinkTotals_;     // summed after each commit (the sinks' own are per thread)
  std::unique_ptr<std::thread> worker_;
  std::unique_ptr<std::thread> expirer_;  // shortens the kernel's timeouts after a demotion
  void expireMirroredEntries();
  boost::asio::steady_timer continuousTimer_;
  boost::asio::steady_timer refreshTimer_;
  bool continuousArmed_ = false;
  std::unordered_set<FlowKey, replication::FlowKeyHasher> pending_;  // continuous mode
  bool inDump_ = false;
  std::unordered_set<FlowKey, replication::FlowKeyHasher> dumpSeen_;
  bool closed_ = false;

  // Last commit, for status.
  std::optional<CommitResult> lastCommit_;
  std::string lastCommitWhy_;
  table::Nanos lastCommitAt_ = 0;
  uint64_t promotions_ = 0;
  uint64_t demotions_ = 0;
  uint64_t kernelUpsertsSkipped_ = 0;  // kernel reports that changed nothing the peers hold
  uint64_t continuousCommits_ = 0;

  struct Subscriber {
    bool replica;
    EventFn fn;
  };
  std::map<int, Subscriber> subscribers_;
  int nextSubscriber_ = 1;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace ctsync::syncd
