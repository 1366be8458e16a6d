#pragma once
// The sync protocol of one node, without I/O: local flow changes in, datagrams out; datagrams
// in, replica updates and replies out. Time is passed in by the caller (a manual clock in the
// tests, steady_clock in the daemon) and datagrams leave through a callback, so the same engine
// runs over the fake network of the simulations and over Asio sockets (replication/node.hpp).
//
// Protocol (README "Replication protocol" has the operator's version):
//  - Every datagram is authenticated (auth.hpp) and carries one packed Cap'n Proto message
//    (codec.hpp). Datagrams that carry state (flow upserts and deletes, bulk markers, Covered)
//    are *reliable*: numbered 1, 2, ... per sender and boot epoch. Datagrams of control records
//    only (ack, nack, alive, resync request, digest) have sequence 0 and are never resent.
//  - Receivers track each sender's sequence (InboundSequence), acknowledge the contiguous
//    prefix (Ack) and ask for gaps (Nack). A sender answers a Nack by sending the *current*
//    state of the flows the missing datagrams carried (OutboundLog; updates coalesce), then a
//    Covered record naming the answered ranges so the receiver counts them as received. A gap
//    the log cannot answer (it fell out, or the asker is new) is answered by a bulk.
//  - An idle sender sends Alive(last sequence) — first soon after its last datagram (a tail
//    loss probe), then every alive interval — so lost tails are noticed.
//  - A bulk sends every live flow of the sender's table (its own and the ones it replicates)
//    and its own recent deletes, each datagram led by BulkBegin(id) so the bulk opens at a
//    receiver even when its first datagram is lost, and ends with BulkEnd(id). A receiver
//    sweeps (removes the flows the sender owns that the bulk did not carry) once it has every
//    datagram up to the BulkEnd. Bulks run when a peer restarted (new epoch: we ask with a
//    ResyncRequest, retried until the bulk begins), when a gap cannot be resent, and on
//    request.
//  - Anti-entropy: every digest interval a node sends a digest of each hash range of its
//    replica. A receiver that is in sync with the sender (no gap, nothing unacknowledged, nothing
//    queued) and finds a range different resends that range's flows and tombstones and returns
//    its own digest of it, so both sides converge on the union; when more than maxRepairRanges
//    differ, the two exchange bulks instead.
//  - Ownership: a node is the authority for the flows it writes (version.node). A record that
//    claims to be ours but differs from our local state (a corrupted or stale replica elsewhere)
//    makes us write our state again with a newer version, or a delete if we have no such flow.
//  - Expectations (a helper's announced connections) travel like flows: this node's own are
//    reliable (queued, coalesced, resent on loss), carried by bulks after the flows, swept,
//    digested and owner-corrected the same way. In the replica each lives no longer than its
//    master flow (expect_table.hpp).
//  - Pacing: reliable datagrams leave at most at `paceBytesPerSecond` (token bucket), so a bulk
//    of a million flows does not overrun the receivers' socket buffers. Control datagrams are
//    not held back.
//
// The replica table holds the merged state of the whole cluster, this node's own flows
// included, so every node's table converges to the same content and digests compare like for
// like. One instance per thread; nothing here blocks.
#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "replication/auth.hpp"
#include "replication/codec.hpp"
#include "replication/flat_map.hpp"
#include "replication/hlc.hpp"
#include "replication/records.hpp"
#include "replication/replica_table.hpp"
#include "replication/sequence.hpp"

namespace ctsync::replication {

struct EngineSettings {
  uint32_t clusterId = 0;
  uint16_t node = 0;
  uint64_t bootEpoch = 0;  // nonzero and larger on every start (e.g. wall-clock ns at start)
  AuthMode authMode = AuthMode::kMac;
  // Largest UDP payload to send: path MTU minus IP and UDP headers (1500 - 20 - 8 for IPv4).
  size_t maxDatagramBytes = 1472;
  // Wall clock = monotonic `now` + this, for the hybrid logical clock (versions).
  Nanos wallClockOffset = 0;
  // A peer's version more than this far ahead of our wall clock is not adopted by our clock.
  uint64_t hlcMaxForwardMs = 60'000;

