#include "replication/sequence.hpp"

#include <algorithm>
#include <unordered_set>

namespace ctsync::replication {

void InboundSequence::reset(uint64_t epoch) {
  epoch_ = epoch;
  cumulative_ = 0;
  highest_ = 0;
  ahead_.clear();
}

InboundSequence::Result InboundSequence::receive(uint64_t epoch, uint64_t seq) {
  Result fresh = Result::kNew;
  if (epoch < epoch_) return Result::kStale;
  if (epoch > epoch_) {
    reset(epoch);
    fresh = Result::kRestart;
  }
  if (seq == 0 || seq <= cumulative_ || ahead_.count(seq) != 0) return Result::kDuplicate;
  highest_ = std::max(highest_, seq);
  if (seq == cumulative_ + 1) {
    cumulative_ = seq;
    // Datagrams that arrived early now join the contiguous prefix.
    while (!ahead_.empty() && *ahead_.begin() == cumulative_ + 1) {
      cumulative_ = *ahead_.begin();
      ahead_.erase(ahead_.begin());
    }
  } else {
    ahead_.insert(seq);
  }
  return fresh;
}

bool InboundSequence::alive(uint64_t epoch, uint64_t lastSeq) {
  if (epoch != epoch_) return false;
  highest_ = std::max(highest_, lastSeq);
  return true;
}

std::vector<SeqRange> InboundSequence::missing(size_t maxRanges) const {
  std::vector<SeqRange> out;
  uint64_t from = cumulative_ + 1;
  for (uint64_t got : ahead_) {
    if (out.size() >= maxRanges) return out;
    if (got > from) out.push_back({from, got - 1});
    from = got + 1;
  }
  if (out.size() < maxRanges && from <= highest_) out.push_back({from, highest_});
  return out;
}

void OutboundLog::sent(uint64_t seq, std::vector<FlowKey> flows) {
  if (flows.empty()) return;
  flows_ += flows.size();
  log_.push_back({seq, std::move(flows)});
  trim();
}

void OutboundLog::trim() {
  while (flows_ > maxFlows_ && !log_.empty()) {
    flows_ -= log_.front().flows.size();
    forgotten_ = log_.front().seq;
    log_.pop_front();
  }
}

std::optional<std::vector<FlowKey>> OutboundLog::lost(const std::vector<SeqRange>& missing) const {
  std::vector<FlowKey> out;
  std::unordered_set<FlowKey, FlowKeyHasher> seen;
  for (const SeqRange& r : missing) {
    if (r.first == 0 || r.first > r.last || r.last > lastSeq_) return std::nullopt;  // not ours
    // A datagram dropped from the log to keep it bounded may have carried anything.
    if (r.first <= forgotten_) return std::nullopt;
    auto it = std::lower_bound(log_.begin(), log_.end(), r.first,
                               [](const Sent& s, uint64_t seq) { return s.seq < seq; });
    for (; it != log_.end() && it->seq <= r.last; ++it) {
      for (const FlowKey& k : it->flows) {
        if (seen.insert(k).second) out.push_back(k);
      }
    }
  }
  return out;
}

void OutboundLog::addPeer(uint16_t node) {
  peerAcked_.emplace(node, 0);
}

void OutboundLog::removePeer(uint16_t node) {
  peerAcked_.erase(node);
  acked(node, 0);  // a departed peer no longer holds anything back
}

void OutboundLog::acked(uint16_t node, uint64_t cumulative) {
  auto it = peerAcked_.find(node);
  if (it != peerAcked_.end()) it->second = std::max(it->second, std::min(cumulative, lastSeq_));
  uint64_t floor = lastSeq_;
  for (const auto& [peer, upTo] : peerAcked_) floor = std::min(floor, upTo);
  while (!log_.empty() && log_.front().seq <= floor) {
    flows_ -= log_.front().flows.size();
    log_.pop_front();
  }
}

}  // namespace ctsync::replication
