#include "replication/codec.hpp"

#include <capnp/message.h>
#include <capnp/serialize-packed.h>
#include <kj/exception.h>
#include <kj/io.h>

#include <array>
#include <cassert>
#include <cstring>
#include <exception>
#include <type_traits>

#include "table/tcp.hpp"
#include "table/tuple.hpp"
#include "wire.capnp.h"  // generated (capnp_generate_cpp, --src-prefix=replication/)

namespace ctsync::replication {
namespace {

using capnp::word;

constexpr unsigned kMajor = kProtocolVersion >> 8;
constexpr unsigned kMinor = kProtocolVersion & 0xff;

// Reader limits for untrusted input. A legitimate datagram unpacks to a few times its packed
// size (zero runs expand 128-fold at most in theory, about 3-fold in practice); 1 MiB leaves
// room for any honest 64 KiB datagram and bounds what a hostile one costs.
constexpr size_t kMaxUnpackedWords = 128 * 1024;
constexpr uint64_t kTraversalLimitWords = kMaxUnpackedWords;
constexpr int kNestingLimit = 8;  // Datagram > records > Record > Tuple > Addrs6 is 5 deep
constexpr size_t kMaxSegments = 16;
// A full 64 KiB datagram of the smallest records holds ~7 000; anything above is an attack.
constexpr size_t kMaxRecords = 8192;
constexpr size_t kMaxNackRanges = 8192;  // per datagram, Nack and Covered ranges together
constexpr uint8_t kMaxTcpScale = 14;     // RFC 7323; the kernel clamps to it as well
// Largest values of the kernel's enums (include/uapi/linux/netfilter/nf_conntrack_{sctp,
// dccp}.h, Linux 6.x): SCTP_CONNTRACK_MAX - 1 (HEARTBEAT_ACKED, still numbered in older
// kernels), CT_DCCP_INVALID, CT_DCCP_ROLE_SERVER.
constexpr uint8_t kMaxSctpState = 9;
constexpr uint8_t kMaxDccpState = 9;
constexpr uint8_t kMaxDccpRole = 1;

// Layout facts the size accounting below relies on (see DatagramBuilder).
constexpr size_t kDatagramDataWords = wire::Datagram::_capnpPrivate::dataWordSize;
constexpr size_t kDatagramPtrs = wire::Datagram::_capnpPrivate::pointerCount;
constexpr size_t kRecordDataWords = wire::Record::_capnpPrivate::dataWordSize;
constexpr size_t kRecordPtrs = wire::Record::_capnpPrivate::pointerCount;
constexpr size_t kRecordWords = kRecordDataWords + kRecordPtrs;
// Datagram data words 0..2 hold the header fields finish() is given (version, node, cluster,
// epoch, seq); words 3.. hold what the builder knows (hlcBase, nodeBase).
constexpr size_t kHeaderUnknownWords = 3;
static_assert(kDatagramDataWords == 5 && kDatagramPtrs == 1,
              "wire.capnp Datagram layout changed: review DatagramBuilder's size accounting");
// Worst packed cost of one word: tag, 8 bytes, run count.
constexpr size_t kMaxWordCost = 10;

// ---- Packed size -------------------------------------------------------------------------

int nonzeroBytes(const uint8_t* w) {
  int n = 0;
  for (int i = 0; i < 8; ++i) n += w[i] != 0;
  return n;
}

// Exactly what capnp's PackedOutputStream writes for these words (serialize-packed.c++): a tag
// byte per word plus its nonzero bytes; a zero word is followed by a count of up to 255 more
// zero words; a word without zero bytes by a count of up to 255 following words that have at
// most one zero byte, copied raw. The greedy packer is subadditive: packing A and B apart never
// costs less than packing them together, which is what makes per-piece sums upper bounds.
size_t packedSize(const uint8_t* p, size_t n) {
  size_t out = 0;
  size_t i = 0;
  while (i < n) {
    const int nz = nonzeroBytes(p + 8 * i);
    out += 1 + static_cast<size_t>(nz);
    ++i;
    if (nz == 0) {
      size_t run = 0;
      while (i < n && run < 255 && nonzeroBytes(p + 8 * i) == 0) ++i, ++run;
      out += 1;
    } else if (nz == 8) {
      size_t run = 0;
      while (i < n && run < 255 && nonzeroBytes(p + 8 * i) >= 7) ++i, ++run;
      out += 1 + 8 * run;
    }
  }
  return out;
}

size_t packedSize(const word* words, size_t n) {
  return packedSize(reinterpret_cast<const uint8_t*>(words), n);
}

// The packed cost of one word holding `value` (capnp words are little-endian; so is the host).
size_t packedWordCost(uint64_t value) {
  uint8_t bytes[8];
  std::memcpy(bytes, &value, sizeof value);
  return packedSize(bytes, 1);
}

// ---- Field helpers -----------------------------------------------------------------------

uint64_t zigzag(uint64_t delta) {
  const auto d = static_cast<int64_t>(delta);
  return (delta << 1) ^ static_cast<uint64_t>(d >> 63);
}
uint64_t unzigzag(uint64_t z) {
  return (z >> 1) ^ (0 - (z & 1));
}

uint64_t beHalf(const table::Addr& a, int half) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | a.bytes[static_cast<size_t>(half * 8 + i)];
  return v;
}
table::Addr addrFromHalves(uint64_t hi, uint64_t lo) {
  table::Addr a;
  for (int i = 0; i < 8; ++i) {
    a.bytes[static_cast<size_t>(i)] = static_cast<uint8_t>(hi >> (56 - 8 * i));
    a.bytes[static_cast<size_t>(8 + i)] = static_cast<uint8_t>(lo >> (56 - 8 * i));
  }
  return a;
}

uint64_t leHalf(const std::array<uint8_t, 16>& b, int half) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[static_cast<size_t>(half * 8 + i)];
  return v;
}

