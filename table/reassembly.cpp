#include "table/reassembly.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <iterator>
#include <map>
#include <vector>

#include "table/tuple.hpp"

// Behaviour follows Linux 6.x ip_defrag (net/ipv4/ip_fragment.c), nf_ct_frag6_gather
// (net/ipv6/netfilter/nf_conntrack_reasm.c) and the shared queue logic in inet_fragment.c:
// fragments are kept as "runs" of contiguous data so that a fragment lying wholly inside a run
// is a duplicate (dropped, datagram kept) and any other overlap kills the datagram; the end of
// a non-last fragment must be a multiple of 8 (IPv4 trims, IPv6 kills); the first fragment
// gives the header; mixing Not-ECT with ECT/CE fragments kills the datagram.

namespace ctsync::table {
namespace {

constexpr size_t kIpv4MinHeader = 20;
constexpr size_t kIpv6Header = 40;
constexpr size_t kFragHeader = 8;
constexpr size_t kMaxIpLen = 65535;

// ECN bits of the fragments seen, as the kernel's IPFRAG_ECN_* flags.
constexpr uint8_t kEcnNotEct = 1;
constexpr uint8_t kEcnCe = 8;

uint16_t load16(const uint8_t* p) {
  return static_cast<uint16_t>((p[0] << 8) | p[1]);
}
uint32_t load32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
void store16(uint8_t* p, size_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}

uint16_t ipv4HeaderChecksum(const uint8_t* p, size_t n) {
  uint64_t acc = 0;
  for (size_t i = 0; i + 1 < n; i += 2) acc += load16(p + i);
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  return static_cast<uint16_t>(~acc & 0xffff);
}

uint8_t ecnFlag(uint8_t ecnBits) {
  return static_cast<uint8_t>(1u << (ecnBits & 3));
}

struct Key {
  std::array<uint8_t, 16> src{};
  std::array<uint8_t, 16> dst{};
  uint32_t id = 0;
  uint8_t version = 0;
  uint8_t proto = 0;  // IPv4 only; IPv6 keys leave it 0
  auto operator<=>(const Key&) const = default;
};

// One fragment as read from its header.
struct FragInfo {
  Key key;
  size_t offset = 0;
  size_t end = 0;  // offset + payload bytes (before any IPv4 trimming)
  bool more = false;
  const uint8_t* payload = nullptr;
  size_t headerLen = 0;       // IPv4: IHL; IPv6: bytes before the fragment header
  size_t prevNextHeader = 0;  // IPv6: offset of the byte that names the fragment header
  uint8_t nextHeader = 0;     // IPv6: what follows the fragment header
  uint8_t ecn = 0;
  bool df = false;
};

// The unfragmentable part of an IPv6 first fragment must carry the whole upper-layer header
// (RFC 8200 4.5; ipv6frag_thdr_truncated). Walks from just after the fragment header.
bool upperHeaderTruncated(const uint8_t* data, size_t end, size_t off, uint8_t nh) {
  while (nh == proto::kHopByHop || nh == proto::kRouting || nh == proto::kDestOpts ||
         nh == proto::kAuth || nh == proto::kFragment) {
    if (off + 2 > end) return false;  // unparsable: the kernel lets it pass this check
    if (nh == proto::kFragment) return false;
    const size_t hdrLen =
        nh == proto::kAuth ? (size_t{data[off + 1]} + 2) * 4 : (size_t{data[off + 1]} + 1) * 8;
    nh = data[off];
    off += hdrLen;
  }
  size_t need = 1;
  if (nh == proto::kTcp) need = 20;
  if (nh == proto::kUdp || nh == proto::kIcmpv6) need = 8;
  return off + need > end;
}

InvalidReason readIpv4(const uint8_t* data, size_t len, FragInfo& f) {
  if (len < kIpv4MinHeader) return InvalidReason::kTruncated;
  const size_t ihl = size_t{data[0] & 0x0fu} * 4;
  if (ihl < kIpv4MinHeader) return InvalidReason::kBadIpHeader;
  if (ihl > len) return InvalidReason::kTruncated;
  if (ipv4HeaderChecksum(data, ihl) != 0) return InvalidReason::kBadIpChecksum;
  const size_t total = load16(data + 2);
  if (total > len) return InvalidReason::kTruncated;
  if (total < ihl) return InvalidReason::kBadIpHeader;
  const uint16_t frag = load16(data + 6);
  if ((frag & 0x3fff) == 0) return InvalidReason::kFragment;  // not a fragment at all
  std::memcpy(f.key.src.data(), data + 12, 4);
  std::memcpy(f.key.dst.data(), data + 16, 4);
  f.key.id = load16(data + 4);
  f.key.version = 4;
  f.key.proto = data[9];
  f.offset = size_t{frag & 0x1fffu} * 8;
  f.more = (frag & 0x2000) != 0;
  f.df = (frag & 0x4000) != 0;
  f.end = f.offset + (total - ihl);
  f.payload = data + ihl;
  f.headerLen = ihl;
  f.ecn = ecnFlag(data[1]);
  return InvalidReason::kNone;
}

InvalidReason readIpv6(const uint8_t* data, size_t len, FragInfo& f) {
  if (len < kIpv6Header) return InvalidReason::kTruncated;
  const size_t end = kIpv6Header + load16(data + 4);
  if (end > len) return InvalidReason::kTruncated;
  // Find the fragment header as find_prev_fhdr does: only extension headers may precede it.
  uint8_t nh = data[6];
  size_t prev = 6;
  size_t off = kIpv6Header;
  while (nh != proto::kFragment) {
    if (nh != proto::kHopByHop && nh != proto::kRouting && nh != proto::kDestOpts &&
        nh != proto::kAuth) {
      return InvalidReason::kBadExtHeader;
    }
    if (off + 2 > end) return InvalidReason::kBadExtHeader;
    const size_t hdrLen =
        nh == proto::kAuth ? (size_t{data[off + 1]} + 2) * 4 : (size_t{data[off + 1]} + 1) * 8;
    prev = off;
    nh = data[off];
    off += hdrLen;
  }
  if (off + kFragHeader > end) return InvalidReason::kBadExtHeader;
  const uint8_t* fh = data + off;
  const uint16_t frag = load16(fh + 2);
  std::memcpy(f.key.src.data(), data + 8, 16);
  std::memcpy(f.key.dst.data(), data + 24, 16);
  f.key.id = load32(fh + 4);
  f.key.version = 6;
  f.offset = frag & 0xfff8u;
  f.more = (frag & 1) != 0;
  f.end = f.offset + (end - off - kFragHeader);
  f.payload = fh + kFragHeader;
  f.headerLen = off;
  f.prevNextHeader = prev;
  f.nextHeader = fh[0];
  f.ecn = ecnFlag(static_cast<uint8_t>(data[1] >> 4));
  if (f.offset == 0 && upperHeaderTruncated(data, end, off + kFragHeader, f.nextHeader)) {
    return InvalidReason::kFragment;
  }
  return InvalidReason::kNone;
}

}  // namespace

struct Reassembler::Impl {
  struct Datagram {
    std::multimap<Nanos, Key>::iterator expiry;
    std::map<size_t, std::vector<uint8_t>> runs;  // start offset -> contiguous bytes
    std::vector<uint8_t> header;                  // from the first fragment
    size_t prevNextHeader = 0;
    uint8_t nextHeader = 0;
    bool firstIn = false;
    bool lastIn = false;
    size_t len = 0;    // payload length: exact once lastIn, else the highest end seen
    size_t meat = 0;   // payload bytes held
    size_t bytes = 0;  // what counts against maxBytes
    uint8_t ecn = 0;
    size_t maxSize = 0;
    size_t maxDfSize = 0;
  };

