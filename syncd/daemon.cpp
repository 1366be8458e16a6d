#include "syncd/daemon.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <fstream>

#include "replication/auth.hpp"
#include "replication/codec.hpp"
#include "syncd/flow_format.hpp"
#include "syncd/kernel_expire.hpp"
#include "table/tcp.hpp"

namespace ctsync::syncd {

using replication::ReplicaFlow;
using table::kSecond;
using table::Nanos;

namespace {

// How often the active node dumps its kernel to refresh what peers hold: the kernel tells
// nobody when a packet pushes a timeout further out, so a long-lived UDP flow would otherwise
// expire in the replicas while it lives in the kernel. The dump also repairs anything missed.
constexpr Nanos kRefreshInterval = 10 * kSecond;
// A mirrored flow is sent again when the kernel's timeout exceeds what peers hold by this much
// (and by at least 25 %): small drifts are not worth a record.
constexpr uint32_t kRefreshSlackSec = 10;
// Continuous mode: replica changes are written into the kernel at most this late.
constexpr auto kContinuousDelay = std::chrono::milliseconds(2);

replication::EngineSettings engineSettings(const conf::Config& c) {
  replication::EngineSettings s;
  s.clusterId = c.node.clusterId;
  s.node = c.node.id;
  s.bootEpoch = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
  s.authMode = c.sync.encrypt ? replication::AuthMode::kAead : replication::AuthMode::kMac;
  s.maxDatagramBytes = c.sync.mtu - 48;  // IPv6 + UDP headers: fits either family
  s.wallClockOffset = replication::Node::wallClockOffset();
  s.aliveInterval = c.sync.aliveInterval;
  s.peerTimeout = c.sync.peerTimeout;
  s.digestInterval = c.sync.digestInterval;
  s.resendLogFlows = c.sync.resendLogFlows;
  s.paceBytesPerSecond = c.sync.paceBytesPerSecond;
  s.replica.tombstoneTtl = c.sync.tombstoneTime;
  return s;
}

std::vector<replication::LinkConfig> linkConfigs(const conf::SyncSettings& s) {
  std::vector<replication::LinkConfig> out;
  for (const conf::LinkSettings& l : s.links) {
    replication::LinkConfig& lc = out.emplace_back();
    lc.kind = l.kind == conf::LinkSettings::Kind::kMulticast
                  ? replication::LinkConfig::Kind::kMulticast
                  : replication::LinkConfig::Kind::kUnicast;
    lc.interface = l.interface;
    lc.port = l.port;
    lc.group = l.group;
    lc.localAddress = l.localAddress;
    lc.peers = l.peers;
    lc.rcvbufBytes = l.rcvbufBytes;
    lc.sndbufBytes = l.sndbufBytes;
  }
  return out;
}

// Same state apart from the timeout and the version: nothing a peer needs to hear about. The
// "be liberal" flag is ours (set on every committed flow), not news.
bool sameState(const FlowRecord& a, const FlowRecord& b) {
  const auto flags = [](const FlowRecord& r, int dir) {
    return static_cast<uint8_t>(r.tcpFlags[dir] | table::tcpflag::kBeLiberal);
  };
  return a.reply == b.reply && a.status == b.status && a.tcpState == b.tcpState &&
         flags(a, 0) == flags(b, 0) && flags(a, 1) == flags(b, 1) &&
         a.tcpScale[0] == b.tcpScale[0] && a.tcpScale[1] == b.tcpScale[1] && a.mark == b.mark &&
         a.labels == b.labels && a.helper == b.helper && a.master == b.master &&
         a.seqAdj[0] == b.seqAdj[0] && a.seqAdj[1] == b.seqAdj[1] && a.sctpState == b.sctpState &&
         a.sctpVtag[0] == b.sctpVtag[0] && a.sctpVtag[1] == b.sctpVtag[1] &&
         a.dccpState == b.dccpState && a.dccpRole == b.dccpRole &&
         a.dccpHandshakeSeq == b.dccpHandshakeSeq;
}

std::string jsonString(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace

std::string roleFile(const std::string& controlSocket) {
  std::string path = controlSocket;
  if (path.size() > 5 && path.compare(path.size() - 5, 5, ".sock") == 0)
    path.resize(path.size() - 5);
  return path + ".role";
}

const char* roleName(Role role) {
  switch (role) {
    case Role::kBackup:
      return "backup";
    case Role::kActive:
      return "active";
    case Role::kFault:
      return "fault";
  }
  return "?";
}

Daemon::Daemon(boost::asio::io_context& io, const conf::Config& config)
    : io_(io), config_(config), continuousTimer_(io), refreshTimer_(io) {}

Daemon::~Daemon() {
  *alive_ = false;
  shutdown();
}

std::variant<std::unique_ptr<Daemon>, std::string> Daemon::create(boost::asio::io_context& io,
                                                                  const conf::Config& config) {
  if (config.node.id == 0) return std::string("[node] id is required (1 .. 65535)");
  if (config.sync.keyFile.empty()) return std::string("[sync] key_file is required");
  if (config.sync.links.empty()) return std::string("at least one [[sync.link]] is required");
  auto loaded = replication::Key::fromFile(config.sync.keyFile);
  if (auto* err = std::get_if<std::string>(&loaded)) return *err;
  auto& key = std::get<replication::Key::Loaded>(loaded);
  if (key.worldReadable) {
    spdlog::warn("key_file_readable path={} hint=\"chmod 600 {}\"", config.sync.keyFile,
                 config.sync.keyFile);
  }
  auto filter = KernelFilter::make(config.kernel);
  if (auto* err = std::get_if<std::string>(&filter)) return "[kernel] " + *err;

  std::unique_ptr<Daemon> d(new Daemon(io, config));
  Daemon* self = d.get();

  // One netlink socket per commit thread ([kernel] commit_threads).
  for (uint32_t i = 0; i < std::max<uint32_t>(1, config.kernel.commitThreads); ++i) {
    auto sink = KernelSink::open(config.kernel);
    if (auto* err = std::get_if<std::string>(&sink)) return "kernel sink: " + *err;
    d->sinks_.push_back(std::move(std::get<std::unique_ptr<KernelSink>>(sink)));
  }

  KernelSource::Callbacks cb;
  cb.upsert = [self](const FlowRecord& r) { self->onKernelFlow(r); };
  cb.remove = [self](const FlowKey& k) { self->onKernelDestroy(k); };
  cb.dumpBegin = [self] { self->onDumpBegin(); };
  cb.dumpEnd = [self] { self->onDumpEnd(); };
  // A flow the state filter keeps out is still in the kernel: not gone.
  cb.present = [self](const FlowKey& k) {
    if (self->inDump_) self->dumpSeen_.insert(k);
  };
  auto source = KernelSource::open(io, config.kernel, std::move(std::get<KernelFilter>(filter)),
                                   std::move(cb));
  if (auto* err = std::get_if<std::string>(&source)) return "kernel source: " + *err;
  d->source_ = std::move(std::get<std::unique_ptr<KernelSource>>(source));

  auto node =
      replication::Node::open(io, engineSettings(config), key.key, linkConfigs(config.sync));
  if (auto* err = std::get_if<std::string>(&node)) return "sync link: " + *err;
  d->node_ = std::move(std::get<std::unique_ptr<replication::Node>>(node));
  d->node_->engine().onReplicaChange([self](const FlowKey& k) { self->onReplicaChange(k); });
  if (config.kernel.expectations) {
    auto expect = ExpectSync::open(io, config, *d->node_);
    if (auto* err = std::get_if<std::string>(&expect)) return "kernel expectations: " + *err;
    d->expect_ = std::move(std::get<std::unique_ptr<ExpectSync>>(expect));
    d->node_->engine().onExpectChange([self](const ExpectKey& k) { self->onExpectChange(k); });
    d->expect_->onMasterTouched([self](const FlowKey& k) { self->source_->refresh(k); });
  }
  d->node_->engine().onNatConflict([self](const FlowKey& loser) {
    spdlog::warn("nat_conflict flow=\"{}\" (the earlier flow keeps the NAT mapping)",
                 formatFlowKey(loser, nullptr));
    (void)self;
  });

  spdlog::info("started node={} cluster={} role={} commit={} links={}", config.node.id,
               config.node.clusterId,
               config.node.role == conf::NodeSettings::Role::kActive ? "active" : "backup",
               config.kernel.commit == conf::KernelSettings::Commit::kContinuous ? "continuous"
                                                                                 : "on-promote",
               config.sync.links.size());
  Role start =
      config.node.role == conf::NodeSettings::Role::kActive ? Role::kActive : Role::kBackup;
  const std::string stateFile = roleFile(config.control.socket);
  if (std::ifstream in(stateFile); in) {
    std::string saved;
    in >> saved;
    for (const Role r : {Role::kBackup, Role::kActive, Role::kFault}) {
      if (saved == roleName(r)) start = r;
    }
    spdlog::info("role_resumed role={} file={} (set by ctsyncctl before this daemon restarted)",
                 roleName(start), stateFile);
  }
  d->role_ = start;
  if (start == Role::kActive) d->startSource();
  d->armRefresh();
  d->node_->kick();
  return d;
}

void Daemon::shutdown() {
  if (closed_) return;
  closed_ = true;
  continuousTimer_.cancel();
  refreshTimer_.cancel();
  if (worker_ && worker_->joinable()) worker_->join();  // a commit in flight finishes first
  if (expirer_ && expirer_->joinable()) expirer_->join();
  if (source_) source_->stop();
  if (node_) node_->close();  // what is queued and a last Alive go out first
  subscribers_.clear();
  spdlog::info("stopped role={}", roleName(role_));
}

Nanos Daemon::now() const {
  return replication::Node::monotonicNow();
}

uint32_t Daemon::remainingSeconds(const ReplicaFlow& f) const {
  return table::secondsLeft(f.remaining(now()));
}

// ---- kernel source (active) ----------------------------------------------------------------

void Daemon::startSource() {
  if (source_->running()) return;
  source_->start();  // the dump runs in slices on the io_context: onDumpBegin ... onDumpEnd
  if (expect_) expect_->start();  // expectations are few: their dump runs now
  node_->kick();
}

void Daemon::stopSource() {
  if (expect_) expect_->stop();
  source_->stop();  // a dump in progress is abandoned without dumpEnd
  inDump_ = false;
  dumpSeen_.clear();
}

void Daemon::setRole(Role role) {
  role_ = role;
  // Kept for a restart during this boot (see roleFile). Written whole, then renamed.
  const std::string path = roleFile(config_.control.socket);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << roleName(role) << '\n';
    if (!out) {
      spdlog::warn("role_file_unwritable file={}", tmp);
      return;
    }
  }
  std::rename(tmp.c_str(), path.c_str());
}

void Daemon::onKernelFlow(const FlowRecord& r) {
  if (role_ != Role::kActive) return;
  const Nanos t = now();
  const auto held = node_->engine().local(r.key);
  const bool known = held.has_value();
  if (inDump_) {
    dumpSeen_.insert(r.key);
    // A dump repeats what we hold: send only what changed, or a timeout the kernel pushed
    // well past the one peers hold.
    if (known && sameState(*held, r)) {
      const auto mine = node_->engine().replica().get(r.key);
      const uint32_t peersLeft = mine ? remainingSeconds(*mine) : 0;
      if (r.timeoutSec <= peersLeft + std::max(kRefreshSlackSec, peersLeft / 4)) {
        ++kernelUpsertsSkipped_;
        return;
      }
    }
  }
  node_->upsert(r);
  if (!inDump_ && !subscribers_.empty()) {
    emit(false, formatFlow(r, r.timeoutSec, known ? "UPDATE" : "NEW"));
  }
  (void)t;
}

void Daemon::onKernelDestroy(const FlowKey& key) {
  if (role_ != Role::kActive) return;
  const auto held = node_->engine().local(key);
  node_->remove(key);
  if (!subscribers_.empty()) {
    emit(false, held ? formatFlow(*held, 0, "DESTROY") : formatFlowKey(key, "DESTROY"));
  }
}

void Daemon::onDumpBegin() {
  inDump_ = true;
  dumpSeen_.clear();
}

void Daemon::onDumpEnd() {
  inDump_ = false;
  if (role_ != Role::kActive) return;
  // What we hold as ours and the kernel no longer has ended while we were not listening (an
  // overrun, or flows whose commit failed at promotion).
  std::vector<FlowKey> gone;
  node_->engine().forEachLocal([&](const FlowRecord& r) {
    if (!dumpSeen_.contains(r.key)) gone.push_back(r.key);
  });
  for (const FlowKey& k : gone) node_->remove(k);
  if (!gone.empty()) spdlog::info("kernel_dump_reconciled removed={}", gone.size());
  dumpSeen_.clear();
  node_->kick();
}

void Daemon::armRefresh() {
  refreshTimer_.expires_after(std::chrono::nanoseconds(kRefreshInterval));
  refreshTimer_.async_wait([this, alive = alive_](const boost::system::error_code& ec) {
    if (ec || !*alive || closed_) return;
    if (role_ == Role::kActive && source_->running()) {
    source_->resync();
    if (expect_) expect_->resync();
  }
    armRefresh();
  });
}

// ---- replica → kernel ------------------------------------------------------------------------

std::optional<FlowRecord> Daemon::committable(const FlowKey& key) const {
  const auto f = node_->engine().replica().get(key);
  if (!f || f->natShadowed || f->record.version.node == config_.node.id) return std::nullopt;
  FlowRecord r = f->record;
  r.timeoutSec = std::max<uint32_t>(1, remainingSeconds(*f));
  return r;
}

void Daemon::onReplicaChange(const FlowKey& key) {
  if (!subscribers_.empty()) {
    const auto f = node_->engine().replica().get(key);
    emit(true,
         f ? formatFlow(f->record, remainingSeconds(*f), "UPDATE") : formatFlowKey(key, "DESTROY"));
  }
  // While a promotion commits, changes are kept to be written after it (the commit took a
  // snapshot); in continuous mode a backup writes every change.
  const bool continuous = config_.kernel.commit == conf::KernelSettings::Commit::kContinuous;
  if (promoting_ || (continuous && role_ != Role::kActive)) pending_.insert(key);
  if (continuous && role_ != Role::kActive && !promoting_) scheduleContinuous();
}

void Daemon::onExpectChange(const ExpectKey& key) {
  if (!expect_) return;
  const bool continuous = config_.kernel.commit == conf::KernelSettings::Commit::kContinuous;
  if (promoting_ || (continuous && role_ != Role::kActive)) expect_->changed(key);
  if (continuous && role_ != Role::kActive && !promoting_) scheduleContinuous();
}

ExpectCommitResult Daemon::commitExpectations(bool all) {
  if (!expect_) return {};
  return all ? expect_->commitAll() : expect_->commitPending();
}

void Daemon::scheduleContinuous() {
  if (continuousArmed_ || closed_) return;
  continuousArmed_ = true;
  continuousTimer_.expires_after(kContinuousDelay);
  continuousTimer_.async_wait([this, alive = alive_](const boost::system::error_code& ec) {
    if (ec || !*alive) return;
    continuousArmed_ = false;
    const bool expectations = expect_ && expect_->hasPending();
    if (closed_ || role_ == Role::kActive || promoting_ || (pending_.empty() && !expectations)) {
      return;
    }
    if (committing_) {  // the sinks are busy with a large commit: after it
      scheduleContinuous();
      return;
    }
    const CommitResult r = commitPending();
    commitExpectations(false);  // after the flows: their masters must be there
    ++continuousCommits_;
    if (r.failed > 0) {
      spdlog::warn("continuous_commit_failures failed={} first=\"{}\"", r.failed,
                   r.errors.empty() ? "" : r.errors.front());
    }
  });
}

std::pair<std::vector<FlowRecord>, std::vector<FlowKey>> Daemon::takePending() {
  std::vector<FlowRecord> upserts;
  std::vector<FlowKey> deletes;
  upserts.reserve(pending_.size());
  for (const FlowKey& k : pending_) {
    if (auto r = committable(k)) {
      upserts.push_back(std::move(*r));
    } else {
      const auto f = node_->engine().replica().get(k);
      // Gone, or shadowed by a NAT conflict: out of the kernel. Our own flows stay.
      if (!f || f->record.version.node != config_.node.id) deletes.push_back(k);
    }
  }
  pending_.clear();
  return {std::move(upserts), std::move(deletes)};
}

CommitResult Daemon::commitPending() {
  auto [upserts, deletes] = takePending();
  return commitFlows(std::move(upserts), std::move(deletes), "continuous");
}

namespace {

void addResult(CommitResult& total, const CommitResult& r) {
  total.created += r.created;
  total.updated += r.updated;
  total.deleted += r.deleted;
  total.absent += r.absent;
  total.failed += r.failed;
  for (const std::string& e : r.errors) {
    if (total.errors.size() < 8) total.errors.push_back(e);
  }
}

}  // namespace

CommitResult Daemon::commitFlows(std::vector<FlowRecord> flows, std::vector<FlowKey> deletes,
                                 const char* why) {
  if (source_->running()) {
    for (const FlowRecord& f : flows) source_->expectEcho(f);
  }
  CommitResult r = sinks_[0]->commit(flows, deletes);
  noteCommit(r, why);
  return r;
}

void Daemon::noteCommit(const CommitResult& r, const char* why) {
  lastCommit_ = r;
  lastCommitWhy_ = why;
  lastCommitAt_ = now();
  sinkTotals_ = KernelSinkCounters{};
  for (const auto& sink : sinks_) {  // no commit runs now: the sinks are ours to read
    const KernelSinkCounters& c = sink->counters();
    sinkTotals_.commits += c.commits;
    sinkTotals_.created += c.created;
    sinkTotals_.updated += c.updated;
    sinkTotals_.deleted += c.deleted;
    sinkTotals_.failed += c.failed;
    sinkTotals_.batches += c.batches;
  }
}

void Daemon::commitInBackground(std::vector<FlowRecord> flows, const char* why,
                                std::function<void(CommitResult)> done) {
  committing_ = true;
  if (source_->running()) {  // the events of our own writes are not news
    for (const FlowRecord& f : flows) source_->expectEcho(f);
  }
  // Related flows need their master in the kernel: they go last, after every shard.
  std::vector<std::vector<FlowRecord>> shards(sinks_.size());
  std::vector<FlowRecord> related;
  size_t next = 0;
  for (FlowRecord& f : flows) {
    if (f.master) {
      related.push_back(std::move(f));
    } else {
      shards[next++ % shards.size()].push_back(std::move(f));
    }
  }
  flows = {};
  worker_ = std::make_unique<std::thread>([this, shards = std::move(shards),
                                           related = std::move(related), why,
                                           done = std::move(done), alive = alive_]() mutable {
    const auto start = std::chrono::steady_clock::now();
    std::vector<CommitResult> results(shards.size());
    std::vector<std::thread> helpers;
    for (size_t i = 1; i < shards.size(); ++i) {
      helpers.emplace_back([&, i] { results[i] = sinks_[i]->commit(shards[i]); });
    }
    results[0] = sinks_[0]->commit(shards[0]);
    for (std::thread& t : helpers) t.join();
    CommitResult total;
    for (const CommitResult& r : results) addResult(total, r);
    if (!related.empty()) addResult(total, sinks_[0]->commit(related));
    total.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    boost::asio::post(io_, [this, total = std::move(total), why, done = std::move(done),
                            alive = std::move(alive)] {
      if (!*alive) return;
      if (worker_ && worker_->joinable()) worker_->join();
      worker_.reset();
      committing_ = false;
      noteCommit(total, why);
      done(total);
      if (queuedPromote_ && !committing_) {
        ReplyFn queued = std::move(queuedPromote_);
        queuedPromote_ = nullptr;
        promote(std::move(queued));
      }
    });
  });
}

std::vector<FlowRecord> Daemon::replicaToCommit() const {
  std::vector<FlowRecord> flows;
  flows.reserve(node_->engine().replica().size());
  node_->engine().replica().forEach([&](const ReplicaFlow& f) {
    if (f.natShadowed || f.record.version.node == config_.node.id) return;
    FlowRecord rec = f.record;
    rec.timeoutSec = std::max<uint32_t>(1, remainingSeconds(f));
    flows.push_back(std::move(rec));
  });
  return flows;
}

std::string Daemon::commitSummary(const CommitResult& r) const {
  char buf[256];
  std::snprintf(
      buf, sizeof buf, "%zu flows in %.3f s (created %zu, updated %zu, failed %zu; deleted %zu)",
      r.created + r.updated + r.failed, r.seconds, r.created, r.updated, r.failed, r.deleted);
  std::string out = buf;
  for (const std::string& e : r.errors) out += "\n  " + e;
  return out;
}

std::string Daemon::expectSummary(const ExpectCommitResult& e) {
  return std::to_string(e.created + e.failed) + " expectations (created " +
         std::to_string(e.created) + ", failed " + std::to_string(e.failed) + ")";
}

// ---- operations ----------------------------------------------------------------------------

void Daemon::promote(ReplyFn done) {
  if (closed_) {
    done({false, "ctsyncd is stopping"});
    return;
  }
  queuedDemote_.reset();  // the last request wins
  if (role_ == Role::kActive) {
    done({true, promoting_ ? "already active (taking over the flows)" : "already active"});
    return;
  }
  if (committing_) {  // a manual commit holds the sinks: promote right after it
    if (queuedPromote_) queuedPromote_({false, "superseded by a later promote"});
    queuedPromote_ = std::move(done);
    return;
  }
  promoting_ = true;
  const Role from = role_;
  if (config_.kernel.commit == conf::KernelSettings::Commit::kContinuous) {
    // The kernel holds the flows already: write the last changes and answer. Then, in the
    // background, the whole replica once more — flows a continuous commit could not write
    // (failed, flushed, a NAT conflict lifted) get in before they are adopted.
    const CommitResult flows = commitPending();
    const ExpectCommitResult expectations = commitExpectations(false);
    replyPromoted(flows, expectations, from, std::move(done));
    commitInBackground(replicaToCommit(), "promote-check", [this](const CommitResult& r) {
      spdlog::info("promote_check created={} updated={} failed={} seconds={:.3f}", r.created,
                   r.updated, r.failed, r.seconds);
      commitExpectations(true);  // the ones a continuous commit missed (master came late)
      completePromotion();
    });
    return;
  }
  pending_.clear();
  if (expect_) expect_->dropPending();
  commitInBackground(replicaToCommit(), "promote",
                     [this, from, done = std::move(done)](CommitResult r) mutable {
                       // What changed while the snapshot was being written.
                       if (!pending_.empty()) {
                         auto [upserts, deletes] = takePending();
                         const CommitResult late = sinks_[0]->commit(upserts, deletes);
                         addResult(r, late);
                         r.seconds += late.seconds;
                         noteCommit(r, "promote");
                       }
                       // The masters are in: now what they announced (a data connection
                       // opened right after the addresses move must find its expectation).
                       const ExpectCommitResult e = commitExpectations(true);
                       replyPromoted(r, e, from, std::move(done));
                       boost::asio::post(io_, [this, alive = alive_] {
                         if (*alive && !closed_) completePromotion();
                       });
                     });
}

// The kernel holds the flows: the caller may raise the addresses now.
void Daemon::replyPromoted(const CommitResult& r, const ExpectCommitResult& e, Role from,
                           ReplyFn done) {
  setRole(Role::kActive);
  ++promotions_;
  spdlog::info(
      "promoted from={} created={} updated={} failed={} seconds={:.3f} expectations={} "
      "expectations_failed={}",
      roleName(from), r.created, r.updated, r.failed, r.seconds, e.created, e.failed);
  if (r.failed > 0) {
    spdlog::warn("promote_commit_failures failed={} first=\"{}\"", r.failed,
                 r.errors.empty() ? "" : r.errors.front());
  }
  std::string text = "promoted: " + commitSummary(r);
  if (expect_) {
    text += "\n" + expectSummary(e);
    for (const std::string& line : e.errors) text += "\n  " + line;
  }
  done({true, text});
}

// After the answer: what changed since is written too, then the flows become ours (a new
// version each, sent to the peers) and mirroring starts (subscribe, then dump, so no change
// of the kernel's falls in between; flows the kernel does not hold are deleted at that dump).
void Daemon::completePromotion() {
  if (!pending_.empty()) commitPending();
  commitExpectations(false);
  promoting_ = false;
  if (role_ != Role::kActive) return;
  node_->engine().adoptAll(now());
  node_->kick();
  startSource();
  if (queuedDemote_) {
    const bool fault = *queuedDemote_ == Role::kFault;
    queuedDemote_.reset();
    demote(fault);
  }
}

Reply Daemon::demote(bool fault) {
  const Role to = fault ? Role::kFault : Role::kBackup;
  if (queuedPromote_) {  // the last request wins
    queuedPromote_({false, "superseded by a demote"});
    queuedPromote_ = nullptr;
  }
  if (promoting_) {
    queuedDemote_ = to;
    spdlog::info("demote_queued to={} (after the running promotion)", roleName(to));
    return {true, std::string("role: ") + roleName(to) + " (once the running promotion ends)"};
  }
  if (role_ == to) return {true, std::string("already ") + roleName(to)};
  const Role from = role_;
  if (role_ == Role::kActive) {
    stopSource();
    ++demotions_;
    // In on-promote mode nothing keeps this kernel in step any more: its entries for flows
    // now forwarded elsewhere would live on for days (continuous mode deletes them as the
    // new active node's changes arrive).
    if (config_.kernel.commit == conf::KernelSettings::Commit::kOnPromote) {
      expireMirroredEntries();
    }
  }
  setRole(to);
  spdlog::info("demoted from={} to={}", roleName(from), roleName(to));
  return {true, std::string("role: ") + roleName(to)};
}

// conntrackd -t: the entries this node mirrored get a short timeout; a packet pushes a live
// one out again, stale ones expire. On a worker thread (a dump of the whole table).
void Daemon::expireMirroredEntries() {
  static constexpr uint32_t kStaleSeconds = 30;
  if (expirer_ && expirer_->joinable()) expirer_->join();
  auto filter = KernelFilter::make(config_.kernel);
  if (!std::holds_alternative<KernelFilter>(filter)) return;
  expirer_ = std::make_unique<std::thread>(
      [this, filter = std::get<KernelFilter>(std::move(filter)), alive = alive_] {
        auto result = shortenKernelTimeouts(filter, kStaleSeconds);
        boost::asio::post(io_, [result = std::move(result), alive] {
          if (!*alive) return;
          if (auto* r = std::get_if<ExpireResult>(&result)) {
            spdlog::info("demoted_entries_expiring shortened={} skipped={} failed={} seconds={}",
                         r->shortened, r->skipped, r->failed, kStaleSeconds);
          } else {
            spdlog::warn("demoted_entries_not_expired reason=\"{}\"",
                         std::get<std::string>(result));
          }
        });
      });
}

void Daemon::commit(ReplyFn done) {
  if (closed_) {
    done({false, "ctsyncd is stopping"});
    return;
  }
  if (promoting_ || committing_) {
    done({false, "a promotion or commit is running already; try again when it is done"});
    return;
  }
  commitInBackground(replicaToCommit(), "commit", [this, done = std::move(done)](CommitResult r) {
    const ExpectCommitResult e = commitExpectations(true);
    spdlog::info("committed created={} updated={} failed={} seconds={:.3f} expectations={}",
                 r.created, r.updated, r.failed, r.seconds, e.created);
    std::string text = "committed: " + commitSummary(r);
    if (expect_) text += "\n" + expectSummary(e);
    done({r.failed == 0 && e.failed == 0, text});
  });
}

Reply Daemon::flushKernel() {
  if (role_ == Role::kActive) {
    return {false,
            "refusing to flush the active node's kernel table (every connection through it "
            "would be dropped); demote first"};
  }
  if (committing_) return {false, "a commit is running; flush when it is done"};
  const size_t n = sinks_[0]->flushKernel();
  spdlog::info("kernel_flushed entries={}", n);
  return {true, "flushed: " + std::to_string(n) + " kernel entries removed"};
}

Reply Daemon::resync() {
  if (role_ == Role::kActive && source_->running()) source_->resync();
  node_->engine().requestResync(now());
  node_->kick();
  spdlog::info("resync_requested role={}", roleName(role_));
  return {true, "resync requested from every peer"};
}

// ---- reports -------------------------------------------------------------------------------

std::string Daemon::status(bool json) const {
  const Nanos t = now();
  const auto& engine = node_->engine();
  const auto peers = engine.peers(t);
  const auto& src = source_->counters();
  const auto links = node_->channel().stats();
  if (json) {
    std::string out = "{";
    out += "\"role\":" + jsonString(roleName(role_));
    out += ",\"node\":" + std::to_string(config_.node.id);
    out += ",\"cluster\":" + std::to_string(config_.node.clusterId);
    out += ",\"commit_mode\":" +
           jsonString(config_.kernel.commit == conf::KernelSettings::Commit::kContinuous
                          ? "continuous"
                          : "on-promote");
    out += ",\"source_running\":" + std::string(source_->running() ? "true" : "false");
    out += ",\"local_flows\":" + std::to_string(engine.localFlows());
    out += ",\"replica_flows\":" + std::to_string(engine.replica().size());
    out += ",\"pending_commit\":" + std::to_string(pending_.size());
    out += ",\"active_link\":" +
           (links.activeLink ? std::to_string(*links.activeLink) : std::string("null"));
    out += ",\"peers\":[";
    for (size_t i = 0; i < peers.size(); ++i) {
      const auto& p = peers[i];
      if (i > 0) out += ",";
      out += "{\"node\":" + std::to_string(p.node) + ",\"up\":" + (p.up ? "true" : "false") +
             ",\"lag\":" + std::to_string(p.lag) + ",\"missing\":" + std::to_string(p.missing) +
             ",\"last_heard_ms\":" + std::to_string((t - p.lastHeard) / table::kMillisecond) +
             ",\"bulk_open\":" + (p.bulkOpen ? "true" : "false") + "}";
    }
    out += "]";
    if (lastCommit_) {
      out += ",\"last_commit\":{\"why\":" + jsonString(lastCommitWhy_) +
             ",\"created\":" + std::to_string(lastCommit_->created) +
             ",\"updated\":" + std::to_string(lastCommit_->updated) +
             ",\"deleted\":" + std::to_string(lastCommit_->deleted) +
             ",\"failed\":" + std::to_string(lastCommit_->failed) +
             ",\"seconds\":" + std::to_string(lastCommit_->seconds) +
             ",\"ago_ms\":" + std::to_string((t - lastCommitAt_) / table::kMillisecond) + "}";
    }
    out += ",\"kernel_events\":" +
           std::to_string(src.newEvents + src.updateEvents + src.destroyEvents);
    out += ",\"kernel_overruns\":" + std::to_string(src.overruns);
    out += "}";
    return out;
  }
  char buf[256];
  std::string out;
  out += std::string("role: ") + roleName(role_) + "\n";
  out += "node: " + std::to_string(config_.node.id) + " (cluster " +
         std::to_string(config_.node.clusterId) + ")\n";
  out += std::string("commit mode: ") +
         (config_.kernel.commit == conf::KernelSettings::Commit::kContinuous ? "continuous"
                                                                             : "on-promote") +
         "\n";
  out += std::string("kernel source: ") + (source_->running() ? "mirroring" : "stopped") + "\n";
  out += "local flows: " + std::to_string(engine.localFlows()) + "\n";
  out += "replica flows: " + std::to_string(engine.replica().size()) + " (nat shadowed " +
         std::to_string(engine.replica().natShadowedCount()) + ")\n";
  if (!pending_.empty()) out += "pending commit: " + std::to_string(pending_.size()) + "\n";
  out += "sync link: " +
         (links.activeLink ? "link " + std::to_string(*links.activeLink) : std::string("none up")) +
         " of " + std::to_string(links.links.size()) + "\n";
  out += "peers: " + std::to_string(peers.size()) + "\n";
  for (const auto& p : peers) {
    std::snprintf(buf, sizeof buf,
                  "  node %u: %s, lag %" PRIu64 ", missing %" PRIu64 ", heard %.1f s ago%s\n",
                  p.node, p.up ? "up" : "DOWN", p.lag, p.missing,
                  static_cast<double>(t - p.lastHeard) / kSecond,
                  p.bulkOpen ? ", receiving its bulk" : "");
    out += buf;
  }
  if (lastCommit_) {
    std::snprintf(buf, sizeof buf, "last commit (%s, %.1f s ago): ", lastCommitWhy_.c_str(),
                  static_cast<double>(t - lastCommitAt_) / kSecond);
    out += buf + commitSummary(*lastCommit_) + "\n";
  } else {
    out += "last commit: none\n";
  }
  std::snprintf(buf, sizeof buf,
                "kernel events: new %" PRIu64 ", update %" PRIu64 ", destroy %" PRIu64
                ", overruns %" PRIu64 ", dumps %" PRIu64 "\n",
                src.newEvents, src.updateEvents, src.destroyEvents, src.overruns, src.dumps);
  out += buf;
  return out;
}

std::vector<Metric> Daemon::metrics() const {
  const auto& e = node_->engine().counters();
  const auto& src = source_->counters();
  const KernelSinkCounters& snk = sinkTotals_;
  std::vector<Metric> m;
  auto counter = [&m](std::string name, std::string help, double v, std::string labels = {}) {
    m.push_back({"ctsync_" + std::move(name), std::move(labels), std::move(help), true, v});
  };
  auto gauge = [&m](std::string name, std::string help, double v, std::string labels = {}) {
    m.push_back({"ctsync_" + std::move(name), std::move(labels), std::move(help), false, v});
  };
  auto u = [](uint64_t v) { return static_cast<double>(v); };
  for (const Role r : {Role::kBackup, Role::kActive, Role::kFault}) {
    gauge("role", "1 for the role this node is in", role_ == r ? 1 : 0,
          std::string("role=\"") + roleName(r) + "\"");
  }
  gauge("local_flows", "flows this node owns (its kernel's, while active)",
        u(node_->engine().localFlows()));
  gauge("replica_flows", "flows in the merged replica (every node's)",
        u(node_->engine().replica().size()));
  gauge("replica_tombstones", "deleted flows remembered",
        u(node_->engine().replica().tombstoneCount()));
  gauge("pending_commit", "replica changes waiting to be written into the kernel (continuous)",
        u(pending_.size()));
  counter("promotions_total", "times promoted to active", u(promotions_));
  counter("demotions_total", "times demoted from active", u(demotions_));
  counter("datagrams_sent_total", "sync datagrams sent", u(e.datagramsSent));
  counter("bytes_sent_total", "sync bytes sent", u(e.bytesSent));
  counter("datagrams_received_total", "sync datagrams accepted", u(e.datagramsReceived));
  counter("bytes_received_total", "sync bytes accepted", u(e.bytesReceived));
  counter("upserts_sent_total", "flow records sent (resends and bulks included)", u(e.upsertsSent));
  counter("deletes_sent_total", "flow deletes sent", u(e.deletesSent));
  counter("upserts_received_total", "flow records received", u(e.upsertsReceived));
  counter("deletes_received_total", "flow deletes received", u(e.deletesReceived));
  counter("resent_records_total", "records resent for nacks or digests", u(e.resentRecords));
  gauge("local_expectations", "expectations this node owns (its kernel's, while active)",
        u(node_->engine().localExpects()));
  gauge("replica_expectations", "expectations in the merged replica (every node's)",
        u(node_->engine().replica().expectCount()));
  counter("expect_upserts_sent_total", "expectation records sent (resends and bulks included)",
          u(e.expectUpsertsSent));
  counter("expect_deletes_sent_total", "expectation deletes sent", u(e.expectDeletesSent));
  counter("expect_upserts_received_total", "expectation records received",
          u(e.expectUpsertsReceived));
  counter("expect_deletes_received_total", "expectation deletes received",
          u(e.expectDeletesReceived));
  if (expect_) {
    const KernelExpectCounters& xs = expect_->sourceCounters();
    const KernelExpectSinkCounters& xk = expect_->sinkCounters();
    counter("kernel_expect_new_events_total", "expectation NEW events from the kernel",
            u(xs.newEvents));
    counter("kernel_expect_destroy_events_total", "expectation DESTROY events from the kernel",
            u(xs.destroyEvents));
    counter("kernel_expect_filtered_total", "kernel expectations of helpers not synced",
            u(xs.filtered));
    counter("kernel_expect_unparsable_total", "kernel expectations that could not be carried",
            u(xs.unparsable));
    counter("kernel_expect_overruns_total", "expectation event socket overruns (ENOBUFS)",
            u(xs.overruns));
    counter("kernel_expect_dumps_total", "dumps of the kernel's expectations", u(xs.dumps));
    counter("kernel_expect_commits_total", "expectation commits into the kernel", u(xk.commits));
    counter("kernel_expect_created_total", "expectations created in the kernel", u(xk.created));
    counter("kernel_expect_deleted_total", "expectations deleted from the kernel", u(xk.deleted));
    counter("kernel_expect_failed_total", "expectation creates or deletes the kernel refused",
            u(xk.failed));
  }
  counter("acks_sent_total", "acks sent", u(e.acksSent));
  counter("nacks_sent_total", "nacks sent", u(e.nacksSent));
  counter("nacks_received_total", "nacks received", u(e.nacksReceived));
  counter("gaps_total", "gaps found in peers' streams", u(e.gaps));
  counter("bulks_sent_total", "bulk transfers of our flows completed", u(e.bulksSent));
  counter("bulks_received_total", "bulk transfers received", u(e.bulksReceived));
  counter("sweeps_total", "bulk sweeps", u(e.sweeps));
  counter("swept_flows_total", "flows removed by sweeps", u(e.sweptFlows));
  counter("peer_restarts_total", "peers seen restarting", u(e.peerRestarts));
  counter("digest_mismatches_total", "digest ranges found different", u(e.digestMismatches));
  counter("ranges_repaired_total", "digest ranges resent", u(e.rangesRepaired));
  counter("owner_reasserts_total", "records in our name corrected", u(e.ownerReasserts));
  counter("hlc_rejected_total", "versions too far in the future", u(e.hlcRejected));
  counter("pacing_waits_total", "datagrams that waited for the pacer", u(e.pacingWaits));
  for (size_t i = 0; i < e.authDrops.size(); ++i) {
    counter("auth_drops_total", "datagrams dropped by authentication, by reason", u(e.authDrops[i]),
            std::string("reason=\"") +
                replication::dropReasonName(static_cast<replication::DropReason>(i)) + "\"");
  }
  for (size_t i = 0; i < e.decodeDrops.size(); ++i) {
    counter("decode_drops_total", "datagrams dropped by the decoder, by reason",
            u(e.decodeDrops[i]),
            std::string("reason=\"") +
                replication::decodeErrorName(static_cast<replication::DecodeError>(i)) + "\"");
  }
  for (size_t i = 0; i < e.applied.size(); ++i) {
    counter("replica_applied_total", "records applied to the replica, by outcome", u(e.applied[i]),
            std::string("outcome=\"") +
                replication::applyOutcomeName(static_cast<replication::ApplyOutcome>(i)) + "\"");
  }
  counter("kernel_events_total", "kernel conntrack events", u(src.newEvents), "type=\"new\"");
  counter("kernel_events_total", "kernel conntrack events", u(src.updateEvents), "type=\"update\"");
  counter("kernel_events_total", "kernel conntrack events", u(src.destroyEvents),
          "type=\"destroy\"");
  counter("kernel_filtered_total", "kernel flows the filters kept out", u(src.filtered));
  counter("kernel_echoes_total", "events of our own commits not sent out", u(src.echoesSuppressed));
  counter("kernel_overruns_total", "event socket overruns (each followed by a resync)",
          u(src.overruns));
  counter("kernel_dumps_total", "full dumps of the kernel table", u(src.dumps));
  counter("kernel_unchanged_total", "dumped flows peers already hold as they are",
          u(kernelUpsertsSkipped_));
  counter("commits_total", "commits into the kernel", u(snk.commits));
  counter("continuous_commits_total", "continuous-mode commits", u(continuousCommits_));
  counter("commit_created_total", "kernel entries created", u(snk.created));
  counter("commit_updated_total", "kernel entries updated (existed already)", u(snk.updated));
  counter("commit_deleted_total", "kernel entries deleted", u(snk.deleted));
  counter("commit_failed_total", "kernel writes that failed", u(snk.failed));
  counter("commit_batches_total", "netlink sends while committing", u(snk.batches));
  if (lastCommit_) {
    gauge("last_commit_seconds", "duration of the last commit", lastCommit_->seconds);
    gauge("last_commit_flows", "flows written by the last commit",
          u(lastCommit_->created + lastCommit_->updated));
  }
  const Nanos t = now();
  for (const auto& p : node_->engine().peers(t)) {
    const std::string l = "peer=\"" + std::to_string(p.node) + "\"";
    gauge("peer_up", "1 while the peer is heard from", p.up ? 1 : 0, l);
    gauge("peer_lag", "our datagrams the peer has not acknowledged", u(p.lag), l);
    gauge("peer_missing", "the peer's datagrams we are waiting for", u(p.missing), l);
    gauge("peer_last_heard_seconds", "seconds since the peer was last heard",
          static_cast<double>(t - p.lastHeard) / kSecond, l);
  }
  const auto links = node_->channel().stats();
  for (size_t i = 0; i < links.links.size(); ++i) {
    const auto& l = links.links[i];
    const std::string lb = "link=\"" + std::to_string(i) + "\"";
    gauge("link_active", "1 for the link that sends", links.activeLink == i ? 1 : 0, lb);
    counter("link_datagrams_sent_total", "datagrams sent on the link", u(l.datagramsSent), lb);
    counter("link_datagrams_received_total", "datagrams received on the link",
            u(l.datagramsReceived), lb);
    counter("link_send_errors_total", "sends that failed on the link",
            u(l.sendWouldBlock + l.sendNoBuffers + l.sendLinkDown + l.sendUnreachable +
              l.sendAddrNotAvail + l.sendOtherErrors),
            lb);
    counter("link_down_total", "times the link went down", u(l.timesDown), lb);
  }
  return m;
}

std::vector<std::string> Daemon::list(bool replica, bool json) const {
  std::vector<std::string> out;
  if (replica) {
    out.reserve(node_->engine().replica().size());
    node_->engine().replica().forEach([&](const ReplicaFlow& f) {
      const uint32_t left = remainingSeconds(f);
      out.push_back(json ? formatFlowJson(f.record, left) : formatFlow(f.record, left));
    });
  } else {
    out.reserve(node_->engine().localFlows());
    node_->engine().forEachLocal([&](const FlowRecord& r) {
      const auto f = node_->engine().replica().get(r.key);
      const uint32_t left = f ? remainingSeconds(*f) : r.timeoutSec;
      out.push_back(json ? formatFlowJson(r, left) : formatFlow(r, left));
    });
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> Daemon::listExpectations(bool replica, bool json) const {
  return expect_ ? expect_->list(replica, json) : std::vector<std::string>{};
}

int Daemon::subscribe(bool replica, EventFn fn) {
  const int id = nextSubscriber_++;
  subscribers_.emplace(id, Subscriber{replica, std::move(fn)});
  return id;
}

void Daemon::unsubscribe(int id) {
  subscribers_.erase(id);
}

void Daemon::emit(bool replica, const std::string& line) {
  // A subscriber may unsubscribe (its client went away) while we deliver.
  std::vector<EventFn> targets;
  for (const auto& [id, s] : subscribers_) {
    if (s.replica == replica) targets.push_back(s.fn);
  }
  for (const EventFn& fn : targets) fn(line);
}

}  // namespace ctsync::syncd