// What the reply tuple is XORed against: the inverted original, or the plain swap when the
// original has no inverse (ICMP errors). Both ends compute it from the original alone.
table::Tuple replyBase(const table::Tuple& orig) {
  if (auto inv = table::invertTuple(orig)) return *inv;
  table::Tuple t = orig;
  t.src = orig.dst;
  t.dst = orig.src;
  t.sport = orig.dport;
  t.dport = orig.sport;
  return t;
}

// Per-datagram bases the versions are written against (see wire.capnp).
struct Bases {
  uint64_t hlc = 0;
  uint16_t node = 0;
};

std::optional<Version> versionOf(const Record& r) {
  if (const auto* f = std::get_if<FlowRecord>(&r)) return f->version;
  if (const auto* d = std::get_if<FlowDelete>(&r)) return d->version;
  if (const auto* e = std::get_if<ExpectRecord>(&r)) return e->version;
  if (const auto* d = std::get_if<ExpectDelete>(&r)) return d->version;
  return std::nullopt;
}

// ---- Encoding ----------------------------------------------------------------------------

void encodeAddrs6(wire::Addrs6::Builder b, const table::Addr& src, const table::Addr& dst) {
  b.setSrcHi(beHalf(src, 0));
  b.setSrcLo(beHalf(src, 1));
  b.setDstHi(beHalf(dst, 0));
  b.setDstLo(beHalf(dst, 1));
}

void encodeTuple(wire::Tuple::Builder b, const table::Tuple& t) {
  b.setL4(t.l4);
  b.setSport(t.sport);
  b.setDport(t.dport);
  if (t.l3 == table::L3::kIpv4) {
    b.setSrc4(t.src.v4HostOrder());
    b.setDst4(t.dst.v4HostOrder());
  } else {
    b.setFamily(wire::Family::IPV6);
    encodeAddrs6(b.initV6(), t.src, t.dst);
  }
}

// Whether the flow needs its FlowExtra part: null on the wire when all of it is zero.
bool hasExtra(const FlowRecord& r) {
  constexpr SeqAdjust kNone{};
  return r.seqAdj[0] != kNone || r.seqAdj[1] != kNone || r.sctpState != 0 ||
         r.sctpVtag[0] != 0 || r.sctpVtag[1] != 0 || r.dccpState != 0 || r.dccpRole != 0 ||
         r.dccpHandshakeSeq != 0;
}

void encodeFlow(wire::Record::Flow::Builder f, const FlowRecord& r, const Bases& bases) {
  const table::Tuple& o = r.key.orig;
  // conntrack never changes the family or protocol between directions; anything else is
  // still carried, in full.
  const bool xorReply = r.reply.l3 == o.l3 && r.reply.l4 == o.l4;
  const table::Tuple base = replyBase(o);
  f.setL4(o.l4);
  f.setSport(o.sport);
  f.setDport(o.dport);
  if (o.l3 == table::L3::kIpv4) {
    f.setSrc4(o.src.v4HostOrder());
    f.setDst4(o.dst.v4HostOrder());
    if (xorReply) {
      f.setReplySrcXor4(r.reply.src.v4HostOrder() ^ base.src.v4HostOrder());
      f.setReplyDstXor4(r.reply.dst.v4HostOrder() ^ base.dst.v4HostOrder());
    }
  } else {
    f.setFamily(wire::Family::IPV6);
  }
  if (xorReply) {
    f.setReplySportXor(static_cast<uint16_t>(r.reply.sport ^ base.sport));
    f.setReplyDportXor(static_cast<uint16_t>(r.reply.dport ^ base.dport));
  }
  f.setTimeoutSec(r.timeoutSec);
  f.setHlcDelta(zigzag(r.version.hlc - bases.hlc));
  f.setStatus(r.status);
  f.setTcpState(r.tcpState);
  f.setTcpFlagsOrig(r.tcpFlags[0]);
  f.setTcpFlagsReply(r.tcpFlags[1]);
  f.setTcpScaleOrig(r.tcpScale[0]);
  f.setTcpScaleReply(r.tcpScale[1]);
  f.setVersionNodeXor(static_cast<uint16_t>(r.version.node ^ bases.node));
  f.setZone(r.key.zone);
  f.setHelper(r.helper);
  f.setMark(r.mark);
  f.setGeneration(r.version.generation);
  // Out-of-line parts, in a fixed order (the builder's size accounting encodes each record
  // twice and relies on the same layout both times).
  const uint64_t labelsHi = leHalf(r.labels, 0);
  const uint64_t labelsLo = leHalf(r.labels, 1);
  if ((labelsHi | labelsLo) != 0) {
    auto l = f.initLabels();
    l.setHi(labelsHi);
    l.setLo(labelsLo);
  }
  if (r.master) encodeTuple(f.initMaster(), *r.master);
  if (o.l3 != table::L3::kIpv4) {
    auto v6 = f.initV6();
    encodeAddrs6(v6, o.src, o.dst);
    if (xorReply) {
      v6.setReplySrcXorHi(beHalf(r.reply.src, 0) ^ beHalf(base.src, 0));
      v6.setReplySrcXorLo(beHalf(r.reply.src, 1) ^ beHalf(base.src, 1));
      v6.setReplyDstXorHi(beHalf(r.reply.dst, 0) ^ beHalf(base.dst, 0));
      v6.setReplyDstXorLo(beHalf(r.reply.dst, 1) ^ beHalf(base.dst, 1));
    }
  }
  if (!xorReply) encodeTuple(f.initReplyFull(), r.reply);
  if (hasExtra(r)) {
    auto x = f.initExtra();
    x.setSeqAdjOrigPos(r.seqAdj[0].correctionPos);
    x.setSeqAdjOrigBefore(r.seqAdj[0].offsetBefore);
    x.setSeqAdjOrigAfter(r.seqAdj[0].offsetAfter);
    x.setSeqAdjReplyPos(r.seqAdj[1].correctionPos);
    x.setSeqAdjReplyBefore(r.seqAdj[1].offsetBefore);
    x.setSeqAdjReplyAfter(r.seqAdj[1].offsetAfter);
    x.setSctpState(r.sctpState);
    x.setSctpVtagOrig(r.sctpVtag[0]);
    x.setSctpVtagReply(r.sctpVtag[1]);
    x.setDccpState(r.dccpState);
    x.setDccpRole(r.dccpRole);
    x.setDccpHandshakeSeq(r.dccpHandshakeSeq);
  }
}