  Nanos flushDelay = table::kMillisecond;     // a partly filled datagram waits at most this long
  Nanos ackDelay = 2 * table::kMillisecond;   // new data is acknowledged at most this late
  Nanos nackDelay = 2 * table::kMillisecond;  // reordering grace before a gap is nacked
  // A gap still open is nacked again after this, doubling to 4 times this; while the sender's
  // datagrams keep arriving (its answer may be on the way) the retry waits, up to 4 times this.
  Nanos nackRetry = 5 * table::kMillisecond;
  size_t maxNackRanges = 64;  // per Nack record
  // First Alive after the last datagram; the next ones double up to aliveInterval.
  Nanos tailProbeDelay = 2 * table::kMillisecond;
  Nanos aliveInterval = 200 * table::kMillisecond;  // Alive when nothing else was sent
  Nanos peerTimeout = 2 * table::kSecond;  // silent this long: the peer no longer holds the log
  Nanos resyncRetry = 500 * table::kMillisecond;  // ResyncRequest again if no bulk began
  Nanos digestInterval = 10 * table::kSecond;     // 0: no anti-entropy
  size_t maxRepairRanges = 32;                    // ranges resent per digest round and peer
  size_t resendLogFlows = 1 << 18;  // flow keys remembered for resends (about 60 B each)
  size_t expectedFlows = 0;  // sizes the tables up front (the cluster's table limit); optional
  uint64_t paceBytesPerSecond = 64ull << 20;  // 0: unpaced
  uint64_t paceBurstBytes = 256 << 10;
  ReplicaSettings replica;
};

// Everything an operator asks about. Plain counters, monotonic unless noted.
struct EngineCounters {
  // Out.
  uint64_t datagramsSent = 0;
  uint64_t bytesSent = 0;
  uint64_t reliableDatagramsSent = 0;
  uint64_t reliableBytesSent = 0;  // UDP payload bytes of reliable datagrams
  uint64_t upsertsSent = 0;        // flow records, including resends and bulks
  uint64_t deletesSent = 0;
  uint64_t resentRecords = 0;  // records queued again to answer a Nack or a digest
  uint64_t acksSent = 0;
  uint64_t nacksSent = 0;
  uint64_t alivesSent = 0;
  uint64_t resyncRequestsSent = 0;
  uint64_t coveredSent = 0;
  uint64_t bulksSent = 0;  // bulks completed (BulkEnd sent)
  uint64_t bulkRecordsSent = 0;
  uint64_t digestsSent = 0;  // Digest records
  uint64_t expectUpsertsSent = 0;  // expectation records, including resends and bulks
  uint64_t expectDeletesSent = 0;
  uint64_t pacingWaits = 0;  // times a datagram waited for the pacer
  // In.
  uint64_t datagramsReceived = 0;  // accepted (authentic, well-formed)
  uint64_t bytesReceived = 0;
  uint64_t upsertsReceived = 0;
  uint64_t deletesReceived = 0;
  uint64_t expectUpsertsReceived = 0;
  uint64_t expectDeletesReceived = 0;
  // Relayed copies of expectations forgotten here (expired, swept, died with their master)
  // not let back in.
  uint64_t expectRelaysBlocked = 0;
  uint64_t duplicateDatagrams = 0;
  uint64_t staleDatagrams = 0;  // from an older epoch of the sender
  uint64_t acksReceived = 0;
  uint64_t nacksReceived = 0;
  uint64_t nackedDatagrams = 0;  // sequence numbers peers asked for
  uint64_t gaps = 0;             // times a peer's stream was found to have a gap
  uint64_t resyncRequestsReceived = 0;
  uint64_t bulksReceived = 0;  // BulkEnd received for an open bulk
  uint64_t sweeps = 0;
  uint64_t sweptFlows = 0;
  uint64_t sweptRelaysBlocked = 0;  // relayed copies of swept or expired flows not let back in
  uint64_t bulkEndsResent = 0;      // a lost BulkEnd sent again
  uint64_t bulksStuck = 0;          // a peer's bulk that never ended: asked for another
  uint64_t peerRestarts = 0;        // a known peer came back with a new epoch
  uint64_t digestsReceived = 0;
  uint64_t digestMismatches = 0;  // ranges found different while in sync
  uint64_t digestsSkipped = 0;    // digests not compared: traffic in flight with that peer
  uint64_t rangesRepaired = 0;    // ranges whose contents we resent
  uint64_t digestBulks = 0;       // too many ranges differed: bulks exchanged instead
  uint64_t ownerReasserts = 0;    // records claiming to be ours that we corrected
  uint64_t hlcRejected = 0;       // versions too far in the future (broken clock on a peer)
  // Drops.
  std::array<uint64_t, static_cast<size_t>(DropReason::kCount)> authDrops{};
  std::array<uint64_t, 5> decodeDrops{};  // by DecodeError
  uint64_t ownDatagrams = 0;              // our own datagrams looped back
  uint64_t headerMismatch = 0;            // envelope and message disagree on node, cluster or epoch
  uint64_t oversizedRecords = 0;          // a control record that fits in no datagram (dropped)
  std::array<uint64_t, static_cast<size_t>(ApplyOutcome::kCount)> applied{};
  std::array<uint64_t, static_cast<size_t>(ApplyOutcome::kCount)> expectApplied{};
  // Expired, swept and died-with-master expectations: replica().stats().
};

// One peer as this node sees it.
struct PeerStatus {
  uint16_t node = 0;
  uint64_t epoch = 0;
  bool up = false;            // heard from within peerTimeout
  Nanos lastHeard = 0;        // local time
  uint64_t received = 0;      // its sequence: contiguous prefix received
  uint64_t highest = 0;       // its sequence: highest known to exist
  uint64_t missing = 0;       // its datagrams we are waiting for
  uint64_t acked = 0;         // our sequence: what it acknowledged
  uint64_t lag = 0;           // our sequence: sent but not acknowledged by it
  bool bulkOpen = false;      // a bulk from it is being received
  bool resyncWanted = false;  // we asked it for a bulk that has not begun
};

class Engine {
 public:
  using SendFn = std::function<void(std::span<const uint8_t>)>;
  // Called when a flow loses a NAT conflict (the caller logs it).
  using NatConflictFn = std::function<void(const FlowKey& loser)>;

