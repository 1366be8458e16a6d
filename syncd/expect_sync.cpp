#include "syncd/expect_sync.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

#include "syncd/flow_format.hpp"

namespace ctsync::syncd {

using replication::Node;
using replication::ReplicaExpect;
using table::Nanos;

std::variant<std::unique_ptr<ExpectSync>, std::string> ExpectSync::open(
    boost::asio::io_context& io, const conf::Config& config, Node& node) {
  std::unique_ptr<ExpectSync> s(new ExpectSync(io, config, node));
  ExpectSync* self = s.get();
  KernelExpectSource::Callbacks cb;
  cb.upsert = [self](const ExpectRecord& e) { self->onUpsert(e); };
  cb.remove = [self](const ExpectKey& k) { self->onRemove(k); };
  cb.dumpBegin = [self] { self->onDumpBegin(); };
  cb.dumpEnd = [self] { self->onDumpEnd(); };
  auto source = KernelExpectSource::open(io, config.kernel, std::move(cb));
  if (auto* e = std::get_if<std::string>(&source)) return *e;
  s->source_ = std::move(std::get<std::unique_ptr<KernelExpectSource>>(source));
  auto sink = KernelExpectSink::open(config.kernel);
  if (auto* e = std::get_if<std::string>(&sink)) return *e;
  s->sink_ = std::move(std::get<std::unique_ptr<KernelExpectSink>>(sink));
  return s;
}

ExpectSync::ExpectSync(boost::asio::io_context& io, const conf::Config& config, Node& node)
    : config_(config), node_(node), masterTimer_(io) {}

// The kernel announces an expectation as the helper makes it, before it rewrites the packet:
// read the master back a little later, once that packet has been mangled.
void ExpectSync::armMasterTimer() {
  if (masterTimerArmed_) return;
  masterTimerArmed_ = true;
  masterTimer_.expires_after(std::chrono::milliseconds(5));
  masterTimer_.async_wait([this, alive = alive_](const boost::system::error_code& ec) {
    if (ec || !*alive) return;
    masterTimerArmed_ = false;
    std::vector<replication::FlowKey> keys = std::exchange(touchedMasters_, {});
    std::sort(keys.begin(), keys.end(), replication::flowKeyLess);
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    for (const replication::FlowKey& k : keys) {
      if (masterTouched_) masterTouched_(k);
    }
  });
}

void ExpectSync::start() {
  source_->start();  // the dump runs now: onDumpBegin ... onDumpEnd
  node_.kick();
}

void ExpectSync::stop() {
  source_->stop();
  inDump_ = false;
  dumpSeen_.clear();
}

void ExpectSync::resync() {
  source_->resync();
  node_.kick();
}

void ExpectSync::onUpsert(const ExpectRecord& e) {
  if (inDump_) dumpSeen_.insert(e.key);
  mirror_.insert(e.key);
  node_.engine().upsertExpect(e, Node::monotonicNow());
  if (!inDump_) {
    touchedMasters_.push_back(replication::FlowKey{e.master, e.key.zone});
    armMasterTimer();
    node_.kick();
  }
}

void ExpectSync::onRemove(const ExpectKey& key) {
  mirror_.erase(key);
  node_.engine().removeExpect(key, Node::monotonicNow());
  node_.kick();
}

void ExpectSync::onDumpBegin() {
  inDump_ = true;
  dumpSeen_.clear();
}

void ExpectSync::onDumpEnd() {
  inDump_ = false;
  std::vector<ExpectKey> gone;
  for (const ExpectKey& k : mirror_) {
    if (!dumpSeen_.contains(k)) gone.push_back(k);
  }
  for (const ExpectKey& k : gone) onRemove(k);
  // Expectations the engine holds as ours that the kernel never reported to this process (a
  // promotion adopted them from the replica): ours now, but gone unless the kernel has them.
  std::vector<ExpectKey> adopted;
  node_.engine().replica().forEachExpect([&](const ReplicaExpect& e) {
    if (e.record.version.node == config_.node.id && !dumpSeen_.contains(e.record.key)) {
      adopted.push_back(e.record.key);
    }
  });
  for (const ExpectKey& k : adopted) node_.engine().removeExpect(k, Node::monotonicNow());
  if (!gone.empty() || !adopted.empty()) {
    spdlog::info("kernel_expect_dump_reconciled removed={}", gone.size() + adopted.size());
  }
  dumpSeen_.clear();
  node_.kick();
}

uint32_t ExpectSync::remainingSeconds(const ReplicaExpect& e) const {
  return table::secondsLeft(e.remaining(Node::monotonicNow()));
}

std::optional<ExpectRecord> ExpectSync::committable(const ReplicaExpect& e) const {
  if (!e.masterLive || e.record.version.node == config_.node.id) return std::nullopt;
  const uint32_t left = remainingSeconds(e);
  if (left == 0) return std::nullopt;
  ExpectRecord r = e.record;
  r.timeoutSec = left;
  return r;
}

ExpectCommitResult ExpectSync::note(ExpectCommitResult r, const char* why) {
  if (r.failed > 0) {
    spdlog::warn("expect_commit_failures why={} failed={} no_master={} first=\"{}\"", why,
                 r.failed, r.noMaster, r.errors.empty() ? "" : r.errors.front());
  }
  last_ = r;
  return r;
}

ExpectCommitResult ExpectSync::commitAll() {
  pending_.clear();
  std::vector<ExpectRecord> upserts;
  node_.engine().replica().forEachExpect([&](const ReplicaExpect& e) {
    if (auto r = committable(e)) upserts.push_back(std::move(*r));
  });
  return note(sink_->commit(upserts), "all");
}

ExpectCommitResult ExpectSync::commitPending() {
  std::vector<ExpectRecord> upserts;
  std::vector<ExpectKey> deletes;
  for (const ExpectKey& k : pending_) {
    const auto e = node_.engine().replica().getExpect(k);
    if (e) {
      if (auto r = committable(*e)) {
        upserts.push_back(std::move(*r));
        continue;
      }
      if (e->record.version.node == config_.node.id) continue;  // ours: the kernel's own
    }
    deletes.push_back(k);  // gone, or its master is not here: out of the kernel
  }
  pending_.clear();
  if (upserts.empty() && deletes.empty()) return {};
  return note(sink_->commit(upserts, deletes), "changes");
}

std::vector<std::string> ExpectSync::list(bool replica, bool json) const {
  std::vector<std::string> out;
  node_.engine().replica().forEachExpect([&](const ReplicaExpect& e) {
    if (!replica && e.record.version.node != config_.node.id) return;
    const uint32_t left = remainingSeconds(e);
    out.push_back(json ? formatExpectJson(e.record, left) : formatExpect(e.record, left));
  });
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace ctsync::syncd
