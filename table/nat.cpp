#include "table/nat.hpp"

#include <algorithm>
#include <cstring>

// The order of decisions, the address hash and the bounded port search follow the kernel's
// get_unique_tuple(), find_best_ips_proto() and nf_nat_l4proto_unique_tuple() (Linux 6.x), so
// that the same packets get the same mappings wherever the kernel is deterministic.

namespace ctsync::table {
namespace {

// NF_NAT_RANGE_* as in include/uapi/linux/netfilter/nf_nat.h.
constexpr uint32_t kMapIps = 1u << 0;
constexpr uint32_t kProtoSpecified = 1u << 1;
constexpr uint32_t kProtoRandom = 1u << 2;
constexpr uint32_t kPersistent = 1u << 3;
constexpr uint32_t kProtoRandomFully = 1u << 4;
constexpr uint32_t kRandomAll = kProtoRandom | kProtoRandomFully;

constexpr uint32_t kMaxAttempts = 128;                   // NF_NAT_MAX_ATTEMPTS
constexpr uint32_t kHarderThreshold = kMaxAttempts / 4;  // NF_NAT_HARDER_THRESH

inline uint32_t rol32(uint32_t w, int s) {
  return (w << s) | (w >> (32 - s));
}

uint32_t loadBe32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
void storeBe32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}
// A word of an address as the kernel's u32 view of it (memory order, read natively).
uint32_t rawWord(const Addr& a, int i) {
  uint32_t w;
  std::memcpy(&w, a.bytes.data() + 4 * i, 4);
  return w;
}

bool addrInRange(L3 l3, const Addr& a, const Addr& min, const Addr& max) {
  if (l3 == L3::kIpv4) {
    const uint32_t v = loadBe32(a.bytes.data());
    return v >= loadBe32(min.bytes.data()) && v <= loadBe32(max.bytes.data());
  }
  return std::memcmp(a.bytes.data(), min.bytes.data(), 16) >= 0 &&
         std::memcmp(a.bytes.data(), max.bytes.data(), 16) <= 0;
}

bool isIcmp(uint8_t l4) {
  return l4 == proto::kIcmp || l4 == proto::kIcmpv6;
}

}  // namespace

uint32_t jhash2(const uint32_t* k, uint32_t length, uint32_t initval) {
  uint32_t a, b, c;
  a = b = c = 0xdeadbeef + (length << 2) + initval;
  while (length > 3) {
    a += k[0];
    b += k[1];
    c += k[2];
    a -= c;
    a ^= rol32(c, 4);
    c += b;
    b -= a;
    b ^= rol32(a, 6);
    a += c;
    c -= b;
    c ^= rol32(b, 8);
    b += a;
    a -= c;
    a ^= rol32(c, 16);
    c += b;
    b -= a;
    b ^= rol32(a, 19);
    a += c;
    c -= b;
    c ^= rol32(b, 4);
    b += a;
    length -= 3;
    k += 3;
  }
  switch (length) {
    case 3:
      c += k[2];
      [[fallthrough]];
    case 2:
      b += k[1];
      [[fallthrough]];
    case 1:
      a += k[0];
      c ^= b;
      c -= rol32(b, 14);
      a ^= c;
      a -= rol32(c, 11);
      b ^= a;
      b -= rol32(a, 25);
      c ^= b;
      c -= rol32(b, 16);
      a ^= c;
      a -= rol32(c, 4);
      b ^= a;
      b -= rol32(a, 14);
      c ^= b;
      c -= rol32(b, 24);
      break;
    default:
      break;
  }
  return c;
}

Nat::Nat(NatSettings settings, const InterfaceAddresses* addresses, uint64_t seed)
    : settings_(std::move(settings)), addresses_(addresses), rng_(seed ^ 0x6e61746e61746e61ull) {
  for (const NatRule& r : settings_.rules) {
    const std::optional<L3> family =
        r.family ? r.family : (r.toAddress ? std::optional<L3>(r.toAddress->l3) : std::nullopt);
    if (!family || *family == L3::kIpv4) active_[0] = true;
    if (!family || *family == L3::kIpv6) active_[1] = true;
  }
}