  // `now`: the caller's monotonic clock. Every datagram goes out through `send`, from inside
  // poll() only.
  Engine(const EngineSettings& settings, const Key& key, SendFn send, Nanos now);

  void onNatConflict(NatConflictFn fn) { onNatConflict_ = std::move(fn); }
  // Called after the replica's live state of `key` changed (inserted, updated, merged, deleted,
  // expired, swept, or shadowed by a NAT conflict), whoever wrote it; replica().get(key) tells
  // the new state. For a kernel kept in step with the replica (continuous commit).
  using ReplicaChangeFn = std::function<void(const FlowKey& key)>;
  void onReplicaChange(ReplicaChangeFn fn) { onReplicaChange_ = std::move(fn); }

  // Called after the replica's state of expectation `key` changed: inserted, updated, deleted,
  // expired, swept, died with its master, or its master came (masterLive); replica().
  // getExpect(key) tells the new state. Fired at the end of the call that made the change.
  using ExpectChangeFn = std::function<void(const ExpectKey& key)>;
  void onExpectChange(ExpectChangeFn fn) { onExpectChange_ = std::move(fn); }

  // Local state, written by this node (its tracker or kernel). The engine stamps the version
  // (generation, hybrid logical clock, node); `flow.version` is ignored except that a higher
  // generation from the source (a reopened connection) is taken over.
  void upsert(const FlowRecord& flow, Nanos now);
  // The flow ended (closed, expired, flushed). No-op for a flow not live here. This node's
  // expectations of that master end with it (removeExpect).
  void remove(const FlowKey& key, Nanos now);
  // Takes ownership of every live flow and expectation in the replica (a backup promoted to
  // active): each is written again as ours, with a newer version.
  void adoptAll(Nanos now);

  // A local expectation, made by this node's helper (kernel or tracker). Stamped and sent as
  // upsert() does with flows; `e.version` is ignored but for a higher generation.
  void upsertExpect(const ExpectRecord& e, Nanos now);
  // The expectation ended (matched, timed out, removed). No-op for one not live here.
  void removeExpect(const ExpectKey& key, Nanos now);
  std::optional<ExpectRecord> localExpect(const ExpectKey& key) const;
  size_t localExpects() const { return localExpectLive_; }