void encodeDelete(wire::Record::Delete::Builder d, const FlowDelete& r, const Bases& bases) {
  const table::Tuple& o = r.key.orig;
  d.setL4(o.l4);
  d.setSport(o.sport);
  d.setDport(o.dport);
  d.setZone(r.key.zone);
  d.setHlcDelta(zigzag(r.version.hlc - bases.hlc));
  d.setVersionNodeXor(static_cast<uint16_t>(r.version.node ^ bases.node));
  d.setGeneration(r.version.generation);
  if (o.l3 == table::L3::kIpv4) {
    d.setSrc4(o.src.v4HostOrder());
    d.setDst4(o.dst.v4HostOrder());
  } else {
    d.setFamily(wire::Family::IPV6);
    encodeAddrs6(d.initV6(), o.src, o.dst);
  }
}

void encodeExpect(wire::Record::Expect::Builder x, const ExpectRecord& r, const Bases& bases) {
  x.setZone(r.key.zone);
  x.setTimeoutSec(r.timeoutSec);
  x.setFlags(r.flags);
  x.setCls(r.cls);
  x.setHelper(r.helper);
  x.setFn(r.fn);
  x.setNatDir(r.natDir);
  x.setHlcDelta(zigzag(r.version.hlc - bases.hlc));
  x.setVersionNodeXor(static_cast<uint16_t>(r.version.node ^ bases.node));
  x.setGeneration(r.version.generation);
  encodeTuple(x.initExpected(), r.key.expected);
  encodeTuple(x.initMask(), r.mask);
  encodeTuple(x.initMaster(), r.master);
  if (r.natTuple) encodeTuple(x.initNatTuple(), *r.natTuple);
}

void encodeExpectDelete(wire::Record::ExpectDelete::Builder x, const ExpectDelete& r,
                        const Bases& bases) {
  x.setZone(r.key.zone);
  x.setHlcDelta(zigzag(r.version.hlc - bases.hlc));
  x.setVersionNodeXor(static_cast<uint16_t>(r.version.node ^ bases.node));
  x.setGeneration(r.version.generation);
  encodeTuple(x.initExpected(), r.key.expected);
}

void encodeRanges(capnp::List<wire::SeqRange>::Builder out, const std::vector<SeqRange>& ranges) {
  for (unsigned i = 0; i < ranges.size(); ++i) {
    out[i].setFirst(ranges[i].first);
    out[i].setLast(ranges[i].last);
  }
}

void encodeRecord(wire::Record::Builder b, const Record& record, const Bases& bases) {
  std::visit(
      [&](const auto& r) {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, FlowRecord>) {
          encodeFlow(b.initFlow(), r, bases);
        } else if constexpr (std::is_same_v<T, FlowDelete>) {
          encodeDelete(b.initDelete(), r, bases);
        } else if constexpr (std::is_same_v<T, Ack>) {
          auto a = b.initAck();
          a.setSender(r.sender);
          a.setEpoch(r.epoch);
          a.setCumulative(r.cumulative);
        } else if constexpr (std::is_same_v<T, Nack>) {
          auto n = b.initNack();
          n.setSender(r.sender);
          n.setEpoch(r.epoch);
          encodeRanges(n.initMissing(static_cast<unsigned>(r.missing.size())), r.missing);
        } else if constexpr (std::is_same_v<T, Alive>) {
          b.initAlive().setLastSeq(r.lastSeq);
        } else if constexpr (std::is_same_v<T, ResyncRequest>) {
          b.initResyncRequest().setSender(r.sender);
        } else if constexpr (std::is_same_v<T, BulkBegin>) {
          auto g = b.initBulkBegin();
          g.setBulkId(r.bulkId);
          g.setStartHlc(r.startHlc);
        } else if constexpr (std::is_same_v<T, BulkEnd>) {
          auto e = b.initBulkEnd();
          e.setBulkId(r.bulkId);
          e.setFlows(r.flows);
        } else if constexpr (std::is_same_v<T, Digest>) {
          auto g = b.initDigest();
          g.setRangeFirst(r.rangeFirst);
          g.setRangeLast(r.rangeLast);
          g.setHash(r.hash);
          g.setFlows(r.flows);
        } else if constexpr (std::is_same_v<T, ExpectRecord>) {
          encodeExpect(b.initExpect(), r, bases);
        } else if constexpr (std::is_same_v<T, ExpectDelete>) {
          encodeExpectDelete(b.initExpectDelete(), r, bases);
        } else {
          static_assert(std::is_same_v<T, Covered>);
          encodeRanges(b.initCovered().initRanges(static_cast<unsigned>(r.ranges.size())),
                       r.ranges);
        }
      },
      record);
}

void encodeDatagram(capnp::MessageBuilder& msg, const Header& h, const Bases& bases,
                    const std::vector<Record>& records) {
  auto dg = msg.initRoot<wire::Datagram>();
  dg.setProtocolVersion(h.protocolVersion);
  dg.setNode(h.node);
  dg.setClusterId(h.clusterId);
  dg.setBootEpoch(h.bootEpoch);
  dg.setSeq(h.seq);
  dg.setHlcBase(bases.hlc);
  dg.setNodeBase(bases.node);
  auto list = dg.initRecords(static_cast<unsigned>(records.size()));
  for (unsigned i = 0; i < records.size(); ++i) encodeRecord(list[i], records[i], bases);
}

