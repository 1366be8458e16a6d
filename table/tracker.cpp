#include "table/tracker.hpp"

#include <algorithm>
#include <cassert>

#include "table/rewrite.hpp"
#include "table/tcp.hpp"

namespace ctsync::table {
namespace {

const PacketContext kNoContext;

uint8_t* writableOf(const RawPacket&) {
  return nullptr;
}
uint8_t* writableOf(const MutablePacket& p) {
  return p.data;
}

}  // namespace

Tracker::Tracker(const TrackerSettings& settings, uint64_t hashSeed,
                 const InterfaceAddresses* addresses)
    : settings_(settings),
      table_(settings.table, hashSeed),
      reassembler_(ReassemblyLimits{}),
      nat_(settings.nat, addresses, hashSeed) {
  parseOptions_.verifyChecksums = settings.protocols.verifyChecksums;
}

Nanos Tracker::clampTime(Nanos now) {
  lastNow_ = std::max(lastNow_, now);
  return lastNow_;
}

void Tracker::advance(Nanos now) {
  now = clampTime(now);
  table_.expire(now);
  reassembler_.expire(now);
}

Verdict Tracker::invalid(InvalidReason r) {
  ++counters_.invalidTotal;
  ++counters_.invalid[static_cast<size_t>(r)];
  Verdict v;
  v.reason = r;
  return v;
}

Verdict Tracker::process(const uint8_t* data, size_t len, Nanos now, uint16_t zone) {
  now = clampTime(now);
  table_.expire(now);
  PacketContext ctx;
  ctx.zone = zone;
  ParseResult& parsed = batchParsed_[0];
  parseIpInto(data, len, parseOptions_, parsed);
  const Verdict v = track(data, len, nullptr, parsed, 0, false, now, ctx, 0);
  ++counters_.byState[static_cast<size_t>(v.state)];
  return v;
}

Verdict Tracker::process(uint8_t* data, size_t len, Nanos now, const PacketContext& ctx) {
  now = clampTime(now);
  table_.expire(now);
  ParseResult& parsed = batchParsed_[0];
  parseIpInto(data, len, parseOptions_, parsed);
  const Verdict v = track(data, len, data, parsed, 0, false, now, ctx, 0);
  ++counters_.byState[static_cast<size_t>(v.state)];
  return v;
}

void Tracker::processBatch(std::span<const RawPacket> pkts, Nanos now, std::span<Verdict> out,
                           uint16_t zone) {
  PacketContext ctx;
  ctx.zone = zone;
  pipeline(pkts, now, out, [&ctx](const RawPacket&) -> const PacketContext& { return ctx; });
}

void Tracker::processBatch(std::span<const MutablePacket> pkts, Nanos now, std::span<Verdict> out) {
  pipeline(pkts, now, out, [](const MutablePacket& p) -> const PacketContext& {
    return p.context != nullptr ? *p.context : kNoContext;
  });
}

template <typename P, typename Ctx>
void Tracker::pipeline(std::span<const P> pkts, Nanos now, std::span<Verdict> out, Ctx&& ctxOf) {
  now = clampTime(now);
  table_.expire(now);
  // A software pipeline over the burst: packet i is parsed, hashed and its bucket head
  // prefetched while packet i - kStage has its head read and head entry prefetched, and packet
  // i - 2*kStage is tracked. Prefetches are only hints: every lookup is done again when the
  // packet is tracked, in order, so a packet that creates or kills an entry is seen by the
  // packets after it.
  constexpr size_t kStage = 10;
  static_assert(2 * kStage < kMaxBatch);
  assert(out.size() >= pkts.size() && "processBatch: one verdict per packet");
  const size_t n = std::min(pkts.size(), out.size());
  auto hashable = [](const ParseResult& r) {
    return r.kind == ParseKind::kPacket && !r.packet.icmpError;
  };
  for (size_t i = 0; i < n + 2 * kStage; ++i) {
    if (i < n) {
      ParseResult& r = batchParsed_[i % kMaxBatch];
      parseIpInto(pkts[i].data, pkts[i].len, parseOptions_, r);
      if (hashable(r)) {
        batchHashes_[i % kMaxBatch] = table_.hash(r.packet.tuple, ctxOf(pkts[i]).zone);
        table_.prefetch(batchHashes_[i % kMaxBatch]);
      }
    }
    if (i >= kStage && i - kStage < n) {
      const size_t j = (i - kStage) % kMaxBatch;
      if (hashable(batchParsed_[j])) table_.prefetchEntry(batchHashes_[j]);
    }
    if (i >= 2 * kStage) {
      const size_t k = i - 2 * kStage;
      ParseResult& r = batchParsed_[k % kMaxBatch];
      out[k] = track(pkts[k].data, pkts[k].len, writableOf(pkts[k]), r, batchHashes_[k % kMaxBatch],
                     hashable(r), now, ctxOf(pkts[k]), k);
      ++counters_.byState[static_cast<size_t>(out[k].state)];
    }
  }
}

Verdict Tracker::track(const uint8_t* data, size_t len, uint8_t* writable, ParseResult& parsed,
                       uint64_t hash, bool hashed, Nanos now, const PacketContext& ctx,
                       size_t slot) {
  ++counters_.packets;
  std::span<uint8_t> whole;
  if (parsed.kind == ParseKind::kFragment) {
    const FragResult fr = reassembler_.add(data, len, now);
    if (fr.status == FragStatus::kIncomplete) {
      Verdict v;
      v.state = CtState::kHeld;
      return v;
    }
    if (fr.status == FragStatus::kInvalid) return invalid(fr.reason);
    // The datagram is tracked, rewritten and handed back from memory of our own, kept per
    // batch position so that every verdict of a batch stays valid.
    if (wholeDatagrams_.size() <= slot) wholeDatagrams_.resize(slot + 1);
    std::vector<uint8_t>& buf = wholeDatagrams_[slot];
    buf.assign(fr.datagram.begin(), fr.datagram.end());
    whole = std::span<uint8_t>(buf);
    parseIpInto(buf.data(), buf.size(), parseOptions_, parsed);
    if (writable != nullptr) writable = buf.data();
    hashed = false;
    if (parsed.kind == ParseKind::kFragment) return invalid(InvalidReason::kFragment);
  }
  if (parsed.kind == ParseKind::kInvalid) return invalid(parsed.reason);
  const Packet& p = parsed.packet;
  Verdict v;
  if (p.icmpError) {
    v = related(p, writable, ctx.zone);
  } else {
    if (p.tuple.l4 == proto::kTcp) {
      const InvalidReason r = tcpError(p.l4, p.l4Len);
      if (r != InvalidReason::kNone) return invalid(r);
    }
    if (!hashed) hash = table_.hash(p.tuple, ctx.zone);
    const auto hit = table_.find(p.tuple, ctx.zone, hash);
    v = hit ? update(p, writable, *hit, hash, now, ctx) : create(p, writable, hash, now, ctx);
  }
  if (v.state != CtState::kInvalid) v.datagram = whole;
  return v;
}

// ICMP errors: RELATED to the flow their embedded packet belongs to; they create nothing and
// change nothing (as nf_conntrack_inet_error).
Verdict Tracker::related(const Packet& p, uint8_t* writable, uint16_t zone) {
  const auto target = invertTuple(p.inner);
  if (!target) return invalid(InvalidReason::kIcmpErrorBad);
  const auto hit = table_.find(*target, zone, table_.hash(*target, zone));
  if (!hit) return invalid(InvalidReason::kIcmpErrorNoMatch);
  // The error must travel towards the endpoint that sent the embedded packet.
  const Tuple t = table_.tuple(table_.entry(hit->index), hit->dir);
  if (!(t.dst == p.tuple.dst)) return invalid(InvalidReason::kIcmpErrorNoMatch);
  Verdict v;
  if (nat_.active(p.tuple.l3)) {
    // Without a packet to change (the const overloads) the outcome is still decided.
    std::vector<uint8_t> copy;
    uint8_t* bytes = writable;
    if (bytes == nullptr) {
      copy.assign(p.l3, p.l3 + p.ipLen);
      bytes = copy.data();
    }
    const IcmpRewrite r = natRewriteIcmpError(table_, hit->index, hit->dir, bytes, p);
    if (r.drop != InvalidReason::kNone) return invalid(r.drop);
    v.rewritten = writable != nullptr && r.changed;
  }
  ++counters_.related;
  v.state = CtState::kRelated;
  v.dir = hit->dir;
  v.index = hit->index;
  return v;
}

Verdict Tracker::create(const Packet& p, uint8_t* writable, uint64_t hash, Nanos now,
                        const PacketContext& ctx) {
  TcpConn tcp;
  const uint8_t l4 = p.tuple.l4;
  if (l4 == proto::kTcp) {
    const L4Outcome o = tcpNew(settings_.protocols.tcp, p.l4, p.l4Len, tcp);
    if (o.kind != L4Outcome::Kind::kAccept) return invalid(o.reason);
  } else if (l4 == proto::kIcmp || l4 == proto::kIcmpv6) {
    if (!isIcmpQuery(p.tuple.l3, p.tuple.icmpType())) return invalid(InvalidReason::kIcmpNoNew);
  }
  const auto reply = invertTuple(p.tuple);
  if (!reply) return invalid(InvalidReason::kIcmpNoNew);
  // NAT will look for other flows of this source: start fetching while the entry is set up.
  if (nat_.active(p.tuple.l3)) table_.prefetchSource(p.tuple, ctx.zone);
  const auto idx = table_.allocate(p.tuple, *reply, ctx.zone, hash, now);
  if (!idx) return invalid(InvalidReason::kTableFull);
  Entry& e = table_.entry(*idx);
  e.tcp = tcp;
  const L4Outcome o = l4Packet(*idx, Dir::kOriginal, p, now);
  if (o.kind != L4Outcome::Kind::kAccept) {
    table_.discard(*idx);
    return invalid(o.reason != InvalidReason::kNone ? o.reason : InvalidReason::kTcpState);
  }
  // NAT is decided after the first packet was tracked and before the entry is confirmed, as
  // the kernel's nat hooks run between conntrack and confirmation.
  if (nat_.active(p.tuple.l3)) {
    const InvalidReason why = nat_.setup(table_, *idx, ctx, now);
    if (why != InvalidReason::kNone) {
      table_.discard(*idx);
      return invalid(why);
    }
  }
  e.packets[0] = 1;
  e.bytes[0] = p.ipLen;
  table_.confirm(*idx, o.timeout, now);
  ++counters_.created;
  Verdict v;
  v.state = CtState::kNew;
  v.index = *idx;
  if (writable != nullptr) v.rewritten = natRewrite(table_, *idx, Dir::kOriginal, writable, p);
  return v;
}

Verdict Tracker::update(const Packet& p, uint8_t* writable, ConnTable::Hit hit, uint64_t hash,
                        Nanos now, const PacketContext& ctx) {
  Entry& e = table_.entry(hit.index);
  // ctinfo as the kernel assigns it before tracking: NEW until a reply has been seen.
  Verdict v;
  v.state = hit.dir == Dir::kReply || (e.status & status::kSeenReply) ? CtState::kEstablished
                                                                      : CtState::kNew;
  v.dir = hit.dir;
  const L4Outcome o = l4Packet(hit.index, hit.dir, p, now);
  const int d = index(hit.dir);
  switch (o.kind) {
    case L4Outcome::Kind::kInvalid:
      if (o.refresh) table_.setTimeout(hit.index, o.timeout, now, /*quiet=*/true);
      return invalid(o.reason);
    case L4Outcome::Kind::kReopen:
      table_.destroy(hit.index, now);
      return create(p, writable, hash, now, ctx);
    case L4Outcome::Kind::kKill: {
      ++e.packets[d];
      e.bytes[d] += p.ipLen;
      // The packet still leaves with the entry's translation, as it did in the kernel.
      if (writable != nullptr) v.rewritten = natRewrite(table_, hit.index, hit.dir, writable, p);
      table_.destroy(hit.index, now);
      return v;  // no entry left to attach
    }
    case L4Outcome::Kind::kAccept:
      break;
  }
  uint32_t mask = o.events;
  if (hit.dir == Dir::kReply && (e.status & status::kSeenReply) == 0) {
    e.status |= status::kSeenReply;
    mask |= ev::kReply;
  }
  ++e.packets[d];
  e.bytes[d] += p.ipLen;
  if (o.refresh) table_.setTimeout(hit.index, o.timeout, now, /*quiet=*/mask != 0);
  if (mask != 0) table_.notify(hit.index, mask, now);
  v.index = hit.index;
  if (writable != nullptr && (e.status & (status::kSrcNat | status::kDstNat)) != 0) {
    v.rewritten = natRewrite(table_, hit.index, hit.dir, writable, p);
  }
  return v;
}

L4Outcome Tracker::l4Packet(uint32_t index, Dir dir, const Packet& p, Nanos now) {
  Entry& e = table_.entry(index);
  const ProtocolSettings& ps = settings_.protocols;
  switch (e.l4) {
    case proto::kTcp:
      return tcpPacket(ps.tcp, e.tcp, e.status, dir, p.l4, p.l4Len, e.expiry - now);
    case proto::kUdp:
    case proto::kUdplite: {
      // As nf_conntrack_udp_packet: a flow that has seen a reply and is still active more than
      // two seconds after its creation is a stream (longer timeout, ASSURED).
      if ((e.status & status::kSeenReply) == 0) return L4Outcome::accept(ps.udp.unreplied);
      // An assured flow is past its first two seconds: no need to read its start time.
      if ((e.status & status::kAssured) != 0) return L4Outcome::accept(ps.udp.stream);
      if (now > table_.meta(index).start + seconds(2)) {
        L4Outcome o = L4Outcome::accept(ps.udp.stream);
        e.status |= status::kAssured;
        o.events |= ev::kAssured;
        return o;
      }
      return L4Outcome::accept(ps.udp.unreplied);
    }
    case proto::kIcmp:
      return L4Outcome::accept(ps.icmp.icmp);
    case proto::kIcmpv6:
      return L4Outcome::accept(ps.icmp.icmpv6);
    default:
      return L4Outcome::accept(ps.generic.timeout);
  }
}

}  // namespace ctsync::table