  // One datagram from the sync link.
  void receive(std::span<const uint8_t> datagram, Nanos now);

  // Runs timers and sends what is due. Call after upsert/remove/receive and whenever
  // nextWakeup() is reached.
  void poll(Nanos now);
  // When poll() has something to do next (acks, flush, alive, pacing, ...).
  Nanos nextWakeup() const;

  // Asks every known peer for a bulk of its flows (and starts one of ours).
  void requestResync(Nanos now);
  // Sends a bulk of our flows to everyone.
  void startBulk(Nanos now);

  const ReplicaTable& replica() const { return replica_; }
  ReplicaTable& replicaForTesting() { return replica_; }
  // This node's own flows (the source's view): live records and recent deletes.
  size_t localFlows() const { return localLive_; }
  template <typename F>
  void forEachLocal(F&& f) const {
    local_.forEach([&](const Local& l) {
      if (l.live) f(l.record);
    });
  }
  std::optional<FlowRecord> local(const FlowKey& key) const;

  const EngineCounters& counters() const { return counters_; }
  std::vector<PeerStatus> peers(Nanos now) const;
  uint64_t lastSeq() const { return log_.lastSeq(); }
  bool bulkRunning() const { return bulk_ != nullptr; }
  // Nothing queued, nothing unacknowledged by any live peer, no gap from any live peer.
  bool idle(Nanos now) const;
  const EngineSettings& settings() const { return settings_; }

 private:
  struct Local {
    FlowRecord record;  // live: the state; not live: key and the delete's version
    bool live = false;
    bool queued = false;  // an Item for it is in queue_
    bool inUse = false;   // a slot of LocalStore holding a key
    Nanos tombstoneUntil = 0;
  };
  // Our own flows by key: a flat index over a slab (no allocation per flow, one or two cache
  // lines a lookup). Entries never move, so a pointer stays valid until the key is erased.
  class LocalStore {
   public:
    void reserve(size_t n) {
      index_.reserve(n);
      slab_.reserve(n);
    }
    Local* find(const FlowKey& key) {
      const uint32_t id = findId(key, hashOf(key));
      return id == flat::FlatIndex::kNone ? nullptr : &slab_[id];
    }
    const Local* find(const FlowKey& key) const {
      const uint32_t id = findId(key, hashOf(key));
      return id == flat::FlatIndex::kNone ? nullptr : &slab_[id];
    }
    // The entry for `key`, created (not live) when missing; second: whether it was created.
    std::pair<Local*, bool> tryEmplace(const FlowKey& key) {
      const uint32_t h = hashOf(key);
      uint32_t id = findId(key, h);
      if (id != flat::FlatIndex::kNone) return {&slab_[id], false};
      id = slab_.allocate();
      Local& l = slab_[id];
      l.record.key = key;
      l.inUse = true;
      index_.insert(h, id);
      return {&l, true};
    }
    void erase(const FlowKey& key) {
      const uint32_t h = hashOf(key);
      const uint32_t id = findId(key, h);
      if (id == flat::FlatIndex::kNone) return;
      index_.erase(h, id);
      slab_[id].inUse = false;
      slab_.free(id);
    }
    template <typename F>
    void forEach(F&& f) const {
      slab_.forEach([&](uint32_t, const Local& l) {
        if (l.inUse) f(l);
      });
    }