// Words of the scratch arena a record needs (root pointer, element, out-of-line parts).
size_t scratchWordsFor(const Record& r) {
  size_t n = 128;  // a flow with every out-of-line part in IPv6 takes about 50
  if (const auto* nack = std::get_if<Nack>(&r)) n += 2 * nack->missing.size();
  if (const auto* covered = std::get_if<Covered>(&r)) n += 2 * covered->ranges.size();
  return n;
}

// Upper bound of a record's packed cost inside any datagram, and its unpacked size. The element
// words are what they will be in the datagram except the pointers to out-of-line parts, whose
// offsets differ: those count as worst-case words.
struct RecordCost {
  size_t packedBound = 0;
  size_t words = 0;
  bool flat = false;  // no out-of-line parts: `element` is exactly what goes into the datagram
  std::array<uint64_t, kRecordWords> element{};
};

RecordCost measureRecord(const Record& r, const Bases& bases, std::vector<uint64_t>& scratch) {
  if (scratch.size() < scratchWordsFor(r)) scratch.assign(scratchWordsFor(r), 0);
  // The arena is zero; MallocMessageBuilder zeroes what it used when it goes away.
  capnp::MallocMessageBuilder msg(
      kj::arrayPtr(reinterpret_cast<word*>(scratch.data()), scratch.size()),
      capnp::AllocationStrategy::FIXED_SIZE);
  encodeRecord(msg.initRoot<wire::Record>(), r, bases);
  const auto segments = msg.getSegmentsForOutput();
  assert(segments.size() == 1);
  const kj::ArrayPtr<const word> seg = segments[0];
  const word* element = seg.begin() + 1;  // after the root pointer
  const word* ptrs = element + kRecordDataWords;
  const word* outline = element + kRecordWords;
  const size_t outlineWords = seg.size() - 1 - kRecordWords;
  RecordCost cost;
  cost.words = kRecordWords + outlineWords;
  cost.flat = outlineWords == 0;
  std::memcpy(cost.element.data(), element, sizeof cost.element);
  cost.packedBound = packedSize(outline, outlineWords);
  // Cut the element before and after each non-null pointer; the pieces between are exact.
  // A non-null pointer's upper half (sizes) is final, its lower half (offset) is not: at most
  // four nonzero bytes.
  const word* piece = element;
  for (size_t i = 0; i < kRecordPtrs; ++i) {
    uint64_t v;
    std::memcpy(&v, ptrs + i, sizeof v);
    if (v == 0) continue;
    cost.packedBound += packedSize(piece, static_cast<size_t>(ptrs + i - piece));
    const size_t upperNonzero = packedWordCost(v >> 32 << 32) - 1;
    cost.packedBound += upperNonzero < 4 ? 1 + 4 + upperNonzero : kMaxWordCost;
    piece = ptrs + i + 1;
  }
  cost.packedBound += packedSize(piece, static_cast<size_t>(element + kRecordWords - piece));
  return cost;
}

// ---- Decoding ----------------------------------------------------------------------------

enum class Check : uint8_t { kUnknown, kBad };  // kUnknown: a kind from a newer minor version

std::variant<std::vector<uint64_t>, DecodeError> unpack(std::span<const uint8_t> in) {
  std::vector<uint64_t> out;
  out.reserve(in.size());  // a packed word is at least one byte; grows past this only for runs
  size_t i = 0;
  auto need = [&](size_t n) { return in.size() - i >= n; };
  while (i < in.size()) {
    if (out.size() >= kMaxUnpackedWords) return DecodeError::kTooLarge;
    const uint8_t tag = in[i++];
    uint8_t bytes[8] = {};
    for (int b = 0; b < 8; ++b) {
      if ((tag >> b) & 1) {
        if (!need(1)) return DecodeError::kTruncated;
        bytes[b] = in[i++];
      }
    }
    uint64_t w;
    std::memcpy(&w, bytes, 8);
    out.push_back(w);
    if (tag == 0 || tag == 0xff) {
      if (!need(1)) return DecodeError::kTruncated;
      const size_t count = in[i++];
      if (out.size() + count > kMaxUnpackedWords) return DecodeError::kTooLarge;
      if (tag == 0) {
        out.resize(out.size() + count, 0);
      } else {
        if (!need(8 * count)) return DecodeError::kTruncated;
        const size_t at = out.size();
        out.resize(at + count);
        std::memcpy(out.data() + at, in.data() + i, 8 * count);
        i += 8 * count;
      }
    }
  }
  return out;
}

uint32_t le32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}

// Checks the segment table against the words we have, so that a short message is reported as
// truncated rather than as whatever Cap'n Proto would throw.
std::optional<DecodeError> checkSegmentTable(const std::vector<uint64_t>& words) {
  const auto* p = reinterpret_cast<const uint8_t*>(words.data());
  const size_t available = words.size();
  if (available == 0) return DecodeError::kTruncated;
  const uint64_t segments = uint64_t{le32(p)} + 1;
  if (segments > kMaxSegments) return DecodeError::kMalformed;
  const size_t tableWords = static_cast<size_t>(segments + 2) / 2;
  if (available < tableWords) return DecodeError::kTruncated;
  uint64_t total = tableWords;
  for (size_t s = 0; s < segments; ++s) total += le32(p + 4 + 4 * s);
  if (total > available) return DecodeError::kTruncated;
  if (total < available) return DecodeError::kMalformed;  // trailing words
  return std::nullopt;
}

table::Addr v4Addr(uint32_t a) {
  return table::Addr::v4(a);
}

