#pragma once
// The bookkeeping under the reliable sync protocol, as plain data structures: what a receiver
// has seen of one sender (InboundSequence), and what a sender still owes its peers
// (OutboundLog). No time, no sockets: the protocol drives them.
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
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
  // A datagram of `epoch` without a sequence number (control records only) arrived: kRestart
  // when the epoch is newer (the state resets, as in receive()), kStale when older, else kNew.
  Result observeEpoch(uint64_t epoch);
  // The sender's Alive says it has sent up to `lastSeq` in `epoch`: anything beyond what
  // arrived is missing (tail loss). Returns false for another epoch.
  bool alive(uint64_t epoch, uint64_t lastSeq);
  // The sender says datagrams in `ranges` of the current epoch need not arrive any more (it
  // resent their content in later datagrams): count them as received.
  void cover(const std::vector<SeqRange>& ranges);

  uint64_t epoch() const { return epoch_; }
  // Every datagram 1..cumulative() has arrived.
  uint64_t cumulative() const { return cumulative_; }
  // The highest sequence known to exist (received or announced by Alive).
  uint64_t highest() const { return highest_; }
  bool complete() const { return cumulative_ == highest_; }
  // The highest sequence number still missing, 0 when complete().
  uint64_t highestMissing() const;
  // The missing ranges, oldest first, at most `maxRanges` of them.
  std::vector<SeqRange> missing(size_t maxRanges) const;

 private:
  void reset(uint64_t epoch);
  bool seen(uint64_t seq) const;
  void markRange(uint64_t first, uint64_t last);
  uint64_t epoch_ = 0;
  uint64_t cumulative_ = 0;
  uint64_t highest_ = 0;
  // Received ranges above cumulative_ + 1, first -> last, disjoint and never adjacent (only
  // while there is a gap).
  std::map<uint64_t, uint64_t> ahead_;
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
  // A datagram of a bulk transfer: it carried keys [begin, end) of `snapshot`, the list of keys
  // the bulk walks. Not counted against maxFlows (the snapshot exists anyway while the bulk
  // runs), so a bulk larger than the log can still be repaired by resends.
  void sentBulk(uint64_t seq, std::shared_ptr<const std::vector<FlowKey>> snapshot, size_t begin,
                size_t end);

  // The flows to resend for a peer's NACK, deduplicated, or nullopt if any missing datagram
  // left the log (dropped to keep it bounded, or acknowledged by every peer known at the time:
  // a peer asking for it is new) — the peer needs a bulk resync instead. Datagrams that carried
  // no flows need no resend.
  std::optional<std::vector<FlowKey>> lost(const std::vector<SeqRange>& missing) const;

  // Peers whose acknowledgements hold datagrams in the log. A datagram is forgotten once every
  // known peer acknowledged it.
  void addPeer(uint16_t node);
  void removePeer(uint16_t node);
  void acked(uint16_t node, uint64_t cumulative);

  size_t datagrams() const { return log_.size(); }
  size_t flows() const { return flows_; }
  // The highest sequence that left the log (0: none yet). Gaps at or below it need a bulk.
  uint64_t forgotten() const { return forgotten_; }
  // The oldest sequence still remembered (lastSeq() + 1 when the log is empty).
  uint64_t oldest() const { return log_.empty() ? lastSeq_ + 1 : log_.front().seq; }

 private:
  struct Sent {
    uint64_t seq;
    std::vector<FlowKey> flows;
    std::shared_ptr<const std::vector<FlowKey>> snapshot;  // bulk datagrams: keys [begin, end)
    size_t begin = 0;
    size_t end = 0;
  };
  void pop();
  void trim();
  size_t maxFlows_;
  uint64_t lastSeq_ = 0;
  std::deque<Sent> log_;  // ascending seq
  size_t flows_ = 0;
  uint64_t forgotten_ = 0;  // highest sequence that left the log
  std::map<uint16_t, uint64_t> peerAcked_;
};

}  // namespace ctsync::replication