   private:
    static uint32_t hashOf(const FlowKey& key) { return static_cast<uint32_t>(flowKeyHash(key)); }
    uint32_t findId(const FlowKey& key, uint32_t h) const {
      return index_.find(h, [&](uint32_t id) { return slab_[id].record.key == key; });
    }
    flat::FlatIndex index_;
    flat::Slab<Local> slab_;
  };
  struct Peer {
    uint16_t node = 0;
    InboundSequence in;
    Nanos lastHeard = 0;
    bool up = false;
    uint64_t acked = 0;  // our sequence it acknowledged
    Nanos ackAt = 0;     // 0: no ack due
    Nanos nackAt = 0;    // 0: no gap
    Nanos nackBackoff = 0;
    Nanos lastNackAt = 0;
    uint64_t nackedUpTo = 0;  // highest sequence the last Nack asked for
    // Our answers to its nacks: the highest sequence answered, and the sequence of the datagram
    // that carried the Covered record of the last answer (0 while it is still queued).
    uint64_t answeredUpTo = 0;
    uint64_t coverSeq = 0;
    Nanos answeredAt = 0;  // when the last answer was queued, or its Covered sent
    bool resyncWanted = false;
    Nanos resyncAt = 0;
    std::optional<uint32_t> bulkOpen;
    Nanos bulkOpenedAt = 0;
    std::optional<uint32_t> lastBulkId;  // newest bulk seen in its current epoch
    std::optional<uint32_t> sweepPending;
    std::map<uint32_t, Nanos> repairedAt;  // range -> last time we resent it for this peer
  };
  // One item of the reliable stream: the current state of a flow, or a record as is.
  struct Item {
    FlowKey key;                     // without `record`: send this flow's current state
    Local* local = nullptr;          // our entry for `key`, when it is ours (stays put)
    std::unique_ptr<Record> record;  // a record to send as it is
    uint16_t coverFor = 0;           // a Covered answering this peer's Nack
    std::optional<ExpectKey> expect;  // instead of a flow: this expectation's current state
  };
  struct LocalExpect {
    ExpectRecord record;  // live: the state; not live: key and the delete's version
    bool live = false;
    Nanos tombstoneUntil = 0;
  };
  struct Bulk {
    uint32_t id = 0;
    uint64_t startHlc = 0;
    uint64_t startSeq = 0;  // our last sequence when the snapshot was taken
    std::shared_ptr<std::vector<FlowKey>> keys;
    size_t cursor = 0;
    std::vector<ExpectKey> expects;  // sent after the flows, so masters arrive first
    size_t expectCursor = 0;
    uint64_t records = 0;
  };

  uint64_t wallMs(Nanos now) const;
  Version stamp(uint32_t generation, Nanos now);
  void writeLocal(FlowRecord record, Nanos now);
  void setLocal(Local& l, const FlowRecord& record, Version version, Nanos now);
  void enqueueLocal(Local& l, Nanos now);
  void writeLocalDelete(const FlowKey& key, Version version, Nanos now);
  void enqueueKey(const FlowKey& key, Nanos now);
  void enqueueRecord(Record record, Nanos now, uint16_t coverFor = 0);
  void enqueueControl(Record record);
  std::optional<Record> currentState(const FlowKey& key) const;
  static Record stateOf(const Local& l);
  Header header(uint64_t seq) const;
  void countSent(const Record& r);
  void observe(const Version& v, Nanos now);
  void reassert(FlowRecord state, uint32_t generation, Nanos now);
  void expireLocal(Nanos now);

  Peer& peer(uint16_t node, Nanos now);
  void handleRecord(Peer& p, const Record& r, Nanos now, std::vector<Digest>& digests);
  void handleUpsert(const FlowRecord& r, uint16_t from, Nanos now);
  void handleDelete(const FlowDelete& d, Nanos now);
  void handleNack(Peer& p, const Nack& n, Nanos now);
  void handleDigests(Peer& p, const std::vector<Digest>& digests, Nanos now);
  void countApply(const FlowKey& key, const ApplyResult& r);

  // Expectations (engine_expect.cpp).
  void setLocalExpect(LocalExpect& l, const ExpectRecord& e, Version version, Nanos now);
  void writeLocalExpectDelete(const ExpectKey& key, Version version, Nanos now);
  void removeLocalExpectsOf(const FlowKey& master, Nanos now);
  void enqueueExpect(const ExpectKey& key, Nanos now);
  std::optional<Record> currentExpectState(const ExpectKey& key) const;
  void handleExpect(const ExpectRecord& r, uint16_t from, Nanos now);
  void handleExpectDelete(const ExpectDelete& d, Nanos now);
  void resendExpects(const std::vector<SeqRange>& ranges, Nanos now);
  void pruneExpectLog();
  void expireLocalExpects(Nanos now);
  // Takes the replica's expectation changes: remembers the forgotten ones, fires the callback.
  void reportExpects(Nanos now);