std::variant<table::Tuple, Check> decodeTuple(wire::Tuple::Reader t) {
  table::Tuple out;
  out.l4 = t.getL4();
  out.sport = t.getSport();
  out.dport = t.getDport();
  switch (t.getFamily()) {
    case wire::Family::IPV4:
      out.l3 = table::L3::kIpv4;
      out.src = v4Addr(t.getSrc4());
      out.dst = v4Addr(t.getDst4());
      return out;
    case wire::Family::IPV6: {
      if (!t.hasV6()) return Check::kBad;
      const auto v6 = t.getV6();
      out.l3 = table::L3::kIpv6;
      out.src = addrFromHalves(v6.getSrcHi(), v6.getSrcLo());
      out.dst = addrFromHalves(v6.getDstHi(), v6.getDstLo());
      return out;
    }
  }
  return Check::kUnknown;
}

std::variant<Record, Check> decodeFlow(wire::Record::Flow::Reader f, const Bases& bases,
                                       unsigned minor) {
  FlowRecord r;
  table::Tuple& o = r.key.orig;
  o.l4 = f.getL4();
  o.sport = f.getSport();
  o.dport = f.getDport();
  const auto family = f.getFamily();
  if (family == wire::Family::IPV4) {
    o.l3 = table::L3::kIpv4;
    o.src = v4Addr(f.getSrc4());
    o.dst = v4Addr(f.getDst4());
  } else if (family == wire::Family::IPV6) {
    if (!f.hasV6()) return Check::kBad;
    const auto v6 = f.getV6();
    o.l3 = table::L3::kIpv6;
    o.src = addrFromHalves(v6.getSrcHi(), v6.getSrcLo());
    o.dst = addrFromHalves(v6.getDstHi(), v6.getDstLo());
  } else {
    return Check::kUnknown;
  }
  if (f.hasReplyFull()) {
    auto reply = decodeTuple(f.getReplyFull());
    if (const auto* c = std::get_if<Check>(&reply)) return *c;
    r.reply = std::get<table::Tuple>(reply);
  } else {
    const table::Tuple base = replyBase(o);
    r.reply = base;
    r.reply.sport = static_cast<uint16_t>(base.sport ^ f.getReplySportXor());
    r.reply.dport = static_cast<uint16_t>(base.dport ^ f.getReplyDportXor());
    if (o.l3 == table::L3::kIpv4) {
      r.reply.src = v4Addr(base.src.v4HostOrder() ^ f.getReplySrcXor4());
      r.reply.dst = v4Addr(base.dst.v4HostOrder() ^ f.getReplyDstXor4());
    } else {
      const auto v6 = f.getV6();
      r.reply.src = addrFromHalves(beHalf(base.src, 0) ^ v6.getReplySrcXorHi(),
                                   beHalf(base.src, 1) ^ v6.getReplySrcXorLo());
      r.reply.dst = addrFromHalves(beHalf(base.dst, 0) ^ v6.getReplyDstXorHi(),
                                   beHalf(base.dst, 1) ^ v6.getReplyDstXorLo());
    }
  }
  r.status = f.getStatus();
  r.tcpState = f.getTcpState();
  if (r.tcpState >= static_cast<uint8_t>(table::TcpState::kCount)) return Check::kBad;
  r.tcpFlags[0] = f.getTcpFlagsOrig();
  r.tcpFlags[1] = f.getTcpFlagsReply();
  r.tcpScale[0] = f.getTcpScaleOrig();
  r.tcpScale[1] = f.getTcpScaleReply();
  if (r.tcpScale[0] > kMaxTcpScale || r.tcpScale[1] > kMaxTcpScale) return Check::kBad;
  r.timeoutSec = f.getTimeoutSec();
  r.mark = f.getMark();
  r.key.zone = f.getZone();
  r.helper = f.getHelper();
  if (f.hasLabels()) {
    const auto l = f.getLabels();
    const uint64_t halves[2] = {l.getHi(), l.getLo()};
    for (size_t i = 0; i < 16; ++i)
      r.labels[i] = static_cast<uint8_t>(halves[i / 8] >> (8 * (i % 8)));
  }
  if (f.hasMaster()) {
    auto master = decodeTuple(f.getMaster());
    if (const auto* c = std::get_if<Check>(&master)) return *c;
    r.master = std::get<table::Tuple>(master);
  }
  if (f.hasExtra()) {
    if (minor < 3) return Check::kBad;
    const auto x = f.getExtra();
    r.seqAdj[0] = SeqAdjust{x.getSeqAdjOrigPos(), x.getSeqAdjOrigBefore(), x.getSeqAdjOrigAfter()};
    r.seqAdj[1] =
        SeqAdjust{x.getSeqAdjReplyPos(), x.getSeqAdjReplyBefore(), x.getSeqAdjReplyAfter()};
    r.sctpState = x.getSctpState();
    r.sctpVtag[0] = x.getSctpVtagOrig();
    r.sctpVtag[1] = x.getSctpVtagReply();
    r.dccpState = x.getDccpState();
    r.dccpRole = x.getDccpRole();
    r.dccpHandshakeSeq = x.getDccpHandshakeSeq();
    if (r.sctpState > kMaxSctpState || r.dccpState > kMaxDccpState || r.dccpRole > kMaxDccpRole) {
      return Check::kBad;
    }
  }
  r.version.generation = f.getGeneration();
  r.version.hlc = bases.hlc + unzigzag(f.getHlcDelta());
  r.version.node = static_cast<uint16_t>(bases.node ^ f.getVersionNodeXor());
  return Record{std::move(r)};
}

std::variant<Record, Check> decodeDelete(wire::Record::Delete::Reader d, const Bases& bases) {
  FlowDelete r;
  table::Tuple& o = r.key.orig;
  o.l4 = d.getL4();
  o.sport = d.getSport();
  o.dport = d.getDport();
  const auto family = d.getFamily();
  if (family == wire::Family::IPV4) {
    o.l3 = table::L3::kIpv4;
    o.src = v4Addr(d.getSrc4());
    o.dst = v4Addr(d.getDst4());
  } else if (family == wire::Family::IPV6) {
    if (!d.hasV6()) return Check::kBad;
    const auto v6 = d.getV6();
    o.l3 = table::L3::kIpv6;
    o.src = addrFromHalves(v6.getSrcHi(), v6.getSrcLo());
    o.dst = addrFromHalves(v6.getDstHi(), v6.getDstLo());
  } else {
    return Check::kUnknown;
  }
  r.key.zone = d.getZone();
  r.version.generation = d.getGeneration();
  r.version.hlc = bases.hlc + unzigzag(d.getHlcDelta());
  r.version.node = static_cast<uint16_t>(bases.node ^ d.getVersionNodeXor());
  return Record{r};
}