uint16_t Nat::random16() {
  // splitmix64: the kernel draws get_random_u16(); any uniform source will do.
  uint64_t z = (rng_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return static_cast<uint16_t>((z ^ (z >> 31)) >> 16);
}

const NatRule* Nat::match(Manip manip, const Tuple& t, const PacketContext& ctx) const {
  for (const NatRule& r : settings_.rules) {
    const bool dstRule = r.type == NatType::kDnat || r.type == NatType::kRedirect;
    if (dstRule != (manip == Manip::kDst)) continue;
    if (r.family && *r.family != t.l3) continue;
    if (r.toAddress && r.toAddress->l3 != t.l3) continue;
    if (r.protocol && *r.protocol != t.l4) continue;
    if (r.source && !r.source->contains(t.l3, t.src)) continue;
    if (r.destination && !r.destination->contains(t.l3, t.dst)) continue;
    if (r.sport && !(hasPorts(t.l4) && r.sport->contains(t.sport))) continue;
    if (r.dport && !(hasPorts(t.l4) && r.dport->contains(t.dport))) continue;
    if (!interfaceMatches(r.inInterface, ctx.inInterface)) continue;
    // Routing has not run at prerouting: an output interface never matches there.
    if (!r.outInterface.empty() &&
        (manip == Manip::kDst || !interfaceMatches(r.outInterface, ctx.outInterface))) {
      continue;
    }
    if (r.zone && *r.zone != ctx.zone) continue;
    return &r;
  }
  return nullptr;
}

std::optional<Nat::Range> Nat::rangeFor(const NatRule& rule, L3 l3, const PacketContext& ctx,
                                        InvalidReason& why) const {
  Range range;
  range.flags = kMapIps;
  switch (rule.type) {
    case NatType::kSnat:
    case NatType::kDnat:
      range.minAddr = rule.toAddress->min;
      range.maxAddr = rule.toAddress->max;
      break;
    case NatType::kMasquerade:
    case NatType::kRedirect: {
      const std::string_view iface =
          rule.type == NatType::kMasquerade ? ctx.outInterface : ctx.inInterface;
      const std::optional<Addr> a =
          addresses_ != nullptr ? addresses_->addressOf(iface, l3) : std::nullopt;
      if (!a) {
        why = InvalidReason::kNatNoAddress;
        return std::nullopt;
      }
      range.minAddr = range.maxAddr = *a;
      break;
    }
  }
  if (rule.toPort) {
    range.flags |= kProtoSpecified;
    range.minProto = rule.toPort->min;
    range.maxProto = rule.toPort->max;
  }
  if (rule.flags & natflag::kPersistent) range.flags |= kPersistent;
  if (rule.flags & natflag::kRandom) range.flags |= kProtoRandom;
  if (rule.flags & natflag::kFullyRandom) range.flags |= kProtoRandomFully;
  return range;
}

InvalidReason Nat::setup(ConnTable& table, uint32_t index, const PacketContext& ctx, Nanos now) {
  Entry& e = table.entry(index);
  if (!active(e.l3)) return InvalidReason::kNone;
  InvalidReason why = InvalidReason::kNone;

  // Prerouting: DNAT and redirect. Without a rule the kernel's null binding changes nothing
  // for a destination manip (it never moves a port), so only the DONE bit is set.
  const Tuple orig = table.tuple(e, Dir::kOriginal);
  if (const NatRule* rule = match(Manip::kDst, orig, ctx)) {
    const std::optional<Range> range = rangeFor(*rule, e.l3, ctx, why);
    if (!range) {
      ++counters_.noAddress;
      return why;
    }
    setupManip(table, index, *range, Manip::kDst, now);
  }
  e.status |= status::kDstNatDone;

  // Postrouting: SNAT and masquerade, on the packet as DNAT left it. Without a rule the null
  // binding keeps the source, but still moves the port if the tuple is taken (as when the
  // firewall's own address:port already carries a mapping).
  const Tuple curr = *invertTuple(table.tuple(e, Dir::kReply));
  bool free;
  if (const NatRule* rule = match(Manip::kSrc, curr, ctx)) {
    const std::optional<Range> range = rangeFor(*rule, e.l3, ctx, why);
    if (!range) {
      ++counters_.noAddress;
      return why;
    }
    free = setupManip(table, index, *range, Manip::kSrc, now);
  } else {
    Range null;
    null.flags = kMapIps;
    null.minAddr = null.maxAddr = curr.src;
    free = setupManip(table, index, null, Manip::kSrc, now);
  }
  e.status |= status::kSrcNatDone;

  // The kernel finds a clash at confirmation and drops the packet: every search failed. The
  // source manip ran last, so when it saw its tuple free the reply tuple is unique.
  const Tuple reply = table.tuple(e, Dir::kReply);
  if (!free && table.find(reply, e.zone, table.hash(reply, e.zone))) {
    ++counters_.exhausted;
    return InvalidReason::kNatExhausted;
  }
  if (e.status & status::kSrcNat) ++counters_.srcMapped;
  if (e.status & status::kDstNat) ++counters_.dstMapped;
  return InvalidReason::kNone;
}

// nf_nat_setup_info for one manip type. True when the resulting tuple was seen to be free.
bool Nat::setupManip(ConnTable& table, uint32_t index, const Range& range, Manip manip, Nanos now) {
  const Tuple curr = *invertTuple(table.tuple(table.entry(index), Dir::kReply));
  const Mapped m = uniqueTuple(table, index, curr, range, manip, now);
  if (!(m.tuple == curr)) {
    table.setReply(index, *invertTuple(m.tuple));
    table.entry(index).status |= manip == Manip::kSrc ? status::kSrcNat : status::kDstNat;
  }
  return m.free;
}

bool Nat::used(const ConnTable& table, const Tuple& t, uint16_t zone) const {
  const std::optional<Tuple> reply = invertTuple(t);
  if (!reply) return false;
  return table.find(*reply, zone, table.hash(*reply, zone)).has_value();
}

namespace {

// The manipulable part of `t` lies in [min, max] (l4proto_in_range).
bool protoInRange(const Tuple& t, bool src, uint16_t min, uint16_t max) {
  if (isIcmp(t.l4)) return t.sport >= min && t.sport <= max;
  if (!hasPorts(t.l4)) return true;
  const uint16_t port = src ? t.sport : t.dport;
  return port >= min && port <= max;
}

}  // namespace

// get_unique_tuple: `orig` is the flow as it looks before this manip.
Nat::Mapped Nat::uniqueTuple(ConnTable& table, uint32_t index, const Tuple& orig,
                             const Range& range, Manip manip, Nanos now) {
  const uint16_t zone = table.entry(index).zone;
  const auto inRange = [&range](const Tuple& t) {
    if ((range.flags & kMapIps) && !addrInRange(t.l3, t.src, range.minAddr, range.maxAddr)) {
      return false;
    }
    if (!(range.flags & kProtoSpecified)) return true;
    return protoInRange(t, true, range.minProto, range.maxProto);
  };
  // 1) A source manip keeps the original tuple when it is in range and free, else reuses the
  // mapping an existing flow of the same source got.
  if (manip == Manip::kSrc && !(range.flags & kRandomAll)) {
    if (inRange(orig)) {
      // The kernel's nf_nat_used_tuple_new also forgives a clash with the exact reverse flow
      // racing in on another CPU; one thread per table never sees that race.
      if (!used(table, orig, zone)) return {orig, true};
    } else {
      Tuple t;
      if (findSourceMapping(table, orig, zone, range, t) && !used(table, t, zone)) {
        return {t, true};
      }
    }
  }
  // 2) The address from the kernel's hash over the addresses.
  Tuple t = orig;
  bestAddress(t, range, manip, zone);
  // 3) Keep the port or id when it is in range and unique.
  if (!(range.flags & kRandomAll)) {
    if (range.flags & kProtoSpecified) {
      if (protoInRange(t, manip == Manip::kSrc, range.minProto, range.maxProto)) {
        // A single port is taken as it is: a clash shows at confirmation.
        if (range.minProto == range.maxProto) return {t, false};
        if (!used(table, t, zone)) return {t, true};
      }
    } else if (!used(table, t, zone)) {
      return {t, true};
    }
  }
  // 4) Search the range.
  const bool found = uniquePort(table, index, t, range, manip, now);
  return {t, found};
}

// find_appropriate_src: the first flow of the same source (address, port, protocol, zone)
// whose mapping lies in `range` gives its translated source.
bool Nat::findSourceMapping(const ConnTable& table, const Tuple& orig, uint16_t zone,
                            const Range& range, Tuple& out) const {
  bool found = false;
  table.forEachSameSource(orig, zone, [&](uint32_t i) {
    Tuple r = *invertTuple(table.tuple(table.entry(i), Dir::kReply));
    r.dst = orig.dst;
    r.dport = orig.dport;
    const bool addrOk =
        !(range.flags & kMapIps) || addrInRange(r.l3, r.src, range.minAddr, range.maxAddr);
    if (addrOk && (!(range.flags & kProtoSpecified) ||
                   protoInRange(r, true, range.minProto, range.maxProto))) {
      out = r;
      found = true;
      return false;
    }
    return true;
  });
  return found;
}

// find_best_ips_proto: a hash of the source (and, unless persistent, destination) address
// scaled into the range, word by word; deterministic, so servers see a client from the same
// address even across reboots.
void Nat::bestAddress(Tuple& t, const Range& range, Manip manip, uint16_t zone) {
  if (!(range.flags & kMapIps)) return;
  Addr& var = manip == Manip::kSrc ? t.src : t.dst;
  if (range.minAddr == range.maxAddr) {
    var = range.minAddr;
    return;
  }
  const int max = t.l3 == L3::kIpv4 ? 0 : 3;
  const bool persistent = (range.flags & kPersistent) != 0;
  uint32_t src[4];
  for (int i = 0; i < 4; ++i) src[i] = rawWord(t.src, i);
  uint32_t j = jhash2(src, 4, persistent ? 0 : rawWord(t.dst, max) ^ zone);
  bool fullRange = false;
  for (int i = 0; i <= max; ++i) {
    uint32_t minip, dist;
    if (!fullRange) {
      minip = loadBe32(range.minAddr.bytes.data() + 4 * i);
      const uint32_t maxip = loadBe32(range.maxAddr.bytes.data() + 4 * i);
      dist = maxip - minip + 1;
    } else {
      minip = 0;
      dist = ~0u;
    }
    const auto scaled = static_cast<uint32_t>((uint64_t{j} * dist) >> 32);
    storeBe32(var.bytes.data() + 4 * i, minip + scaled);
    if (rawWord(var, i) != rawWord(range.maxAddr, i)) fullRange = true;
    // For a destination manip this reads the word just written, as the kernel does.
    if (!persistent) j ^= rawWord(t.dst, i);
  }
}

// nf_nat_l4proto_unique_tuple: from an offset (random unless a plain DNAT), try up to 128
// values, then rounds of half as many from new offsets while more than 16 remain: at most
// 248 tries, never a long search.
bool Nat::uniquePort(ConnTable& table, uint32_t index, Tuple& t, const Range& range, Manip manip,
                     Nanos now) {
  uint16_t* key;
  uint32_t min, size;
  const bool specified = (range.flags & kProtoSpecified) != 0;
  if (isIcmp(t.l4)) {
    key = &t.sport;  // the id, the same in both directions
    if (!specified) {
      min = 0;
      size = 65536;
    } else {
      min = range.minProto;
      size = uint32_t{range.maxProto} - range.minProto + 1;
    }
  } else if (hasPorts(t.l4)) {
    key = manip == Manip::kSrc ? &t.sport : &t.dport;
    if (!specified) {
      if (manip == Manip::kDst) return false;  // a destination keeps its port unless told
      if (*key < 1024) {
        // The old convention: below 512 is credential passing.
        if (*key < 512) {
          min = 1;
          size = 511;
        } else {
          min = 600;
          size = 1023 - 600 + 1;
        }
      } else {
        min = 1024;
        size = 65535 - 1024 + 1;
      }
    } else {
      uint32_t lo = range.minProto, hi = range.maxProto;
      if (hi < lo) std::swap(lo, hi);
      min = lo;
      size = hi - lo + 1;
    }
  } else {
    return false;  // nothing to map: the address alone must do
  }
  ++counters_.searches;
  const bool random = (range.flags & kRandomAll) || manip != Manip::kDst;
  uint16_t off = random ? random16() : 0;
  uint32_t attempts = std::min(size, kMaxAttempts);
  // Where the kernel draws its offset at random it then tries consecutive values, which in a
  // nearly full range keep landing in the same long runs of taken ports and give up. ctsync
  // draws the offset and also a step coprime with the range, so its tries are spread over the
  // whole range (the same count of tries, a far better chance of a free port). A plain DNAT
  // searches consecutively from the range's start, exactly as the kernel does.
  uint32_t stride = random ? randomStride(size) : 1;
  while (true) {
    for (uint32_t i = 0; i < attempts; ++i) {
      // Consecutive tries count with the kernel's 16-bit offset, which wraps.
      const uint32_t pos =
          stride == 1 ? static_cast<uint16_t>(off + i) % size
                      : static_cast<uint32_t>((uint64_t{off} + uint64_t{i} * stride) % size);
      *key = static_cast<uint16_t>(min + pos);
      ++counters_.attempts;
      if (!usedHarder(table, index, t, attempts - i, now)) return true;
    }
    if (attempts >= size || attempts < 16) return false;
    attempts /= 2;
    off = random16();
    if (random) stride = randomStride(size);
  }
}

uint32_t Nat::randomStride(uint32_t size) {
  if (size <= 2) return 1;
  // A random step below `size` that shares no factor with it visits every value once.
  for (int tries = 0; tries < 64; ++tries) {
    const uint32_t s = 1 + (uint32_t{random16()} << 16 | random16()) % (size - 1);
    uint32_t a = s, b = size;
    while (b != 0) {
      const uint32_t r = a % b;
      a = b;
      b = r;
    }
    if (a == 1) return s;
  }
  return 1;
}

// nf_nat_used_tuple_harder: in the last tries for a new TCP connection, a colliding
// source-NATed entry that is closing (TIME_WAIT or later) and whose sequence the new SYN has
// passed is evicted and its mapping reused.
bool Nat::usedHarder(ConnTable& table, uint32_t index, const Tuple& t, uint32_t attemptsLeft,
                     Nanos now) {
  const Entry& ours = table.entry(index);
  if (attemptsLeft > kHarderThreshold || t.l4 != proto::kTcp ||
      ours.tcp.state != TcpState::kSynSent) {
    return used(table, t, ours.zone);
  }
  const Tuple reply = *invertTuple(t);
  const auto hit = table.find(reply, ours.zone, table.hash(reply, ours.zone));
  if (!hit) return false;
  if (hit->dir == Dir::kOriginal) return true;
  const Entry& old = table.entry(hit->index);
  const bool mayKill = old.tcp.state >= TcpState::kTimeWait &&
                       (old.status & (status::kFixedTimeout | status::kDying)) == 0 &&
                       (old.status & status::kSrcNat) != 0;
  if (!mayKill) return true;
  if (static_cast<int32_t>(ours.tcp.seen[0].end - old.tcp.seen[0].end) <= 0) return true;
  table.destroy(hit->index, now);
  ++counters_.timeWaitReused;
  return false;
}

}  // namespace ctsync::table
