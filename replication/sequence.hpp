#pragma once
// The bookkeeping under the reliable sync protocol, as plain data structures: what a receiver
// has seen of one sender (InboundSequence), and what a sender still owes its peers
// (OutboundLog). No time, no sockets: the protocol drives them.
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <vector>

#include "replication/records.hpp"

namespace ctsync::replication {

// One sender's datagram sequence as a receiver sees it. Sequence numbers start at 1 in every
// boot epoch of the sender.
class InboundSequence {
 public:
  enum class Result : uint8_t {
    kNew,        // first time this datagram arrived: process it
    kDuplicate,  // seen before: drop it
    kRestart,    // first datagram of a newer epoch: the sender restarted (state was reset)
    kStale,      // from an older epoch than the current one: drop it
  };

  // Registers datagram `seq` of `epoch`.
  Result receive(uint64_t epoch, uint64_t seq);
  // The sender's Alive says it has sent up to `lastSeq` in `epoch`: anything beyond what
  // arrived is missing (tail loss). Returns false for another epoch.
  bool alive(uint64_t epoch, uint64_t lastSeq);

  uint64_t epoch() const { return epoch_; }
  // Every datagram 1..cumulative() has arrived.
  uint64_t cumulative() const { return cumulative_; }
  // The highest sequence known to exist (received or announced by Alive).
  uint64_t highest() const { return highest_; }
  bool complete() const { return cumulative_ == highest_; }
  // The missing ranges, oldest first, at most `maxRanges` of them.
  std::vector<SeqRange> missing(size_t maxRanges) const;

 private:
  void reset(uint64_t epoch);
  uint64_t epoch_ = 0;
  uint64_t cumulative_ = 0;
  uint64_t highest_ = 0;
  std::set<uint64_t> ahead_;  // received, above cumulative_ + 1 (only while there is a gap)
};

// What a sender sent and its peers have not all acknowledged yet, by sequence number: the keys
// of the flows each datagram carried. Resends send a flow's *current* state, so a flow updated
// ten times while its datagrams were lost is sent once. Bounded by `maxFlows` remembered keys:
// older datagrams fall out, and a peer that asks for them needs a bulk resync.
class OutboundLog {
 public:
  explicit OutboundLog(size_t maxFlows) : maxFlows_(maxFlows) {}

  // Sequence number for the next datagram (1, 2, ...).
  uint64_t next() { return ++lastSeq_; }
  uint64_t lastSeq() const { return lastSeq_; }
  // Remembers which flows datagram `seq` (from next()) carried. Datagrams without flows (acks,
  // alives) need not be recorded.
  void sent(uint64_t seq, std::vector<FlowKey> flows);

  // The flows to resend for a peer's NACK, deduplicated, or empty if any missing datagram was
  // dropped to keep the log bounded (the peer needs a bulk resync instead). Datagrams that
  // carried no flows, or that every peer acknowledged, need no resend.
  std::optional<std::vector<FlowKey>> lost(const std::vector<SeqRange>& missing) const;

  // Peers whose acknowledgements hold datagrams in the log. A datagram is forgotten once every
  // known peer acknowledged it.
  void addPeer(uint16_t node);
  void removePeer(uint16_t node);
  void acked(uint16_t node, uint64_t cumulative);

  size_t datagrams() const { return log_.size(); }
  size_t flows() const { return flows_; }
  // The oldest sequence still remembered (lastSeq() + 1 when the log is empty).
  uint64_t oldest() const { return log_.empty() ? lastSeq_ + 1 : log_.front().seq; }

 private:
  struct Sent {
    uint64_t seq;
    std::vector<FlowKey> flows;
  };
  void trim();
  size_t maxFlows_;
  uint64_t lastSeq_ = 0;
  std::deque<Sent> log_;  // ascending seq
  size_t flows_ = 0;
  uint64_t forgotten_ = 0;  // highest sequence dropped to keep the log bounded
  std::map<uint16_t, uint64_t> peerAcked_;
};

}  // namespace ctsync::replication