// A tuple every record of its kind has: missing is malformed.
std::variant<table::Tuple, Check> requiredTuple(bool has, wire::Tuple::Reader t) {
  if (!has) return Check::kBad;
  return decodeTuple(t);
}

std::variant<Record, Check> decodeExpect(wire::Record::Expect::Reader x, const Bases& bases,
                                         unsigned minor) {
  if (minor < 3) return Check::kBad;
  ExpectRecord r;
  const std::variant<table::Tuple, Check> parts[] = {
      requiredTuple(x.hasExpected(), x.getExpected()),
      requiredTuple(x.hasMask(), x.getMask()),
      requiredTuple(x.hasMaster(), x.getMaster()),
  };
  for (const auto& p : parts) {
    if (const auto* c = std::get_if<Check>(&p)) return *c;
  }
  r.key.expected = std::get<table::Tuple>(parts[0]);
  r.mask = std::get<table::Tuple>(parts[1]);
  r.master = std::get<table::Tuple>(parts[2]);
  // ctnetlink gives the mask the expected tuple's family and protocol.
  if (r.mask.l3 != r.key.expected.l3 || r.mask.l4 != r.key.expected.l4) return Check::kBad;
  if (x.hasNatTuple()) {
    auto nat = decodeTuple(x.getNatTuple());
    if (const auto* c = std::get_if<Check>(&nat)) return *c;
    r.natTuple = std::get<table::Tuple>(nat);
  }
  r.key.zone = x.getZone();
  r.timeoutSec = x.getTimeoutSec();
  r.flags = x.getFlags();
  r.cls = x.getCls();
  r.helper = x.getHelper();
  r.fn = x.getFn();
  r.natDir = x.getNatDir();
  if (r.natDir > 1) return Check::kBad;  // IP_CT_DIR_ORIGINAL or IP_CT_DIR_REPLY
  r.version.generation = x.getGeneration();
  r.version.hlc = bases.hlc + unzigzag(x.getHlcDelta());
  r.version.node = static_cast<uint16_t>(bases.node ^ x.getVersionNodeXor());
  return Record{std::move(r)};
}

std::variant<Record, Check> decodeExpectDelete(wire::Record::ExpectDelete::Reader x,
                                               const Bases& bases, unsigned minor) {
  if (minor < 3) return Check::kBad;
  auto expected = requiredTuple(x.hasExpected(), x.getExpected());
  if (const auto* c = std::get_if<Check>(&expected)) return *c;
  ExpectDelete r;
  r.key.expected = std::get<table::Tuple>(expected);
  r.key.zone = x.getZone();
  r.version.generation = x.getGeneration();
  r.version.hlc = bases.hlc + unzigzag(x.getHlcDelta());
  r.version.node = static_cast<uint16_t>(bases.node ^ x.getVersionNodeXor());
  return Record{r};
}

// Sequence ranges of a Nack or Covered; `total` bounds the ranges of one datagram.
bool decodeRanges(capnp::List<wire::SeqRange>::Reader in, std::vector<SeqRange>& out,
                  size_t& total) {
  total += in.size();
  if (total > kMaxNackRanges) return false;
  out.reserve(in.size());
  for (const auto m : in) {
    if (m.getFirst() > m.getLast()) return false;
    out.push_back(SeqRange{m.getFirst(), m.getLast()});
  }
  return true;
}

// `minor`: the datagram's minor version (parts of a later minor are errors in it).
std::variant<Record, Check> decodeRecord(wire::Record::Reader rec, const Bases& bases,
                                         unsigned minor, size_t& nackRanges) {
  switch (rec.which()) {
    case wire::Record::FLOW:
      return decodeFlow(rec.getFlow(), bases, minor);
    case wire::Record::DELETE:
      return decodeDelete(rec.getDelete(), bases);
    case wire::Record::ACK: {
      const auto a = rec.getAck();
      return Record{Ack{a.getSender(), a.getEpoch(), a.getCumulative()}};
    }
    case wire::Record::NACK: {
      const auto n = rec.getNack();
      Nack out{n.getSender(), n.getEpoch(), {}};
      if (!decodeRanges(n.getMissing(), out.missing, nackRanges)) return Check::kBad;
      return Record{std::move(out)};
    }
    case wire::Record::COVERED: {
      Covered out;
      if (!decodeRanges(rec.getCovered().getRanges(), out.ranges, nackRanges)) return Check::kBad;
      return Record{std::move(out)};
    }
    case wire::Record::ALIVE:
      return Record{Alive{rec.getAlive().getLastSeq()}};
    case wire::Record::RESYNC_REQUEST:
      return Record{ResyncRequest{rec.getResyncRequest().getSender()}};
    case wire::Record::BULK_BEGIN:
      return Record{BulkBegin{rec.getBulkBegin().getBulkId(), rec.getBulkBegin().getStartHlc()}};
    case wire::Record::BULK_END: {
      const auto e = rec.getBulkEnd();
      return Record{BulkEnd{e.getBulkId(), e.getFlows()}};
    }
    case wire::Record::DIGEST: {
      const auto g = rec.getDigest();
      return Record{Digest{g.getRangeFirst(), g.getRangeLast(), g.getHash(), g.getFlows()}};
    }
    case wire::Record::EXPECT:
      return decodeExpect(rec.getExpect(), bases, minor);
    case wire::Record::EXPECT_DELETE:
      return decodeExpectDelete(rec.getExpectDelete(), bases, minor);
  }
  return Check::kUnknown;
}

