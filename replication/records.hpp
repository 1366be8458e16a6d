#pragma once
// What nodes tell each other, as plain data: the records of the sync protocol. The wire form
// (Cap'n Proto, replication/wire.capnp) and the codec live beside this; merge, reliability and
// the tests use these structs only.
#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <variant>
#include <vector>

#include "table/tuple.hpp"

namespace ctsync::replication {

// Who wrote a flow's state, and when. Ordered by generation first (a reopened flow is a new
// life), then by hybrid logical clock, then by node id, so every node picks the same winner.
struct Version {
  uint32_t generation = 0;
  uint64_t hlc = 0;   // hybrid logical clock: (physical ms << 16) | logical counter
  uint16_t node = 0;  // node that wrote this state
  friend auto operator<=>(const Version&, const Version&) = default;
};

// A flow's identity across the cluster: its original tuple in its zone.
struct FlowKey {
  table::Tuple orig;
  uint16_t zone = 0;
  friend bool operator==(const FlowKey&, const FlowKey&) = default;
};

// Wire-stable hash of a flow key: every node must compute the same value (digest ranges).
// Defined in replica_table.cpp.
uint64_t flowKeyHash(const FlowKey& key);
// A total order on keys, for deterministic tie-breaks.
bool flowKeyLess(const FlowKey& a, const FlowKey& b);
struct FlowKeyHasher {
  size_t operator()(const FlowKey& k) const { return static_cast<size_t>(flowKeyHash(k)); }
};

// The NAT sequence adjustment of one direction (the kernel's struct nf_ct_seqadj): a helper
// that changed a payload's length (FTP's PORT rewritten by NAT) shifts every later sequence
// number of that direction by offsetAfter, and those before correctionPos by offsetBefore.
struct SeqAdjust {
  uint32_t correctionPos = 0;
  int32_t offsetBefore = 0;
  int32_t offsetAfter = 0;
  friend bool operator==(const SeqAdjust&, const SeqAdjust&) = default;
};

// The whole state of one flow (an upsert): enough to recreate it in a kernel, NAT included.
struct FlowRecord {
  FlowKey key;
  table::Tuple reply;            // differs from invert(orig) under NAT
  uint32_t status = 0;           // table::status bits
  uint8_t tcpState = 0;          // table::TcpState, 0 for other protocols
  uint8_t tcpFlags[2] = {0, 0};  // per direction, table::tcpflag bits
  uint8_t tcpScale[2] = {0, 0};  // per direction window scale
  uint32_t timeoutSec = 0;       // remaining lifetime when the record was written
  uint32_t mark = 0;
  std::array<uint8_t, 16> labels{};
  uint8_t helper = 0;                  // table::helperCode(): 0 none, 1 ftp, 2 tftp, ...
  std::optional<table::Tuple> master;  // original tuple of the master of a RELATED flow
  SeqAdjust seqAdj[2];                 // per direction; zero unless status has kSeqAdjust
  // SCTP (l4 132): the kernel's state (enum sctp_conntrack) and verification tags.
  uint8_t sctpState = 0;
  uint32_t sctpVtag[2] = {0, 0};
  // DCCP (l4 33): the kernel's state (enum ct_dccp_states), role of the original direction's
  // sender (CT_DCCP_ROLE_CLIENT 0 / SERVER 1) and the handshake sequence number.
  uint8_t dccpState = 0;
  uint8_t dccpRole = 0;
  uint64_t dccpHandshakeSeq = 0;
  Version version;
  friend bool operator==(const FlowRecord&, const FlowRecord&) = default;
};

// An expectation's identity in the cluster: its expected tuple (with the wildcard fields of
// its mask zero) in its zone, as ctnetlink finds one (nf_ct_expect_find_get).
struct ExpectKey {
  table::Tuple expected;
  uint16_t zone = 0;
  friend bool operator==(const ExpectKey&, const ExpectKey&) = default;
};
uint64_t expectKeyHash(const ExpectKey& key);  // wire-stable, like flowKeyHash
struct ExpectKeyHasher {
  size_t operator()(const ExpectKey& k) const { return static_cast<size_t>(expectKeyHash(k)); }
};

// Expectation flags (NF_CT_EXPECT_*).
namespace expectflag {
inline constexpr uint32_t kPermanent = 1;
inline constexpr uint32_t kInactive = 2;
inline constexpr uint32_t kUserspace = 4;
}  // namespace expectflag

// A helper's expectation (the kernel's struct nf_conntrack_expect): a connection it announced,
// which becomes RELATED to `master` when it opens. It lives no longer than its master.
struct ExpectRecord {
  ExpectKey key;
  table::Tuple mask;    // which fields of key.expected must match: all-ones or zero
  table::Tuple master;  // original tuple of the master flow (in key.zone)
  uint32_t timeoutSec = 0;  // remaining lifetime when the record was written
  uint32_t flags = 0;       // expectflag bits
  uint32_t cls = 0;         // expectation class of the helper (FTP: 0)
  uint8_t helper = 0;       // table::helperCode() of the helper that made it
  uint8_t fn = 0;           // table::expectFnCode(): what the RELATED flow is set up with
  // NAT: the address and port the helper saved (CTA_EXPECT_NAT_TUPLE) and their direction.
  std::optional<table::Tuple> natTuple;
  uint8_t natDir = 0;
  Version version;
  friend bool operator==(const ExpectRecord&, const ExpectRecord&) = default;
};

// The expectation is gone (used, timed out, removed with its master) as of `version`.
struct ExpectDelete {
  ExpectKey key;
  Version version;
  friend bool operator==(const ExpectDelete&, const ExpectDelete&) = default;
};

// The flow is gone (closed, expired, flushed) as of `version`.
struct FlowDelete {
  FlowKey key;
  Version version;
  friend bool operator==(const FlowDelete&, const FlowDelete&) = default;
};

// Receiver -> sender: every datagram of `sender`'s epoch up to `cumulative` has arrived.
struct Ack {
  uint16_t sender = 0;
  uint64_t epoch = 0;
  uint64_t cumulative = 0;
  friend bool operator==(const Ack&, const Ack&) = default;
};

// Receiver -> sender: these sequence ranges [first, last] are missing.
struct SeqRange {
  uint64_t first = 0;
  uint64_t last = 0;
  friend bool operator==(const SeqRange&, const SeqRange&) = default;
};
struct Nack {
  uint16_t sender = 0;
  uint64_t epoch = 0;
  std::vector<SeqRange> missing;
  friend bool operator==(const Nack&, const Nack&) = default;
};

// Sender -> all, when idle: the last sequence number sent, so tail loss is noticed.
struct Alive {
  uint64_t lastSeq = 0;
  friend bool operator==(const Alive&, const Alive&) = default;
};

// Receiver -> sender: send me everything (gap left the resend queue, or I restarted).
struct ResyncRequest {
  uint16_t sender = 0;
  friend bool operator==(const ResyncRequest&, const ResyncRequest&) = default;
};

// A bulk transfer of the sender's whole table, ended by a sweep: what the receiver holds from
// this sender and was not in the bulk is removed.
struct BulkBegin {
  uint32_t bulkId = 0;
  uint64_t startHlc = 0;  // sender's clock at the snapshot: only older flows can be swept
  friend bool operator==(const BulkBegin&, const BulkBegin&) = default;
};
struct BulkEnd {
  uint32_t bulkId = 0;
  uint64_t flows = 0;  // records the bulk carried
  friend bool operator==(const BulkEnd&, const BulkEnd&) = default;
};

// Anti-entropy: a hash over the flows (key, version) whose key hash falls in [first, last],
// and (from minor 3) the expectations whose expectKeyHash does.
struct Digest {
  uint32_t rangeFirst = 0;
  uint32_t rangeLast = 0;
  uint64_t hash = 0;
  uint32_t flows = 0;  // live flows and expectations
  friend bool operator==(const Digest&, const Digest&) = default;
};

// Sender -> all: its datagrams in these ranges were answered by resending the current state of
// what they carried (in datagrams sent since), so receivers count them as received.
struct Covered {
  std::vector<SeqRange> ranges;
  friend bool operator==(const Covered&, const Covered&) = default;
};

using Record = std::variant<FlowRecord, FlowDelete, Ack, Nack, Alive, ResyncRequest, BulkBegin,
                            BulkEnd, Digest, Covered, ExpectRecord, ExpectDelete>;

// Carried by every datagram.
struct Header {
  uint16_t protocolVersion = 1;
  uint32_t clusterId = 0;
  uint16_t node = 0;
  uint64_t bootEpoch = 0;  // new on every start of the sender
  // Reliable sequence: per sender and epoch, from 1, one per datagram that carries state
  // (flows, deletes, bulk markers, Covered); 0 for datagrams of control records only (acks,
  // nacks, alives, resync requests, digests), which are never resent.
  uint64_t seq = 0;
  friend bool operator==(const Header&, const Header&) = default;
};

}  // namespace ctsync::replication
