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

bool InboundSequence::seen(uint64_t seq) const {
  if (seq <= cumulative_) return true;
  auto it = ahead_.upper_bound(seq);
  if (it == ahead_.begin()) return false;
  --it;
  return it->second >= seq;
}

void InboundSequence::markRange(uint64_t first, uint64_t last) {
  first = std::max(first, cumulative_ + 1);
  if (first > last) return;
  highest_ = std::max(highest_, last);
  // Merge with every range that overlaps or touches [first, last].
  auto it = ahead_.upper_bound(first);
  if (it != ahead_.begin()) {
    auto prev = std::prev(it);
    if (prev->second >= first - 1) it = prev;  // first >= 1
  }
  while (it != ahead_.end() && (last == UINT64_MAX || it->first <= last + 1)) {
    first = std::min(first, it->first);
    last = std::max(last, it->second);
    it = ahead_.erase(it);
  }
  if (first == cumulative_ + 1) {
    cumulative_ = last;
  } else {
    ahead_.emplace(first, last);
  }
}

InboundSequence::Result InboundSequence::observeEpoch(uint64_t epoch) {
  if (epoch < epoch_) return Result::kStale;
  if (epoch == epoch_) return Result::kNew;
  reset(epoch);
  return Result::kRestart;
}

InboundSequence::Result InboundSequence::receive(uint64_t epoch, uint64_t seq) {
  const Result fresh = observeEpoch(epoch);
  if (fresh == Result::kStale) return fresh;
  if (seq == 0 || seen(seq)) return Result::kDuplicate;
  markRange(seq, seq);
  return fresh;
}

bool InboundSequence::alive(uint64_t epoch, uint64_t lastSeq) {
  if (epoch != epoch_) return false;
  highest_ = std::max(highest_, lastSeq);
  return true;
}

void InboundSequence::cover(const std::vector<SeqRange>& ranges) {
  for (const SeqRange& r : ranges) {
    if (r.first != 0 && r.first <= r.last) markRange(r.first, r.last);
  }
}

uint64_t InboundSequence::highestMissing() const {
  if (complete()) return 0;
  if (ahead_.empty()) return highest_;
  const auto& [first, last] = *ahead_.rbegin();
  return last == highest_ ? first - 1 : highest_;
}

std::vector<SeqRange> InboundSequence::missing(size_t maxRanges) const {
  std::vector<SeqRange> out;
  uint64_t from = cumulative_ + 1;
  for (const auto& [first, last] : ahead_) {
    if (out.size() >= maxRanges) return out;
    if (first > from) out.push_back({from, first - 1});
    from = last + 1;
  }
  if (out.size() < maxRanges && from <= highest_) out.push_back({from, highest_});
  return out;
}

void OutboundLog::sent(uint64_t seq, std::vector<FlowKey> flows) {
  if (flows.empty()) return;
  flows_ += flows.size();
  log_.push_back({seq, std::move(flows), nullptr, 0, 0});
  trim();
}

void OutboundLog::sentBulk(uint64_t seq, std::shared_ptr<const std::vector<FlowKey>> snapshot,
                           size_t begin, size_t end) {
  if (begin >= end) return;
  log_.push_back({seq, {}, std::move(snapshot), begin, end});
}

void OutboundLog::pop() {
  forgotten_ = log_.front().seq;
  flows_ -= log_.front().flows.size();
  log_.pop_front();
}

void OutboundLog::trim() {
  while (flows_ > maxFlows_ && !log_.empty()) pop();
}

std::optional<std::vector<FlowKey>> OutboundLog::lost(const std::vector<SeqRange>& missing) const {
  std::vector<FlowKey> out;
  std::unordered_set<FlowKey, FlowKeyHasher> seen;
  for (const SeqRange& r : missing) {
    if (r.first == 0 || r.first > r.last || r.last > lastSeq_) return std::nullopt;  // not ours
    // A datagram dropped from the log may have carried anything: dropped to keep the log
    // bounded, or acknowledged by every peer known then (a peer asking for it now is new).
    if (r.first <= forgotten_) return std::nullopt;
    auto it = std::lower_bound(log_.begin(), log_.end(), r.first,
                               [](const Sent& s, uint64_t seq) { return s.seq < seq; });
    for (; it != log_.end() && it->seq <= r.last; ++it) {
      for (const FlowKey& k : it->flows) {
        if (seen.insert(k).second) out.push_back(k);
      }
      for (size_t i = it->begin; i < it->end; ++i) {
        const FlowKey& k = (*it->snapshot)[i];
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
  while (!log_.empty() && log_.front().seq <= floor) pop();
}

}  // namespace ctsync::replication