std::variant<Decoded, DecodeError> decodeMessage(kj::ArrayPtr<const word> words) {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = kTraversalLimitWords;
  options.nestingLimit = kNestingLimit;
  capnp::FlatArrayMessageReader reader(words, options);
  const auto dg = reader.getRoot<wire::Datagram>();
  Decoded out;
  Header& h = out.header;
  h.protocolVersion = dg.getProtocolVersion();
  h.clusterId = dg.getClusterId();
  h.node = dg.getNode();
  h.bootEpoch = dg.getBootEpoch();
  h.seq = dg.getSeq();
  const unsigned major = h.protocolVersion >> 8;
  const unsigned minor = h.protocolVersion & 0xff;
  if (major != kMajor || minor == 0) return DecodeError::kUnknownVersion;
  const bool newerMinor = minor > kMinor;
  const Bases bases{dg.getHlcBase(), dg.getNodeBase()};
  const auto records = dg.getRecords();
  if (records.size() > kMaxRecords) return DecodeError::kTooLarge;
  out.records.reserve(records.size());
  size_t nackRanges = 0;
  for (const auto rec : records) {
    auto r = decodeRecord(rec, bases, minor, nackRanges);
    if (auto* record = std::get_if<Record>(&r)) {
      out.records.push_back(std::move(*record));
    } else if (std::get<Check>(r) == Check::kBad || !newerMinor) {
      return DecodeError::kBadRecord;
    }  // else: a kind from a newer minor version we do not know; skipped by design
  }
  return out;
}

}  // namespace

// ---- DatagramBuilder ---------------------------------------------------------------------
//
// Size accounting. The packed size of a datagram is data-dependent, and finish() must never
// exceed maxBytes, so add() accepts a record only under a proven upper bound:
//  - quick bound: the sum of standalone packed costs of the pieces of the message (segment
//    table, root pointer, the unknown header words at 10 bytes each, the known header words,
//    list pointer and tag, and each record measured alone). Packing is subadditive, so the sum
//    bounds the whole; for ordinary IPv4 flows it is exact per record, and the only slack is in
//    the header (~15 bytes).
//  - exact bound, only when the quick bound says "full": pack the whole datagram with the
//    candidate, counting the three header words finish() fills in at their worst. For records
//    without out-of-line parts (ordinary flows, deletes, acks, ...) the datagram's words are
//    kept from add() and this is one scan; otherwise the datagram is encoded again.
// finish() packs with the real header; its size cannot exceed the last bound.

namespace {

// Upper bound of everything but the records' own words, for a datagram of `records` records.
size_t headerBound(size_t records, const Bases& bases) {
  const size_t segTable = 5;  // zero segment count, a 32-bit size
  const size_t root =
      packedWordCost((uint64_t{kDatagramDataWords} << 32) | (uint64_t{kDatagramPtrs} << 48));
  const size_t unknown = kHeaderUnknownWords * kMaxWordCost;
  const size_t known = packedWordCost(bases.hlc) + packedWordCost(bases.node);
  const uint64_t listWords = records * kRecordWords;
  const size_t listPtr = packedWordCost(1 | (7ull << 32) | (listWords << 35));
  const size_t tag = packedWordCost((uint64_t{records} << 2) | (uint64_t{kRecordDataWords} << 32) |
                                    (uint64_t{kRecordPtrs} << 48));
  return segTable + root + unknown + known + listPtr + tag;
}

size_t exactBound(const std::vector<Record>& records, const Bases& bases, size_t words) {
  capnp::MallocMessageBuilder msg(static_cast<unsigned>(words + 16),
                                  capnp::AllocationStrategy::FIXED_SIZE);
  encodeDatagram(msg, Header{}, bases, records);
  const auto segments = msg.getSegmentsForOutput();
  assert(segments.size() == 1);
  const kj::ArrayPtr<const word> seg = segments[0];
  const size_t segTable = packedWordCost(uint64_t{seg.size()} << 32);
  const size_t known = 1 + kHeaderUnknownWords;  // root pointer, then the unknown words
  return segTable + packedSize(seg.begin(), 1) + kHeaderUnknownWords * kMaxWordCost +
         packedSize(seg.begin() + known, seg.size() - known);
}

// The fast path: a datagram whose records have no out-of-line parts is the records' element
// words (encoded once, by add()) behind a fixed prefix, so finish() and the exact check need no
// second encoding. The prefix is what Cap'n Proto writes; debug builds compare with it.
constexpr size_t kPrefixWords = 1 + kDatagramDataWords + kDatagramPtrs + 1;

void writePrefix(std::vector<uint64_t>& words, const Header& h, const Bases& bases,
                 size_t records) {
  words[0] = (uint64_t{kDatagramDataWords} << 32) | (uint64_t{kDatagramPtrs} << 48);  // root
  words[1] = uint64_t{h.protocolVersion} | (uint64_t{h.node} << 16) | (uint64_t{h.clusterId} << 32);
  words[2] = h.bootEpoch;
  words[3] = h.seq;
  words[4] = bases.hlc;
  words[5] = bases.node;
  words[6] = 1 | (7ull << 32) | (uint64_t{records * kRecordWords} << 35);     // list pointer
  words[7] = (uint64_t{records} << 2) | (uint64_t{kRecordDataWords} << 32) |  // list tag
             (uint64_t{kRecordPtrs} << 48);
}

size_t exactFlatBound(std::vector<uint64_t>& words, const Bases& bases, size_t records) {
  writePrefix(words, Header{}, bases, records);
  const auto* w = reinterpret_cast<const word*>(words.data());
  const size_t known = 1 + kHeaderUnknownWords;
  return packedWordCost(uint64_t{words.size()} << 32) + packedSize(w, 1) +
         kHeaderUnknownWords * kMaxWordCost + packedSize(w + known, words.size() - known);
}

std::vector<uint8_t> packCapnp(capnp::MessageBuilder& msg, size_t capacity) {
  kj::VectorOutputStream out(capacity);
  capnp::writePackedMessage(out, msg);
  const auto packed = out.getArray();
  return {packed.begin(), packed.end()};
}

std::vector<uint8_t> packFlat(const std::vector<uint64_t>& words, size_t capacity) {
  kj::VectorOutputStream out(capacity);
  const kj::ArrayPtr<const word> segments[1] = {
      kj::arrayPtr(reinterpret_cast<const word*>(words.data()), words.size())};
  capnp::writePackedMessage(out, kj::arrayPtr(segments, 1));
  const auto packed = out.getArray();
  return {packed.begin(), packed.end()};
}

std::vector<uint8_t> packEncoded(const Header& h, const Bases& bases,
                                 const std::vector<Record>& records, size_t words,
                                 size_t capacity) {
  capnp::MallocMessageBuilder msg(static_cast<unsigned>(words + 16),
                                  capnp::AllocationStrategy::FIXED_SIZE);
  encodeDatagram(msg, h, bases, records);
  return packCapnp(msg, capacity);
}

}  // namespace