  explicit Impl(const ReassemblyLimits& l) : limits(l) {}

  ReassemblyLimits limits;
  std::map<Key, Datagram> datagrams;
  std::multimap<Nanos, Key> byCreation;
  size_t bytesHeld = 0;
  std::vector<uint8_t> out;

  void drop(std::map<Key, Datagram>::iterator it) {
    bytesHeld -= it->second.bytes;
    byCreation.erase(it->second.expiry);
    datagrams.erase(it);
  }
};

Reassembler::Reassembler(const ReassemblyLimits& limits) : impl_(std::make_unique<Impl>(limits)) {}

Reassembler::~Reassembler() = default;

size_t Reassembler::bytesHeld() const {
  return impl_->bytesHeld;
}

void Reassembler::expire(Nanos now) {
  Impl& m = *impl_;
  while (!m.byCreation.empty() && now - m.byCreation.begin()->first >= m.limits.timeout) {
    m.drop(m.datagrams.find(m.byCreation.begin()->second));
    ++counters_.timedOut;
  }
}

FragResult Reassembler::add(const uint8_t* data, size_t len, Nanos now) {
  expire(now);
  Impl& m = *impl_;
  FragResult res;
  auto fail = [&](InvalidReason reason) {
    ++counters_.invalid;
    res.status = FragStatus::kInvalid;
    res.reason = reason;
    return res;
  };

  FragInfo f;
  InvalidReason err = InvalidReason::kTruncated;
  if (data != nullptr && len > 0) {
    const uint8_t version = data[0] >> 4;
    if (version == 4) {
      err = readIpv4(data, len, f);
    } else if (version == 6) {
      err = readIpv6(data, len, f);
    } else {
      err = InvalidReason::kBadIpVersion;
    }
  }
  if (err != InvalidReason::kNone) return fail(err);
  const bool v6 = f.key.version == 6;
  // Bytes of this fragment that will be queued (an IPv4 non-last fragment may be trimmed).
  const size_t rawLen = f.end - f.offset;
  if (v6 && f.end > kMaxIpLen) return fail(InvalidReason::kFragment);

  auto it = m.datagrams.find(f.key);
  const size_t cost = rawLen + (f.offset == 0 ? f.headerLen : 0);
  if (m.bytesHeld + cost > m.limits.maxBytes) {
    ++counters_.overLimit;
    res.status = FragStatus::kInvalid;
    res.reason = InvalidReason::kFragment;
    return res;
  }
  if (it == m.datagrams.end()) {
    if (m.datagrams.size() >= m.limits.maxDatagrams) {
      ++counters_.overLimit;
      res.status = FragStatus::kInvalid;
      res.reason = InvalidReason::kFragment;
      return res;
    }
    it = m.datagrams.emplace(f.key, Impl::Datagram{}).first;
    it->second.expiry = m.byCreation.emplace(now, f.key);
  }
  Impl::Datagram& d = it->second;
  auto kill = [&]() {
    m.drop(it);
    return fail(InvalidReason::kFragment);
  };

  size_t end = f.end;
  if (!f.more) {
    // The last fragment fixes the length; anything contradicting it kills the datagram.
    if (end < d.len || (d.lastIn && end != d.len)) return kill();
    d.lastIn = true;
    d.len = end;
  } else {
    if (end & 7) {
      if (v6) return kill();
      end &= ~size_t{7};
    }
    if (end > d.len) {
      if (d.lastIn) return kill();
      d.len = end;
    }
  }
  if (end == f.offset) return kill();

  // Place the bytes. The tail case mirrors the kernel's fast path: appending to the last run.
  const size_t n = end - f.offset;
  if (d.runs.empty()) {
    d.runs.emplace(f.offset, std::vector<uint8_t>(f.payload, f.payload + n));
  } else {
    auto last = std::prev(d.runs.end());
    const size_t lastEnd = last->first + last->second.size();
    if (lastEnd < end) {
      if (f.offset < lastEnd) return kill();
      if (f.offset == lastEnd) {
        last->second.insert(last->second.end(), f.payload, f.payload + n);
      } else {
        d.runs.emplace(f.offset, std::vector<uint8_t>(f.payload, f.payload + n));
      }
    } else {
      // Runs are disjoint and sorted: the only run that can contain [offset, end) is the last
      // one starting at or before offset.
      auto after = d.runs.upper_bound(f.offset);
      if (after != d.runs.begin()) {
        auto before = std::prev(after);
        const size_t beforeEnd = before->first + before->second.size();
        if (f.offset < beforeEnd) {
          if (end <= beforeEnd) return res;  // duplicate: drop it, keep the datagram
          return kill();
        }
      }
      if (after != d.runs.end() && end > after->first) return kill();
      d.runs.emplace(f.offset, std::vector<uint8_t>(f.payload, f.payload + n));
    }
  }
  ++counters_.fragments;
  d.meat += n;
  d.bytes += n;
  m.bytesHeld += n;
  d.ecn = static_cast<uint8_t>(d.ecn | f.ecn);
  const size_t fragSize = f.headerLen + n;
  d.maxSize = std::max(d.maxSize, fragSize);
  if (f.df) d.maxDfSize = std::max(d.maxDfSize, fragSize);
  if (f.offset == 0 && !d.firstIn) {
    d.firstIn = true;
    d.header.assign(data, data + f.headerLen);
    d.prevNextHeader = f.prevNextHeader;
    d.nextHeader = f.nextHeader;
    d.bytes += f.headerLen;
    m.bytesHeld += f.headerLen;
  }

  if (!(d.firstIn && d.lastIn && d.meat == d.len)) return res;

  // Complete. Checks the kernel makes while gluing (ip_frag_reasm / nf_ct_frag6_reasm).
  const size_t hdrLen = d.header.size();
  const size_t total = hdrLen + d.len;
  const bool ecnBad = (d.ecn & kEcnNotEct) != 0 && d.ecn != kEcnNotEct;
  if (ecnBad || (v6 ? total - kIpv6Header : total) > kMaxIpLen) return kill();
  const bool ce = (d.ecn & kEcnCe) != 0;

  m.out.clear();
  m.out.reserve(total);
  m.out.insert(m.out.end(), d.header.begin(), d.header.end());
  for (const auto& [start, bytes] : d.runs) m.out.insert(m.out.end(), bytes.begin(), bytes.end());
  uint8_t* h = m.out.data();
  if (!v6) {
    store16(h + 2, total);
    const bool df = d.maxDfSize != 0 && d.maxDfSize == d.maxSize;
    store16(h + 6, df ? 0x4000 : 0);
    if (ce) h[1] = static_cast<uint8_t>(h[1] | 3);
    store16(h + 10, 0);
    store16(h + 10, ipv4HeaderChecksum(h, hdrLen));
  } else {
    h[d.prevNextHeader] = d.nextHeader;
    store16(h + 4, total - kIpv6Header);
    if (ce) h[1] = static_cast<uint8_t>(h[1] | 0x30);
  }
  m.drop(it);
  ++counters_.reassembled;
  res.status = FragStatus::kComplete;
  res.datagram = std::span<const uint8_t>(m.out.data(), m.out.size());
  return res;
}

}  // namespace ctsync::table