  void runPeerTimers(Nanos now);
  void runDigests(Nanos now);
  void refillTokens(Nanos now);
  bool flushDue(Nanos now) const;
  void sendReliable(Nanos now);
  void sendBulkDatagram(Nanos now);
  void sendControl(Nanos now);
  void emit(std::vector<uint8_t>& payload, bool reliable, Nanos now);
  // Adds control records to the builder while they fit.
  void addControl();

  EngineSettings settings_;
  SendFn send_;
  NatConflictFn onNatConflict_;
  ReplicaChangeFn onReplicaChange_;
  ExpectChangeFn onExpectChange_;
  Sealer sealer_;
  Opener opener_;
  HybridClock hlc_;
  ReplicaTable replica_;
  OutboundLog log_;
  DatagramBuilder builder_;
  EngineCounters counters_;

  LocalStore local_;
  size_t localLive_ = 0;
  std::deque<std::pair<Nanos, FlowKey>> localTombstones_;  // expiry order

  std::deque<Item> queue_;                             // reliable stream, FIFO
  std::unordered_set<FlowKey, FlowKeyHasher> queued_;  // queued keys that are not ours
  Nanos queuedSince_ = 0;                              // when the oldest queued item arrived
  std::vector<Record> control_;                        // unreliable, sent with the next datagram
  std::unique_ptr<Bulk> bulk_;
  // The last bulk's BulkBegin leads every reliable datagram until every peer acknowledged the
  // bulk's last datagram: content of a lost bulk datagram is resent in ordinary datagrams, and
  // must still count for the bulk at a receiver whose copy of the bulk's start was lost too.
  std::optional<BulkBegin> bulkMarker_;
  uint64_t bulkLastSeq_ = 0;
  std::optional<BulkEnd> bulkEnd_;  // the last bulk's end, sent again if its datagram is lost
  bool bulkAgain_ = false;
  uint32_t nextBulkId_ = 1;

  // Flows removed without a tombstone — swept, or expired here — for tombstoneTtl: copies
  // relayed by other nodes (bulks, digest repairs) of the same or an older version must not
  // bring them back (nor renew an expired flow's timeout); only their writer can.
  std::unordered_map<FlowKey, Version, FlowKeyHasher> swept_;
  std::deque<std::pair<Nanos, FlowKey>> sweptExpiry_;
  void forget(const std::vector<FlowDelete>& removed, Nanos now);

  // Our own expectations, those live indexed by master (few: a map does).
  std::unordered_map<ExpectKey, LocalExpect, ExpectKeyHasher> localExpects_;
  std::unordered_multimap<FlowKey, ExpectKey, FlowKeyHasher> localExpectsByMaster_;
  size_t localExpectLive_ = 0;
  std::deque<std::pair<Nanos, ExpectKey>> localExpectTombstones_;  // expiry order
  std::unordered_set<ExpectKey, ExpectKeyHasher> queuedExpects_;    // an Item for it is queued
  // The expectations each reliable datagram carried (the OutboundLog holds flow keys only), kept
  // until every live peer acknowledged it; a nack of a datagram at or below expectForgotten_
  // needs a bulk, as one the OutboundLog forgot.
  std::map<uint64_t, std::vector<ExpectKey>> expectLog_;
  uint64_t expectForgotten_ = 0;
  // Expectations removed without a tombstone, for tombstoneTtl: as swept_ for flows.
  std::unordered_map<ExpectKey, Version, ExpectKeyHasher> forgottenExpects_;
  std::deque<std::pair<Nanos, ExpectKey>> forgottenExpectsExpiry_;

  std::map<uint16_t, Peer> peers_;
  uint64_t authSeq_ = 0;  // envelope sequence: every datagram
  Nanos aliveAt_ = 0;     // next Alive (tail probes, then every aliveInterval)
  Nanos probeDelay_ = 0;  // tail probe backoff: tailProbeDelay, doubling to aliveInterval
  Nanos nextDigest_ = 0;
  double tokens_ = 0;
  Nanos tokensAt_ = 0;
};

}  // namespace ctsync::replication