DatagramBuilder::DatagramBuilder(size_t maxBytes) : maxBytes_(maxBytes) {
  assert(maxBytes >= kMinDatagramBytes && maxBytes <= kMaxDatagramBytes);
  flat_.assign(kPrefixWords, 0);
}

bool DatagramBuilder::add(const Record& r) {
  Bases bases{hlcBase_, nodeBase_};
  bool newBase = false;
  if (!haveBase_) {
    if (auto v = versionOf(r)) {
      bases = Bases{v->hlc, v->node};
      newBase = true;
    }
  }
  const RecordCost cost = measureRecord(r, bases, scratch_);
  const size_t quick = headerBound(records_.size() + 1, bases) + chunkSum_ + cost.packedBound;
  const bool flat = allFlat_ && cost.flat;
  if (flat) flat_.insert(flat_.end(), cost.element.begin(), cost.element.end());
  records_.push_back(r);
  // Both bounds are valid on their own; the exact one is dearer and only needed near the end.
  if (quick > maxBytes_) {
    const size_t exact = flat ? exactFlatBound(flat_, bases, records_.size())
                              : exactBound(records_, bases, unpackedWords_ + cost.words);
    if (exact > maxBytes_) {
      records_.pop_back();
      if (flat) flat_.resize(flat_.size() - kRecordWords);
      return false;
    }
  }
  allFlat_ = flat;
  chunkSum_ += cost.packedBound;
  unpackedWords_ += cost.words;
  if (newBase) {
    haveBase_ = true;
    hlcBase_ = bases.hlc;
    nodeBase_ = bases.node;
  }
  return true;
}

std::vector<uint8_t> DatagramBuilder::finish(const Header& h) {
  std::vector<Record> carry;
  std::vector<uint8_t> bytes;
  const Bases bases{hlcBase_, nodeBase_};
  const size_t capacity = maxBytes_ + 64;
  if (allFlat_) {
    writePrefix(flat_, h, bases, records_.size());
    bytes = packFlat(flat_, capacity);
    assert(bytes == packEncoded(h, bases, records_, unpackedWords_, capacity));
  } else {
    bytes = packEncoded(h, bases, records_, unpackedWords_, capacity);
  }
  while (bytes.size() > maxBytes_ && !records_.empty()) {
    // Unreachable if the bounds are right; never send an oversized datagram nor lose a record.
    assert(!"DatagramBuilder: packed size exceeded its bound");
    carry.insert(carry.begin(), std::move(records_.back()));
    records_.pop_back();
    bytes = packEncoded(h, bases, records_, unpackedWords_, capacity);
  }
  records_.clear();
  allFlat_ = true;
  flat_.assign(kPrefixWords, 0);
  haveBase_ = false;
  hlcBase_ = 0;
  nodeBase_ = 0;
  chunkSum_ = 0;
  unpackedWords_ = 0;
  // Carried records are kept even if add() would refuse them: the next finish() carries again.
  for (Record& r : carry) {
    if (!add(r)) {
      const auto v = versionOf(r);
      if (!haveBase_ && v) {
        haveBase_ = true;
        hlcBase_ = v->hlc;
        nodeBase_ = v->node;
      }
      const RecordCost cost = measureRecord(r, Bases{hlcBase_, nodeBase_}, scratch_);
      chunkSum_ += cost.packedBound;
      unpackedWords_ += cost.words;
      records_.push_back(std::move(r));
    }
  }
  return bytes;
}

// ---- decode ------------------------------------------------------------------------------

const char* decodeErrorName(DecodeError e) {
  switch (e) {
    case DecodeError::kTruncated:
      return "truncated";
    case DecodeError::kMalformed:
      return "malformed";
    case DecodeError::kTooLarge:
      return "too_large";
    case DecodeError::kUnknownVersion:
      return "unknown_version";
    case DecodeError::kBadRecord:
      return "bad_record";
  }
  return "?";
}

std::variant<Decoded, DecodeError> decode(std::span<const uint8_t> bytes) {
  if (bytes.empty()) return DecodeError::kTruncated;
  if (bytes.size() > kMaxDatagramBytes) return DecodeError::kTooLarge;
  try {
    auto unpacked = unpack(bytes);
    if (const auto* e = std::get_if<DecodeError>(&unpacked)) return *e;
    const auto& words = std::get<std::vector<uint64_t>>(unpacked);
    if (auto e = checkSegmentTable(words)) return *e;
    return decodeMessage(kj::arrayPtr(reinterpret_cast<const word*>(words.data()), words.size()));
  } catch (const kj::Exception&) {
    return DecodeError::kMalformed;  // Cap'n Proto's verdict on a bad pointer, list, limit, ...
  } catch (const std::exception&) {
    return DecodeError::kMalformed;
  }
}

}  // namespace ctsync::replication
