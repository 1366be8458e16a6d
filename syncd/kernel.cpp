#include "syncd/kernel.hpp"
// (system headers after: the header under test puts <utility> before Asio)
#include <arpa/inet.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack_tcp.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "syncd/netlink.hpp"
#include "table/helpers.hpp"
#include "table/format.hpp"
#include "table/tcp.hpp"
#include "table/types.hpp"

// Facts about ctnetlink (Linux 6.x, net/netfilter/nf_conntrack_netlink.c) this file relies on:
// - A create (IPCTNL_MSG_CT_NEW with NLM_F_CREATE|NLM_F_EXCL) takes both tuples and CTA_TIMEOUT.
//   NAT is set up from CTA_NAT_SRC/CTA_NAT_DST against the reply tuple we pass: the kernel
//   rewrites the reply tuple and sets SRC_NAT/DST_NAT only when the mapping changes it, so the
//   reply tuple we send is the plain inverse of the original and NAT produces the real one.
// - Status: CONFIRMED is set before CTA_STATUS is applied and EXPECTED only afterwards (from
//   CTA_TUPLE_MASTER), and a status whose EXPECTED/CONFIRMED differ from the entry's is EBUSY;
//   SEEN_REPLY and ASSURED can be set but never cleared (EBUSY). libnetfilter_conntrack always
//   adds CONFIRMED.
// - Labels are attached after the entry is inserted and a failure there is ignored: without a
//   connlabel user in the namespace (an nft `ct label` rule, xt_connlabel) they are dropped.
// - An existing entry (EEXIST) cannot take NAT, master or a new helper (EOPNOTSUPP/EBUSY).
// - UPDATE events carry the TCP state only when it changed, labels only when they changed and
//   the master tuple never (only NEW does); the source completes such events with a GET.
// - With net.netfilter.nf_conntrack_events=2 (the default) an entry gets the event extension
//   only if some ctnetlink listener exists when it is created (anywhere on the host: the flag is
//   global, nf_ctnetlink_has_listener); one created while nobody listened never reports an
//   event, not even its DESTROY. The source sets the sysctl to 1 in its namespace; then it
//   can leave the event groups while stopped, which matters: with a listener every create of a
//   commit also builds and queues an event, and commits run at about half the rate. (If the
//   sysctl stays 2 the source stays subscribed, draining, while stopped.)

namespace ctsync::syncd {
namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using table::Addr;
using table::L3;
using table::Tuple;

constexpr uint32_t kEchoStatusMask = table::status::kExpected | table::status::kSeenReply |
                                     table::status::kAssured | table::status::kSrcNat |
                                     table::status::kDstNat;
// The TCP flags a replica may carry over; the rest describe window data we do not have.
constexpr uint8_t kCarriedTcpFlags = table::tcpflag::kWindowScale | table::tcpflag::kSackPerm |
                                     table::tcpflag::kCloseInit | table::tcpflag::kBeLiberal;
constexpr size_t kMaxMessageBytes = 2048;  // one ctnetlink message we build, with room to spare
constexpr size_t kRecvBufferBytes = 256 * 1024;
constexpr size_t kMaxErrorLines = 8;
constexpr auto kEchoLifetime = std::chrono::seconds(5);
constexpr auto kAnswerTimeout = std::chrono::seconds(10);

using netlink::errnoText;
using netlink::family;
using netlink::MnlPtr;
using netlink::NfctPtr;
using netlink::setBuffer;

bool hasPorts(uint8_t l4) {
  switch (l4) {
    case table::proto::kTcp:
    case table::proto::kUdp:
    case table::proto::kUdplite:
    case 33:   // DCCP
    case 47:   // GRE (keys travel as ports)
    case 132:  // SCTP
      return true;
    default:
      return false;
  }
}

constexpr uint8_t kDccp = 33;
constexpr uint8_t kSctp = 132;

bool isIcmp(uint8_t l4) {
  return l4 == table::proto::kIcmp || l4 == table::proto::kIcmpv6;
}

// NAT changes ports only for the trackers that have them (nf_nat_proto.c).
bool natHasPorts(uint8_t l4) {
  return hasPorts(l4) && l4 != 47;
}

// ---- address helpers ---------------------------------------------------------------------

Addr addrAttr(const nf_conntrack* ct, L3 l3, nf_conntrack_attr v4, nf_conntrack_attr v6) {
  Addr a;
  if (l3 == L3::kIpv4) {
    if (const void* p = nfct_get_attr(ct, v4)) std::memcpy(a.bytes.data(), p, 4);
  } else {
    if (const void* p = nfct_get_attr(ct, v6)) std::memcpy(a.bytes.data(), p, 16);
  }
  return a;
}

void setAddrAttr(nf_conntrack* ct, L3 l3, nf_conntrack_attr v4, nf_conntrack_attr v6,
                 const Addr& a) {
  if (l3 == L3::kIpv4) {
    uint32_t n;
    std::memcpy(&n, a.bytes.data(), 4);  // already network order
    nfct_set_attr_u32(ct, v4, n);
  } else {
    nfct_set_attr(ct, v6, a.bytes.data());
  }
}

uint16_t portAttr(const nf_conntrack* ct, nf_conntrack_attr attr) {
  return nfct_attr_is_set(ct, attr) ? ntohs(nfct_get_attr_u16(ct, attr)) : 0;
}

// The original tuple and zone only: what a delete or a GET needs.
void setKey(nf_conntrack* ct, const FlowKey& key) {
  const Tuple& t = key.orig;
  nfct_set_attr_u8(ct, ATTR_L3PROTO, static_cast<uint8_t>(family(t.l3)));
  nfct_set_attr_u8(ct, ATTR_L4PROTO, t.l4);
  setAddrAttr(ct, t.l3, ATTR_ORIG_IPV4_SRC, ATTR_ORIG_IPV6_SRC, t.src);
  setAddrAttr(ct, t.l3, ATTR_ORIG_IPV4_DST, ATTR_ORIG_IPV6_DST, t.dst);
  if (isIcmp(t.l4)) {
    // Type first: the library derives the reply type from it (and copies the id and code).
    nfct_set_attr_u8(ct, ATTR_ICMP_TYPE, t.icmpType());
    nfct_set_attr_u8(ct, ATTR_ICMP_CODE, t.icmpCode());
    nfct_set_attr_u16(ct, ATTR_ICMP_ID, htons(t.sport));
  } else if (hasPorts(t.l4)) {
    nfct_set_attr_u16(ct, ATTR_ORIG_PORT_SRC, htons(t.sport));
    nfct_set_attr_u16(ct, ATTR_ORIG_PORT_DST, htons(t.dport));
  }
  if (key.zone != 0) nfct_set_attr_u16(ct, ATTR_ZONE, key.zone);
}

// Appends CTA_TUPLE_REPLY (r.reply) and CTA_ZONE to `nlh`: a delete of whatever entry holds
// r.reply (ctnetlink looks an entry up by CTA_TUPLE_REPLY when no CTA_TUPLE_ORIG is given).
// Built by hand: libnetfilter_conntrack does not send a reply tuple alone (and an ICMP tuple
// always makes it add an original one too).
void putReplyKey(nlmsghdr* nlh, const FlowRecord& r) {
  const Tuple& t = r.reply;
  nlattr* tuple = mnl_attr_nest_start(nlh, CTA_TUPLE_REPLY);
  nlattr* ip = mnl_attr_nest_start(nlh, CTA_TUPLE_IP);
  if (t.l3 == L3::kIpv4) {
    uint32_t a;
    std::memcpy(&a, t.src.bytes.data(), 4);
    mnl_attr_put_u32(nlh, CTA_IP_V4_SRC, a);
    std::memcpy(&a, t.dst.bytes.data(), 4);
    mnl_attr_put_u32(nlh, CTA_IP_V4_DST, a);
  } else {
    mnl_attr_put(nlh, CTA_IP_V6_SRC, 16, t.src.bytes.data());
    mnl_attr_put(nlh, CTA_IP_V6_DST, 16, t.dst.bytes.data());
  }
  mnl_attr_nest_end(nlh, ip);
  nlattr* proto = mnl_attr_nest_start(nlh, CTA_TUPLE_PROTO);
  mnl_attr_put_u8(nlh, CTA_PROTO_NUM, t.l4);
  if (isIcmp(t.l4)) {
    const bool v4 = t.l4 == table::proto::kIcmp;
    mnl_attr_put_u16(nlh, v4 ? CTA_PROTO_ICMP_ID : CTA_PROTO_ICMPV6_ID, htons(t.sport));
    mnl_attr_put_u8(nlh, v4 ? CTA_PROTO_ICMP_TYPE : CTA_PROTO_ICMPV6_TYPE, t.icmpType());
    mnl_attr_put_u8(nlh, v4 ? CTA_PROTO_ICMP_CODE : CTA_PROTO_ICMPV6_CODE, t.icmpCode());
  } else if (hasPorts(t.l4)) {
    mnl_attr_put_u16(nlh, CTA_PROTO_SRC_PORT, htons(t.sport));
    mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, htons(t.dport));
  }
  mnl_attr_nest_end(nlh, proto);
  if (r.key.zone != 0) mnl_attr_put_u16(nlh, CTA_TUPLE_ZONE, htons(r.key.zone));
  mnl_attr_nest_end(nlh, tuple);
  if (r.key.zone != 0) mnl_attr_put_u16(nlh, CTA_ZONE, htons(r.key.zone));
}

// Which NAT a create sets up for r (see toKernel). ICMP NAT keeps one id for both directions
// (the tuple's src.u.icmp.id) and may remap it: a NAT range with min = max = the reply's id
// (NF_NAT_RANGE_PROTO_SPECIFIED) makes the kernel pick exactly it; an id change alone is an SNAT
// to the same address.
struct NatSides {
  bool snat = false;
  bool dnat = false;
  bool icmpId = false;  // pin the reply's ICMP id on the SNAT side (or DNAT if only that)
};

NatSides natSides(const FlowRecord& r) {
  const Tuple& o = r.key.orig;
  const Tuple& rp = r.reply;
  const bool ports = natHasPorts(o.l4);
  NatSides n;
  n.icmpId = isIcmp(o.l4) && rp.sport != o.sport;
  n.snat = (r.status & table::status::kSrcNat) != 0 || !(rp.dst == o.src) ||
           (ports && rp.dport != o.sport);
  n.dnat = (r.status & table::status::kDstNat) != 0 || !(rp.src == o.dst) ||
           (ports && rp.sport != o.dport);
  if (n.icmpId && !n.dnat) n.snat = true;
  return n;
}

// For a create of an ICMP flow whose reply id differs from the original's: takes the NAT side
// that carries the id out of `ct` (before nfct_nlmsg_build) and returns a function that appends
// it, with the id range, to the built message. Nothing to do otherwise (empty function).
std::function<void(nlmsghdr*)> takeIcmpNat(const FlowRecord& r, nf_conntrack* ct) {
  const NatSides n = natSides(r);
  if (!n.icmpId) return {};
  const Tuple& o = r.key.orig;
  const bool src = n.snat;
  const Addr addr = src ? r.reply.dst : r.reply.src;
  const uint16_t id = htons(r.reply.sport);
  const L3 l3 = o.l3;
  if (src) {
    nfct_attr_unset(ct, l3 == L3::kIpv4 ? ATTR_SNAT_IPV4 : ATTR_SNAT_IPV6);
  } else {
    nfct_attr_unset(ct, l3 == L3::kIpv4 ? ATTR_DNAT_IPV4 : ATTR_DNAT_IPV6);
  }
  return [=](nlmsghdr* nlh) {
    nlattr* nest = mnl_attr_nest_start(nlh, src ? CTA_NAT_SRC : CTA_NAT_DST);
    if (l3 == L3::kIpv4) {
      uint32_t a;
      std::memcpy(&a, addr.bytes.data(), 4);
      mnl_attr_put_u32(nlh, CTA_NAT_V4_MINIP, a);
      mnl_attr_put_u32(nlh, CTA_NAT_V4_MAXIP, a);
    } else {
      mnl_attr_put(nlh, CTA_NAT_V6_MINIP, 16, addr.bytes.data());
      mnl_attr_put(nlh, CTA_NAT_V6_MAXIP, 16, addr.bytes.data());
    }
    nlattr* proto = mnl_attr_nest_start(nlh, CTA_NAT_PROTO);
    mnl_attr_put_u16(nlh, CTA_PROTONAT_PORT_MIN, id);
    mnl_attr_put_u16(nlh, CTA_PROTONAT_PORT_MAX, id);
    mnl_attr_nest_end(nlh, proto);
    mnl_attr_nest_end(nlh, nest);
  };
}

// The reply tuple's ICMP id in a ctnetlink entry message (network order), if it has one.
// The first attribute of type `type` in [first, first + len), or null.
const nlattr* findAttr(const void* first, int len, uint16_t type) {
  for (auto* a = static_cast<const nlattr*>(first); mnl_attr_ok(a, len); a = mnl_attr_next(a)) {
    // mnl_attr_next does not shrink len: do it here.
    if (mnl_attr_get_type(a) == type) return a;
    len -= static_cast<int>(MNL_ALIGN(a->nla_len));
  }
  return nullptr;
}

const nlattr* findNested(const nlattr* nest, uint16_t type) {
  return findAttr(mnl_attr_get_payload(nest), static_cast<int>(mnl_attr_get_payload_len(nest)),
                  type);
}

std::optional<uint16_t> replyIcmpId(const nlmsghdr* m) {
  if (m->nlmsg_len < MNL_NLMSG_HDRLEN + MNL_ALIGN(sizeof(nfgenmsg))) return std::nullopt;
  const auto* first = static_cast<const char*>(mnl_nlmsg_get_payload_offset(m, sizeof(nfgenmsg)));
  const int len = static_cast<int>(reinterpret_cast<const char*>(m) + m->nlmsg_len - first);
  const nlattr* reply = findAttr(first, len, CTA_TUPLE_REPLY);
  if (reply == nullptr) return std::nullopt;
  const nlattr* protoAttr = findNested(reply, CTA_TUPLE_PROTO);
  if (protoAttr == nullptr) return std::nullopt;
  for (uint16_t type : {uint16_t{CTA_PROTO_ICMP_ID}, uint16_t{CTA_PROTO_ICMPV6_ID}}) {
    const nlattr* a = findNested(protoAttr, type);
    if (a != nullptr && mnl_attr_get_payload_len(a) >= sizeof(uint16_t)) return mnl_attr_get_u16(a);
  }
  return std::nullopt;
}

bool inPrefix(const Addr& a, const Addr& prefix, uint8_t bits) {
  const size_t whole = bits / 8;
  if (std::memcmp(a.bytes.data(), prefix.bytes.data(), whole) != 0) return false;
  const unsigned rest = bits % 8;
  if (rest == 0) return true;
  const auto mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a.bytes[whole] & mask) == (prefix.bytes[whole] & mask);
}

// "tcp 10.0.0.1:1234 -> 10.0.0.2:80", "icmp 10.0.0.1 -> 10.0.0.2 type 8 code 0 id 7".
std::string describe(const FlowKey& key) {
  const Tuple& t = key.orig;
  auto endpoint = [&](const Addr& a, uint16_t port) {
    std::string s = table::formatAddr(t.l3, a);
    if (t.l3 == L3::kIpv6 && hasPorts(t.l4)) s = "[" + s + "]";
    if (hasPorts(t.l4)) s += ":" + std::to_string(port);
    return s;
  };
  std::string out = std::string(table::l4ProtoName(t.l4)) + " " + endpoint(t.src, t.sport) +
                    " -> " + endpoint(t.dst, t.dport);
  if (isIcmp(t.l4)) {
    out += " type " + std::to_string(t.icmpType()) + " code " + std::to_string(t.icmpCode()) +
           " id " + std::to_string(t.sport);
  }
  if (key.zone != 0) out += " zone " + std::to_string(key.zone);
  return out;
}

// ---- netlink plumbing ----------------------------------------------------------------------

// A ctnetlink (flows) request header at `buf`.
nlmsghdr* putHeader(void* buf, uint8_t msgType, uint16_t flags, uint32_t seq, uint8_t family) {
  return netlink::putHeader(buf, NFNL_SUBSYS_CTNETLINK, msgType, flags, seq, family);
}

std::variant<MnlPtr, std::string> openNetlink(unsigned groups, const char* what) {
  return netlink::open(groups, what);
}

// The answer of one request (GET): a parsed entry, ENOENT, or another error.
struct GetAnswer {
  NfctPtr ct;
  std::optional<FlowRecord> record;  // of ct, with what only the message says (ICMP reply id)
  int error = 0;
};

class Requester {
 public:
  explicit Requester(mnl_socket* nl) : nl_(nl), buf_(kRecvBufferBytes) {}

  // Sends one GET for `key` and waits for the entry or the error.
  GetAnswer get(const FlowKey& key) {
    std::array<char, kMaxMessageBytes> msg{};
    const uint32_t seq = ++seq_;
    nlmsghdr* nlh = putHeader(msg.data(), IPCTNL_MSG_CT_GET, NLM_F_ACK, seq,
                              static_cast<uint8_t>(family(key.orig.l3)));
    NfctPtr q(nfct_new());
    setKey(q.get(), key);
    nfct_nlmsg_build(nlh, q.get());
    GetAnswer out;
    if (mnl_socket_sendto(nl_, nlh, nlh->nlmsg_len) < 0) {
      out.error = errno;
      return out;
    }
    bool done = false;
    while (!done) {
      const ssize_t n = mnl_socket_recvfrom(nl_, buf_.data(), buf_.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        out.error = errno;
        return out;
      }
      int len = static_cast<int>(n);
      for (auto* m = reinterpret_cast<const nlmsghdr*>(buf_.data()); mnl_nlmsg_ok(m, len);
           m = mnl_nlmsg_next(m, &len)) {
        if (m->nlmsg_seq != seq) continue;  // a late answer to an abandoned request
        if (m->nlmsg_type == NLMSG_ERROR) {
          const auto* e = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(m));
          if (e->error != 0) out.error = -e->error;
          done = true;  // the ack (or error) comes last
        } else if (m->nlmsg_type == NLMSG_DONE) {
          done = true;
        } else if ((m->nlmsg_type >> 8) == NFNL_SUBSYS_CTNETLINK) {
          out.ct.reset(nfct_new());
          nfct_nlmsg_parse(m, out.ct.get());
          out.record = fromKernel(out.ct.get(), m);
        }
      }
    }
    if (!out.ct && out.error == 0) out.error = ENOENT;
    return out;
  }

  uint32_t nextSeq() { return ++seq_; }
  // Numbers [nextSeq(), nextSeq() + n) were used by a batch.
  void advance(uint32_t n) { seq_ += n; }
  std::vector<char>& buffer() { return buf_; }

 private:
  mnl_socket* nl_;
  std::vector<char> buf_;
  uint32_t seq_ = static_cast<uint32_t>(::time(nullptr));
};

enum class DumpStep : uint8_t {
  kNext,      // deliver the next entry
  kSkipRest,  // deliver no more, but read the rest off the socket so the next request starts clean
  kAbort,     // return at once: the socket (and its owner) may be gone
};

// Runs a dump request on `nl` and calls `onEntry` for every entry message, in order. Returns 0
// or an errno.
template <typename F>
int runDump(mnl_socket* nl, Requester& req, F&& onEntry) {
  std::array<char, 64> msg{};
  const uint32_t seq = req.nextSeq();
  nlmsghdr* nlh = putHeader(msg.data(), IPCTNL_MSG_CT_GET, NLM_F_DUMP, seq, AF_UNSPEC);
  if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) return errno;
  std::vector<char>& buf = req.buffer();
  bool delivering = true;
  for (;;) {
    const ssize_t n = mnl_socket_recvfrom(nl, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    int len = static_cast<int>(n);
    for (auto* m = reinterpret_cast<const nlmsghdr*>(buf.data()); mnl_nlmsg_ok(m, len);
         m = mnl_nlmsg_next(m, &len)) {
      if (m->nlmsg_seq != seq) continue;
      if (m->nlmsg_type == NLMSG_DONE) return 0;
      if (m->nlmsg_type == NLMSG_ERROR) {
        const auto* e = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(m));
        return e->error == 0 ? 0 : -e->error;
      }
      if (!delivering) continue;
      const DumpStep step = onEntry(m);
      if (step == DumpStep::kAbort) return 0;
      delivering = step == DumpStep::kNext;
    }
  }
}

// Parses one ctnetlink entry message into a fresh object.
NfctPtr parseEntry(const nlmsghdr* m) {
  NfctPtr ct(nfct_new());
  if (ct && nfct_nlmsg_parse(m, ct.get()) < 0) ct.reset();
  return ct;
}

}  // namespace

std::optional<Tuple> origTupleFromKernel(const nf_conntrack* ct) {
  if (!nfct_attr_is_set(ct, ATTR_ORIG_L3PROTO)) return std::nullopt;
  Tuple o;
  switch (nfct_get_attr_u8(ct, ATTR_ORIG_L3PROTO)) {
    case AF_INET:
      o.l3 = L3::kIpv4;
      break;
    case AF_INET6:
      o.l3 = L3::kIpv6;
      break;
    default:
      return std::nullopt;
  }
  o.l4 = nfct_get_attr_u8(ct, ATTR_ORIG_L4PROTO);
  o.src = addrAttr(ct, o.l3, ATTR_ORIG_IPV4_SRC, ATTR_ORIG_IPV6_SRC);
  o.dst = addrAttr(ct, o.l3, ATTR_ORIG_IPV4_DST, ATTR_ORIG_IPV6_DST);
  if (isIcmp(o.l4)) {
    o.sport = portAttr(ct, ATTR_ICMP_ID);
    o.dport = static_cast<uint16_t>((nfct_get_attr_u8(ct, ATTR_ICMP_TYPE) << 8) |
                                    nfct_get_attr_u8(ct, ATTR_ICMP_CODE));
  } else {
    o.sport = portAttr(ct, ATTR_ORIG_PORT_SRC);
    o.dport = portAttr(ct, ATTR_ORIG_PORT_DST);
  }
  return o;
}

void keyToKernel(const FlowKey& key, nf_conntrack* ct) {
  setKey(ct, key);
}

std::string describeFlow(const FlowKey& key) {
  return describe(key);
}

std::optional<FlowRecord> fromKernel(const nf_conntrack* ct, const nlmsghdr* msg) {
  std::optional<FlowRecord> r = fromKernel(ct);
  if (r && isIcmp(r->key.orig.l4) && msg != nullptr) {
    if (const std::optional<uint16_t> id = replyIcmpId(msg)) r->reply.sport = ntohs(*id);
  }
  return r;
}

namespace {
// A parsed record of an entry message, or empty (unparsable).
std::optional<FlowRecord> parseRecord(const nlmsghdr* m) {
  NfctPtr ct = parseEntry(m);
  return ct ? fromKernel(ct.get(), m) : std::nullopt;
}
}  // namespace

// ---- conversion --------------------------------------------------------------------------

std::optional<FlowRecord> fromKernel(const nf_conntrack* ct) {
  if (!nfct_attr_is_set(ct, ATTR_ORIG_L3PROTO) || !nfct_attr_is_set(ct, ATTR_ORIG_L4PROTO)) {
    return std::nullopt;
  }
  L3 l3;
  switch (nfct_get_attr_u8(ct, ATTR_ORIG_L3PROTO)) {
    case AF_INET:
      l3 = L3::kIpv4;
      if (!nfct_attr_is_set(ct, ATTR_ORIG_IPV4_SRC) || !nfct_attr_is_set(ct, ATTR_REPL_IPV4_SRC)) {
        return std::nullopt;
      }
      break;
    case AF_INET6:
      l3 = L3::kIpv6;
      if (!nfct_attr_is_set(ct, ATTR_ORIG_IPV6_SRC) || !nfct_attr_is_set(ct, ATTR_REPL_IPV6_SRC)) {
        return std::nullopt;
      }
      break;
    default:
      return std::nullopt;
  }
  FlowRecord r;
  Tuple& o = r.key.orig;
  o.l3 = l3;
  o.l4 = nfct_get_attr_u8(ct, ATTR_ORIG_L4PROTO);
  o.src = addrAttr(ct, l3, ATTR_ORIG_IPV4_SRC, ATTR_ORIG_IPV6_SRC);
  o.dst = addrAttr(ct, l3, ATTR_ORIG_IPV4_DST, ATTR_ORIG_IPV6_DST);
  if (isIcmp(o.l4)) {
    o.sport = portAttr(ct, ATTR_ICMP_ID);
    o.dport = static_cast<uint16_t>((nfct_get_attr_u8(ct, ATTR_ICMP_TYPE) << 8) |
                                    nfct_get_attr_u8(ct, ATTR_ICMP_CODE));
  } else {
    o.sport = portAttr(ct, ATTR_ORIG_PORT_SRC);
    o.dport = portAttr(ct, ATTR_ORIG_PORT_DST);
  }
  if (nfct_attr_is_set(ct, ATTR_ZONE)) {
    r.key.zone = nfct_get_attr_u16(ct, ATTR_ZONE);
  } else if (nfct_attr_is_set(ct, ATTR_ORIG_ZONE)) {
    r.key.zone = nfct_get_attr_u16(ct, ATTR_ORIG_ZONE);
  }

  Tuple& rp = r.reply;
  if (isIcmp(o.l4)) {
    // The library keeps the reply's ICMP id and type but has no getter for them: derive them
    // (the kernel inverts the type and keeps the id unless NAT changed it: the overload with
    // the message reads the real id).
    rp = table::invertTuple(o).value_or(o);
  } else {
    rp.l3 = l3;
    rp.l4 = o.l4;
    rp.sport = portAttr(ct, ATTR_REPL_PORT_SRC);
    rp.dport = portAttr(ct, ATTR_REPL_PORT_DST);
  }
  rp.src = addrAttr(ct, l3, ATTR_REPL_IPV4_SRC, ATTR_REPL_IPV6_SRC);
  rp.dst = addrAttr(ct, l3, ATTR_REPL_IPV4_DST, ATTR_REPL_IPV6_DST);

  if (nfct_attr_is_set(ct, ATTR_STATUS)) {
    r.status = nfct_get_attr_u32(ct, ATTR_STATUS) & ~table::status::kHasLabels;
  }
  if (o.l4 == table::proto::kTcp) {
    if (nfct_attr_is_set(ct, ATTR_TCP_STATE)) r.tcpState = nfct_get_attr_u8(ct, ATTR_TCP_STATE);
    if (nfct_attr_is_set(ct, ATTR_TCP_FLAGS_ORIG)) {
      r.tcpFlags[0] = nfct_get_attr_u8(ct, ATTR_TCP_FLAGS_ORIG);
    }
    if (nfct_attr_is_set(ct, ATTR_TCP_FLAGS_REPL)) {
      r.tcpFlags[1] = nfct_get_attr_u8(ct, ATTR_TCP_FLAGS_REPL);
    }
    if (nfct_attr_is_set(ct, ATTR_TCP_WSCALE_ORIG)) {
      r.tcpScale[0] = nfct_get_attr_u8(ct, ATTR_TCP_WSCALE_ORIG);
    }
    if (nfct_attr_is_set(ct, ATTR_TCP_WSCALE_REPL)) {
      r.tcpScale[1] = nfct_get_attr_u8(ct, ATTR_TCP_WSCALE_REPL);
    }
  }
  if (nfct_attr_is_set(ct, ATTR_TIMEOUT)) r.timeoutSec = nfct_get_attr_u32(ct, ATTR_TIMEOUT);
  if (nfct_attr_is_set(ct, ATTR_MARK)) r.mark = nfct_get_attr_u32(ct, ATTR_MARK);
  if (const auto* b = static_cast<const nfct_bitmask*>(nfct_get_attr(ct, ATTR_CONNLABELS))) {
    const unsigned maxbit = std::min(nfct_bitmask_maxbit(b), 127u);
    for (unsigned bit = 0; bit <= maxbit; ++bit) {
      if (nfct_bitmask_test_bit(b, bit)) {
        r.labels[bit / 8] = static_cast<uint8_t>(r.labels[bit / 8] | (1u << (bit % 8)));
      }
    }
  }
  if (const auto* name = static_cast<const char*>(nfct_get_attr(ct, ATTR_HELPER_NAME))) {
    // A name outside the kernel's own helpers (a userspace helper) travels without it.
    r.helper = table::helperCode(name).value_or(0);
  }
  if (nfct_attr_is_set(ct, ATTR_ORIG_NAT_SEQ_CORRECTION_POS)) {
    r.seqAdj[0] = {nfct_get_attr_u32(ct, ATTR_ORIG_NAT_SEQ_CORRECTION_POS),
                   static_cast<int32_t>(nfct_get_attr_u32(ct, ATTR_ORIG_NAT_SEQ_OFFSET_BEFORE)),
                   static_cast<int32_t>(nfct_get_attr_u32(ct, ATTR_ORIG_NAT_SEQ_OFFSET_AFTER))};
  }
  if (nfct_attr_is_set(ct, ATTR_REPL_NAT_SEQ_CORRECTION_POS)) {
    r.seqAdj[1] = {nfct_get_attr_u32(ct, ATTR_REPL_NAT_SEQ_CORRECTION_POS),
                   static_cast<int32_t>(nfct_get_attr_u32(ct, ATTR_REPL_NAT_SEQ_OFFSET_BEFORE)),
                   static_cast<int32_t>(nfct_get_attr_u32(ct, ATTR_REPL_NAT_SEQ_OFFSET_AFTER))};
  }
  if (o.l4 == kSctp) {
    if (nfct_attr_is_set(ct, ATTR_SCTP_STATE)) r.sctpState = nfct_get_attr_u8(ct, ATTR_SCTP_STATE);
    if (nfct_attr_is_set(ct, ATTR_SCTP_VTAG_ORIG)) {
      r.sctpVtag[0] = nfct_get_attr_u32(ct, ATTR_SCTP_VTAG_ORIG);
    }
    if (nfct_attr_is_set(ct, ATTR_SCTP_VTAG_REPL)) {
      r.sctpVtag[1] = nfct_get_attr_u32(ct, ATTR_SCTP_VTAG_REPL);
    }
  }
  if (o.l4 == kDccp) {
    if (nfct_attr_is_set(ct, ATTR_DCCP_STATE)) r.dccpState = nfct_get_attr_u8(ct, ATTR_DCCP_STATE);
    if (nfct_attr_is_set(ct, ATTR_DCCP_ROLE)) r.dccpRole = nfct_get_attr_u8(ct, ATTR_DCCP_ROLE);
    if (nfct_attr_is_set(ct, ATTR_DCCP_HANDSHAKE_SEQ)) {
      r.dccpHandshakeSeq = nfct_get_attr_u64(ct, ATTR_DCCP_HANDSHAKE_SEQ);
    }
  }
  if (nfct_attr_is_set(ct, ATTR_MASTER_L3PROTO)) {
    Tuple m;
    m.l3 = l3;
    m.l4 = nfct_get_attr_u8(ct, ATTR_MASTER_L4PROTO);
    m.src = addrAttr(ct, l3, ATTR_MASTER_IPV4_SRC, ATTR_MASTER_IPV6_SRC);
    m.dst = addrAttr(ct, l3, ATTR_MASTER_IPV4_DST, ATTR_MASTER_IPV6_DST);
    m.sport = portAttr(ct, ATTR_MASTER_PORT_SRC);
    m.dport = portAttr(ct, ATTR_MASTER_PORT_DST);
    r.master = m;
  }
  return r;
}

void toKernel(const FlowRecord& r, uint32_t timeoutSec, nf_conntrack* ct, bool forUpdate) {
  const Tuple& o = r.key.orig;
  setKey(ct, r.key);
  nfct_set_attr_u32(ct, ATTR_TIMEOUT, std::max<uint32_t>(timeoutSec, 1));
  if (r.mark != 0 || forUpdate) nfct_set_attr_u32(ct, ATTR_MARK, r.mark);

  // CONFIRMED is added by the library; EXPECTED must equal the entry's (see the top of the
  // file): absent on create (the master sets it), present on an update of a related flow.
  uint32_t status = r.status & (table::status::kSeenReply | table::status::kAssured);
  if (forUpdate && r.master) status |= table::status::kExpected;
  if (!forUpdate && r.helper != 0) status |= 1u << 13;  // IPS_HELPER: no auto-assignment
  nfct_set_attr_u32(ct, ATTR_STATUS, status);

  if (o.l4 == table::proto::kTcp) {
    nfct_set_attr_u8(ct, ATTR_TCP_STATE, r.tcpState);
    const nf_conntrack_attr flags[2] = {ATTR_TCP_FLAGS_ORIG, ATTR_TCP_FLAGS_REPL};
    const nf_conntrack_attr masks[2] = {ATTR_TCP_MASK_ORIG, ATTR_TCP_MASK_REPL};
    const nf_conntrack_attr scales[2] = {ATTR_TCP_WSCALE_ORIG, ATTR_TCP_WSCALE_REPL};
    for (int d = 0; d < 2; ++d) {
      nfct_set_attr_u8(
          ct, flags[d],
          static_cast<uint8_t>((r.tcpFlags[d] & kCarriedTcpFlags) | table::tcpflag::kBeLiberal));
      nfct_set_attr_u8(ct, masks[d], kCarriedTcpFlags);
      nfct_set_attr_u8(ct, scales[d], r.tcpScale[d]);
    }
  }

  // The state of the other trackers with one (nf_conntrack_proto_sctp.c / _dccp.c from_nlattr);
  // the kernel takes it on create and on update.
  if (o.l4 == kSctp) {
    nfct_set_attr_u8(ct, ATTR_SCTP_STATE, r.sctpState);
    nfct_set_attr_u32(ct, ATTR_SCTP_VTAG_ORIG, r.sctpVtag[0]);
    nfct_set_attr_u32(ct, ATTR_SCTP_VTAG_REPL, r.sctpVtag[1]);
  }
  if (o.l4 == kDccp) {
    nfct_set_attr_u8(ct, ATTR_DCCP_STATE, r.dccpState);
    nfct_set_attr_u8(ct, ATTR_DCCP_ROLE, r.dccpRole);
    nfct_set_attr_u64(ct, ATTR_DCCP_HANDSHAKE_SEQ, r.dccpHandshakeSeq);
  }
  // A helper that changed a payload's length left offsets that every later segment needs
  // (without them the peers see sequence numbers off by the difference and the flow stalls).
  // ctnetlink sets SEQ_ADJUST itself when it takes them, on create and on update.
  if ((r.status & table::status::kSeqAdjust) != 0) {
    const nf_conntrack_attr pos[2] = {ATTR_ORIG_NAT_SEQ_CORRECTION_POS,
                                      ATTR_REPL_NAT_SEQ_CORRECTION_POS};
    const nf_conntrack_attr before[2] = {ATTR_ORIG_NAT_SEQ_OFFSET_BEFORE,
                                         ATTR_REPL_NAT_SEQ_OFFSET_BEFORE};
    const nf_conntrack_attr after[2] = {ATTR_ORIG_NAT_SEQ_OFFSET_AFTER,
                                        ATTR_REPL_NAT_SEQ_OFFSET_AFTER};
    for (int d = 0; d < 2; ++d) {
      nfct_set_attr_u32(ct, pos[d], r.seqAdj[d].correctionPos);
      nfct_set_attr_u32(ct, before[d], static_cast<uint32_t>(r.seqAdj[d].offsetBefore));
      nfct_set_attr_u32(ct, after[d], static_cast<uint32_t>(r.seqAdj[d].offsetAfter));
    }
  }

  const bool anyLabel =
      std::any_of(r.labels.begin(), r.labels.end(), [](uint8_t b) { return b != 0; });
  if (anyLabel) {
    nfct_bitmask* b = nfct_bitmask_new(127);
    for (unsigned bit = 0; bit < 128; ++bit) {
      if (r.labels[bit / 8] & (1u << (bit % 8))) nfct_bitmask_set_bit(b, bit);
    }
    nfct_set_attr(ct, ATTR_CONNLABELS, b);  // the object owns it from here
  }
  if (forUpdate) return;

  // The reply tuple is the inverse of the original; NAT below turns it into r.reply.
  nfct_set_attr_u8(ct, ATTR_REPL_L3PROTO, static_cast<uint8_t>(family(o.l3)));
  nfct_set_attr_u8(ct, ATTR_REPL_L4PROTO, o.l4);
  setAddrAttr(ct, o.l3, ATTR_REPL_IPV4_SRC, ATTR_REPL_IPV6_SRC, o.dst);
  setAddrAttr(ct, o.l3, ATTR_REPL_IPV4_DST, ATTR_REPL_IPV6_DST, o.src);
  if (hasPorts(o.l4) && !isIcmp(o.l4)) {
    nfct_set_attr_u16(ct, ATTR_REPL_PORT_SRC, htons(o.dport));
    nfct_set_attr_u16(ct, ATTR_REPL_PORT_DST, htons(o.sport));
  }  // ICMP: setKey's type/id setters filled in the reply side

  const Tuple& rp = r.reply;
  const bool ports = natHasPorts(o.l4);
  const NatSides nat = natSides(r);
  if (nat.snat) {
    setAddrAttr(ct, o.l3, ATTR_SNAT_IPV4, ATTR_SNAT_IPV6, rp.dst);
    if (ports) nfct_set_attr_u16(ct, ATTR_SNAT_PORT, htons(rp.dport));
  }
  if (nat.dnat) {
    setAddrAttr(ct, o.l3, ATTR_DNAT_IPV4, ATTR_DNAT_IPV6, rp.src);
    if (ports) nfct_set_attr_u16(ct, ATTR_DNAT_PORT, htons(rp.sport));
  }
  // ICMP id pin: libnetfilter_conntrack builds CTA_NAT_PROTO for TCP and UDP only, so
  // appendIcmpNat() adds that NAT attribute to the message (the sink calls it).

  if (const std::string_view name = table::helperName(r.helper); !name.empty()) {
    nfct_set_attr(ct, ATTR_HELPER_NAME, name.data());  // the list's names are NUL-terminated
  }

  if (r.master) {
    const Tuple& m = *r.master;
    nfct_set_attr_u8(ct, ATTR_MASTER_L3PROTO, static_cast<uint8_t>(family(m.l3)));
    nfct_set_attr_u8(ct, ATTR_MASTER_L4PROTO, m.l4);
    setAddrAttr(ct, m.l3, ATTR_MASTER_IPV4_SRC, ATTR_MASTER_IPV6_SRC, m.src);
    setAddrAttr(ct, m.l3, ATTR_MASTER_IPV4_DST, ATTR_MASTER_IPV6_DST, m.dst);
    if (hasPorts(m.l4)) {
      nfct_set_attr_u16(ct, ATTR_MASTER_PORT_SRC, htons(m.sport));
      nfct_set_attr_u16(ct, ATTR_MASTER_PORT_DST, htons(m.dport));
    }
  }
}

// ---- filter ------------------------------------------------------------------------------

std::variant<KernelFilter, std::string> KernelFilter::make(const conf::KernelSettings& settings) {
  KernelFilter f;
  f.protocols_ = settings.protocols;
  f.tcpStates_ = settings.tcpStates;
  for (const std::string& cidr : settings.ignoreAddresses) {
    const size_t slash = cidr.find('/');
    const std::string addr = cidr.substr(0, slash);
    Prefix p{};
    int maxBits;
    if (::inet_pton(AF_INET, addr.c_str(), p.addr.bytes.data()) == 1) {
      p.l3 = L3::kIpv4;
      maxBits = 32;
    } else if (::inet_pton(AF_INET6, addr.c_str(), p.addr.bytes.data()) == 1) {
      p.l3 = L3::kIpv6;
      maxBits = 128;
    } else {
      return "ignore_addresses: '" + cidr + "' is not an address or CIDR";
    }
    int bits = maxBits;
    if (slash != std::string::npos) {
      const std::string len = cidr.substr(slash + 1);
      char* end = nullptr;
      const long v = std::strtol(len.c_str(), &end, 10);
      if (len.empty() || *end != '\0' || v < 0 || v > maxBits) {
        return "ignore_addresses: '" + cidr + "' has a bad prefix length";
      }
      bits = static_cast<int>(v);
    }
    p.bits = static_cast<uint8_t>(bits);
    f.ignored_.push_back(p);
  }
  return f;
}

bool KernelFilter::accepts(const FlowRecord& r) const {
  if (!acceptsIdentity(r)) return false;
  if (r.key.orig.l4 == table::proto::kTcp && !tcpStates_.empty() &&
      std::find(tcpStates_.begin(), tcpStates_.end(), r.tcpState) == tcpStates_.end()) {
    return false;
  }
  return true;
}

bool KernelFilter::acceptsIdentity(const FlowRecord& r) const {
  const Tuple& o = r.key.orig;
  if (!protocols_.empty() &&
      std::find(protocols_.begin(), protocols_.end(), o.l4) == protocols_.end()) {
    return false;
  }
  for (const Prefix& p : ignored_) {
    if (p.l3 != o.l3) continue;
    for (const Addr* a : {&o.src, &o.dst, &r.reply.src, &r.reply.dst}) {
      if (inPrefix(*a, p.addr, p.bits)) return false;
    }
  }
  return true;
}

// ---- source ------------------------------------------------------------------------------

struct KernelSource::Impl {
  Impl(asio::io_context& context, KernelFilter f, Callbacks c, MnlPtr ev, MnlPtr dumps, int waitFd,
       int dumpWaitFd)
      : io(context),
        filter(std::move(f)),
        cb(std::move(c)),
        events(std::move(ev)),
        dumpSock(std::move(dumps)),
        requester(dumpSock.get()),
        waiter(context, waitFd),
        dumpWaiter(context, dumpWaitFd),
        recvBufs(kBatchDatagrams, std::vector<char>(kDatagramBytes)) {}

  ~Impl() {
    alive.reset();  // a pending wait or posted handler sees this and does nothing
    if (destroyedFlag != nullptr) *destroyedFlag = true;
    boost::system::error_code ec;
    waiter.close(ec);  // the dup'ed descriptors; the mnl sockets close their own
    dumpWaiter.close(ec);
  }

  // Callbacks run inside a Delivery. A callback may stop, resync or even destroy the source:
  // `destroyed` tells the code below it to return at once without touching the object.
  struct Delivery {
    explicit Delivery(Impl* i) : impl(i), prev(i->destroyedFlag) {
      impl->destroyedFlag = &destroyed;
      ++impl->depth;
    }
    ~Delivery() {
      if (destroyed) {
        if (prev != nullptr) *prev = true;
        return;
      }
      impl->destroyedFlag = prev;
      --impl->depth;
    }
    Delivery(const Delivery&) = delete;
    Delivery& operator=(const Delivery&) = delete;
    Impl* impl;
    bool* prev;
    bool destroyed = false;
  };

  struct Echo {
    uint32_t status;
    uint8_t tcpState;
    uint32_t mark;
    Tuple reply;
    Clock::time_point expires;
  };

  static constexpr size_t kBatchDatagrams = 32;
  static constexpr size_t kDatagramBytes = 16 * 1024;
  static constexpr size_t kDatagramsPerWakeup = 8192;

  static constexpr size_t kDumpMessagesPerSlice = 2000;
  static constexpr auto kDumpSliceTime = std::chrono::milliseconds(5);

  // Starts the dump asked for, if one is and none runs. Returns false if a callback destroyed
  // the source.
  [[nodiscard]] bool runPendingDumps() {
    while (dumpPending && running && depth == 0 && !dump.active) {
      dumpPending = false;
      drainEvents();
      if (!beginDump()) return false;
    }
    return true;
  }

  void requestDump() {
    dumpPending = true;
    if (depth == 0) (void)runPendingDumps();  // nothing to do after it either way
  }

  // Throws away what the event socket holds: a dump that starts after it supersedes all of it.
  // Bounded by twice the receive buffer, so events older than an overrun cannot survive it.
  void drainEvents() {
    int rcvbuf = 0;
    socklen_t len = sizeof rcvbuf;
    ::getsockopt(mnl_socket_get_fd(events.get()), SOL_SOCKET, SO_RCVBUF, &rcvbuf, &len);
    size_t budget = 2 * static_cast<size_t>(std::max(rcvbuf, 65536));
    std::vector<char>& buf = recvBufs[0];
    while (budget > 0) {
      const ssize_t n =
          ::recv(mnl_socket_get_fd(events.get()), buf.data(), buf.size(), MSG_DONTWAIT | MSG_TRUNC);
      if (n < 0) {
        if (errno == EINTR || errno == ENOBUFS) continue;
        return;  // EAGAIN: empty
      }
      budget -= std::min(budget, std::max<size_t>(static_cast<size_t>(n), 1));
    }
  }

  // Sends a dump request and calls dumpBegin; the entries follow from onDumpReadable(). Returns
  // false if a callback destroyed the source.
  [[nodiscard]] bool beginDump() {
    ++counters.dumps;
    std::array<char, 64> msg{};
    const uint32_t seq = requester.nextSeq();
    nlmsghdr* nlh = putHeader(msg.data(), IPCTNL_MSG_CT_GET, NLM_F_DUMP, seq, AF_UNSPEC);
    if (mnl_socket_sendto(dumpSock.get(), nlh, nlh->nlmsg_len) < 0) {
      dumpFailed();
      return true;  // the caller's loop tries again (a bounded number of times)
    }
    dump = DumpState{true, false, seq};
    {
      Delivery d(this);
      if (cb.dumpBegin) cb.dumpBegin();
      if (d.destroyed) return false;
    }
    if (!running) dump.abandoned = true;
    armDumpWait();
    return true;
  }

  // A dump that failed half way cannot say what is gone: no dumpEnd; try again (a few times, so
  // that a kernel that keeps refusing cannot keep the source busy).
  void dumpFailed() {
    ++failedDumps;
    if (failedDumps < 3) dumpPending = true;
  }

  void armDumpWait() {
    if (dumpWaiting) return;
    dumpWaiting = true;
    dumpWaiter.async_wait(
        asio::posix::stream_descriptor::wait_read,
        [this, token = std::weak_ptr<int>(alive)](const boost::system::error_code& ec) {
          if (token.expired()) return;
          dumpWaiting = false;
          if (ec) return;
          (void)onDumpReadable();
        });
  }

  // One slice of the dump under way: what the dump socket holds, up to kDumpMessagesPerSlice
  // messages or kDumpSliceTime; then a posted handler (more to read) or a wait takes over. At the
  // end: dumpEnd (unless abandoned or failed), then a dump asked for meanwhile, then events.
  // Returns false if a callback destroyed the source.
  [[nodiscard]] bool onDumpReadable() {
    if (!dump.active) return true;
    const int fd = mnl_socket_get_fd(dumpSock.get());
    std::vector<char>& buf = requester.buffer();
    const auto deadline = Clock::now() + kDumpSliceTime;
    size_t messages = 0;
    int err = 0;
    bool finished = false;
    {
      Delivery d(this);
      while (!finished) {
        if (messages >= kDumpMessagesPerSlice || Clock::now() >= deadline) {
          asio::post(io, [this, token = std::weak_ptr<int>(alive)] {
            if (!token.expired()) (void)onDumpReadable();
          });
          return true;
        }
        const ssize_t n = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
        if (n < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK) {
            armDumpWait();
            return true;
          }
          err = errno;
          finished = true;
          break;
        }
        int len = static_cast<int>(n);
        for (auto* m = reinterpret_cast<const nlmsghdr*>(buf.data()); mnl_nlmsg_ok(m, len);
             m = mnl_nlmsg_next(m, &len)) {
          if (m->nlmsg_seq != dump.seq) continue;
          if (m->nlmsg_type == NLMSG_DONE) {
            finished = true;
            break;
          }
          if (m->nlmsg_type == NLMSG_ERROR) {
            const auto* e = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(m));
            err = -e->error;
            finished = true;
            break;
          }
          ++messages;
          if (!running) dump.abandoned = true;
          if (dump.abandoned) continue;
          deliverDumped(m);
          if (d.destroyed) return false;  // touch nothing any more
        }
      }
      dump.active = false;
      if (err != 0) {
        dumpFailed();
      } else {
        failedDumps = 0;
        if (!running) dump.abandoned = true;
        if (!dump.abandoned && cb.dumpEnd) cb.dumpEnd();
        if (d.destroyed) return false;
      }
    }
    if (!runPendingDumps()) return false;
    armWait();  // events held meanwhile (nothing if another dump began)
    return true;
  }

  void deliverDumped(const nlmsghdr* m) {
    ++counters.dumpedFlows;
    std::optional<FlowRecord> r = parseRecord(m);
    if (!r) {
      ++counters.unparsable;
    } else if (!filter.accepts(*r)) {
      ++counters.filtered;
      if (cb.present && filter.acceptsIdentity(*r)) cb.present(r->key);
    } else if (cb.upsert) {
      cb.upsert(*r);
    }
  }

  // Events are read only while no dump runs: the dump's end re-arms this.
  void armWait() {
    if (waiting || dump.active) return;
    waiting = true;
    waiter.async_wait(
        asio::posix::stream_descriptor::wait_read,
        [this, token = std::weak_ptr<int>(alive)](const boost::system::error_code& ec) {
          if (token.expired()) return;
          waiting = false;
          if (ec || dump.active) return;
          if (!onReadable()) return;
          armWait();
        });
  }

  // Reads what the event socket holds (a bounded amount). Returns false if destroyed.
  [[nodiscard]] bool onReadable() {
    const int fd = mnl_socket_get_fd(events.get());
    std::array<mmsghdr, kBatchDatagrams> msgs{};
    std::array<iovec, kBatchDatagrams> iov{};
    size_t seen = 0;
    while (seen < kDatagramsPerWakeup) {
      for (size_t i = 0; i < kBatchDatagrams; ++i) {
        iov[i] = {recvBufs[i].data(), recvBufs[i].size()};
        msgs[i] = {};
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
      }
      const int n = ::recvmmsg(fd, msgs.data(), kBatchDatagrams, MSG_DONTWAIT, nullptr);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == ENOBUFS) {
          // Events were lost: only a full dump can tell what the kernel holds now.
          if (running) {
            ++counters.overruns;
            dumpPending = true;
          }
          continue;
        }
        break;  // EAGAIN: all read
      }
      seen += static_cast<size_t>(n);
      if (!running || dumpPending) continue;  // stopped, or superseded by the coming dump
      Delivery d(this);
      for (int i = 0; i < n && running && !dumpPending; ++i) {
        int len = static_cast<int>(msgs[static_cast<size_t>(i)].msg_len);
        for (auto* m = reinterpret_cast<const nlmsghdr*>(recvBufs[static_cast<size_t>(i)].data());
             mnl_nlmsg_ok(m, len) && running && !dumpPending; m = mnl_nlmsg_next(m, &len)) {
          handleEvent(m);
          if (d.destroyed) return false;
        }
      }
    }
    return runPendingDumps();
  }

  // Joins or leaves the NEW, UPDATE and DESTROY groups. False (errno set) if the kernel refused.
  bool subscribe(bool on) {
    if (on == subscribed) return true;
    for (int group : {NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY}) {
      if (mnl_socket_setsockopt(events.get(), on ? NETLINK_ADD_MEMBERSHIP : NETLINK_DROP_MEMBERSHIP,
                                &group, sizeof group) < 0) {
        return false;
      }
    }
    subscribed = on;
    return true;
  }

  // Whether an event lacks a field the kernel leaves out when it did not change.
  bool incomplete(const nf_conntrack* ct, const FlowRecord& r, bool isNew) const {
    if (r.key.orig.l4 == table::proto::kTcp && !nfct_attr_is_set(ct, ATTR_TCP_STATE)) return true;
    if ((r.status & table::status::kExpected) && !r.master) return true;
    // An UPDATE names the helper only when it changed and carries the sequence adjustment only
    // when a helper just changed it (IPCT_HELPER, IPCT_SEQADJ): without a GET a replica would
    // lose the FTP helper or the offsets of a control flow at its next update.
    if ((r.status & table::status::kHelper) && !nfct_attr_is_set(ct, ATTR_HELPER_NAME)) return true;
    if ((r.status & table::status::kSeqAdjust) &&
        !nfct_attr_is_set(ct, ATTR_ORIG_NAT_SEQ_CORRECTION_POS)) {
      return true;
    }
    return !isNew && labelsSeen && !nfct_attr_is_set(ct, ATTR_CONNLABELS);
  }

  void handleEvent(const nlmsghdr* m) {
    if ((m->nlmsg_type >> 8) != NFNL_SUBSYS_CTNETLINK) return;
    const int type = m->nlmsg_type & 0xff;
    if (type != IPCTNL_MSG_CT_NEW && type != IPCTNL_MSG_CT_DELETE) return;
    const bool isNew = type == IPCTNL_MSG_CT_NEW && (m->nlmsg_flags & NLM_F_CREATE) != 0;
    if (type == IPCTNL_MSG_CT_DELETE) {
      ++counters.destroyEvents;
    } else if (isNew) {
      ++counters.newEvents;
    } else {
      ++counters.updateEvents;
    }
    NfctPtr ct = parseEntry(m);
    std::optional<FlowRecord> r = ct ? fromKernel(ct.get(), m) : std::nullopt;
    if (!r) {
      ++counters.unparsable;
      return;
    }
    if (type == IPCTNL_MSG_CT_DELETE) {
      // The final TCP state says nothing about whether the flow was synced: only what never
      // changes (protocol, addresses) decides.
      if (!filter.acceptsIdentity(*r)) {
        ++counters.filtered;
        return;
      }
      if (cb.remove) cb.remove(r->key);
      return;
    }
    if (std::any_of(r->labels.begin(), r->labels.end(), [](uint8_t b) { return b != 0; })) {
      labelsSeen = true;
    }
    if (incomplete(ct.get(), *r, isNew)) {
      GetAnswer a = requester.get(r->key);
      if (!a.ct) return;  // gone already: its DESTROY follows
      std::optional<FlowRecord> full = std::move(a.record);
      if (!full) return;
      r = std::move(full);
    }
    if (consumeEcho(*r)) {
      ++counters.echoesSuppressed;
      return;
    }
    if (!filter.accepts(*r)) {
      ++counters.filtered;
      return;
    }
    if (cb.upsert) cb.upsert(*r);
  }

  void expireEchoes(Clock::time_point now) {
    while (!echoOrder.empty() && echoOrder.front().first <= now) {
      auto it = echoes.find(echoOrder.front().second);
      if (it != echoes.end()) {
        auto& v = it->second;
        v.erase(std::remove_if(v.begin(), v.end(), [&](const Echo& e) { return e.expires <= now; }),
                v.end());
        if (v.empty()) echoes.erase(it);
      }
      echoOrder.pop_front();
    }
  }

  bool consumeEcho(const FlowRecord& r) {
    if (echoes.empty()) return false;
    expireEchoes(Clock::now());
    auto it = echoes.find(r.key);
    if (it == echoes.end()) return false;
    auto& v = it->second;
    for (auto e = v.begin(); e != v.end(); ++e) {
      if ((e->status & kEchoStatusMask) == (r.status & kEchoStatusMask) &&
          e->tcpState == r.tcpState && e->mark == r.mark && e->reply == r.reply) {
        v.erase(e);
        if (v.empty()) echoes.erase(it);
        return true;
      }
    }
    return false;
  }

  struct DumpState {
    bool active = false;     // dumpBegin called, the request's DONE not read yet
    bool abandoned = false;  // stopped meanwhile: deliver nothing more, no dumpEnd
    uint32_t seq = 0;
  };

  asio::io_context& io;
  KernelFilter filter;
  Callbacks cb;
  MnlPtr events;
  MnlPtr dumpSock;
  Requester requester;
  asio::posix::stream_descriptor waiter;      // a dup of the event socket, for readiness only
  asio::posix::stream_descriptor dumpWaiter;  // a dup of the dump socket, the same
  DumpState dump;
  bool dumpWaiting = false;
  std::vector<std::vector<char>> recvBufs;
  std::shared_ptr<int> alive = std::make_shared<int>(0);
  bool* destroyedFlag = nullptr;
  int depth = 0;
  bool running = false;
  bool subscribed = false;
  bool alwaysSubscribed = false;
  bool waiting = false;
  bool dumpPending = false;
  bool labelsSeen = false;
  int failedDumps = 0;
  KernelSourceCounters counters;
  std::unordered_map<FlowKey, std::vector<Echo>, replication::FlowKeyHasher> echoes;
  std::deque<std::pair<Clock::time_point, FlowKey>> echoOrder;
};

namespace {

constexpr char kEventsSysctl[] = "/proc/sys/net/netfilter/nf_conntrack_events";

int readEventsSysctl() {
  FILE* f = std::fopen(kEventsSysctl, "r");
  if (f == nullptr) return -1;
  int v = -1;
  if (std::fscanf(f, "%d", &v) != 1) v = -1;
  std::fclose(f);
  return v;
}

// See the top of the file: from now on every new entry reports its events, whether or not a
// listener exists at that moment (a restarting daemon). Returns the setting in force, or an
// error for 0: the administrator turned events off, which the source cannot work without.
std::variant<int, std::string> enableEvents() {
  int v = readEventsSysctl();
  if (v == 0) return std::string("kernel source: ") + kEventsSysctl + " is 0: events are off";
  if (v == 2) {
    if (FILE* f = std::fopen(kEventsSysctl, "w")) {
      std::fputs("1\n", f);
      std::fclose(f);
    }
    v = readEventsSysctl();
  }
  return v;
}

}  // namespace

std::variant<std::unique_ptr<KernelSource>, std::string> KernelSource::open(
    asio::io_context& io, const conf::KernelSettings& settings, KernelFilter filter,
    Callbacks callbacks) {
  const auto events = enableEvents();
  if (auto* err = std::get_if<std::string>(&events)) return *err;
  auto ev = openNetlink(0, "kernel source events");
  if (auto* err = std::get_if<std::string>(&ev)) return *err;
  auto dump = openNetlink(0, "kernel source dumps");
  if (auto* err = std::get_if<std::string>(&dump)) return *err;
  MnlPtr& evSock = std::get<MnlPtr>(ev);
  const int fd = mnl_socket_get_fd(evSock.get());
  setBuffer(fd, SO_RCVBUFFORCE, SO_RCVBUF, settings.netlinkRcvbufBytes);
  const int waitFd = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (waitFd < 0) return "kernel source: dup: " + errnoText(errno);
  MnlPtr& dumpSock = std::get<MnlPtr>(dump);
  const int dumpWaitFd = ::fcntl(mnl_socket_get_fd(dumpSock.get()), F_DUPFD_CLOEXEC, 0);
  if (dumpWaitFd < 0) {
    const int e = errno;
    ::close(waitFd);
    return "kernel source: dup: " + errnoText(e);
  }
  auto impl = std::make_unique<Impl>(io, std::move(filter), std::move(callbacks), std::move(evSock),
                                     std::move(dumpSock), waitFd, dumpWaitFd);
  // Without nf_conntrack_events=1 the subscription must stay alive (and drained) while stopped.
  impl->alwaysSubscribed = std::get<int>(events) != 1;
  if (impl->alwaysSubscribed && !impl->subscribe(true)) {
    return "kernel source: joining the conntrack event groups: " + errnoText(errno);
  }
  impl->armWait();
  return std::unique_ptr<KernelSource>(new KernelSource(std::move(impl)));
}

KernelSource::KernelSource(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KernelSource::~KernelSource() = default;

void KernelSource::start() {
  if (impl_->running) return;
  impl_->subscribe(true);  // before the dump, so that no change falls between the two
  impl_->running = true;
  impl_->requestDump();
}

void KernelSource::stop() {
  impl_->running = false;
  impl_->dumpPending = false;
  if (impl_->dump.active) impl_->dump.abandoned = true;
  if (!impl_->alwaysSubscribed) impl_->subscribe(false);
}

bool KernelSource::running() const {
  return impl_->running;
}

bool KernelSource::dumping() const {
  return impl_->dump.active;
}

void KernelSource::resync() {
  if (!impl_->running) return;
  impl_->requestDump();
}

void KernelSource::refresh(const FlowKey& key) {
  Impl& d = *impl_;
  // The dump socket answers GETs too: not while a dump streams on it (that dump, or the next
  // refresh dump, reports the entry anyway).
  if (!d.running || d.dump.active || d.depth > 0) return;
  GetAnswer a = d.requester.get(key);
  if (!a.record) return;  // gone: its DESTROY follows
  if (!d.filter.accepts(*a.record)) {
    ++d.counters.filtered;
    return;
  }
  ++d.counters.refreshed;
  Impl::Delivery guard(&d);
  if (d.cb.upsert) d.cb.upsert(*a.record);
}

void KernelSource::expectEcho(const FlowRecord& r) {
  const Clock::time_point now = Clock::now();
  impl_->expireEchoes(now);
  const Clock::time_point expires = now + kEchoLifetime;
  impl_->echoes[r.key].push_back(Impl::Echo{r.status, r.tcpState, r.mark, r.reply, expires});
  impl_->echoOrder.emplace_back(expires, r.key);
}

const KernelSourceCounters& KernelSource::counters() const {
  return impl_->counters;
}

// ---- sink --------------------------------------------------------------------------------

struct KernelSink::Impl {
  // kGet, kDeleteOrig and kDeleteReply index upserts: the check after a create's EEXIST and the
  // removal of a stale entry in the way (by the record's original or reply tuple).
  enum class Kind : uint8_t { kCreate, kUpdate, kDelete, kGet, kDeleteOrig, kDeleteReply };
  struct Op {
    Kind kind;
    uint32_t index;         // into upserts or deletes
    bool noHelper = false;  // retry of a create the kernel refused for its helper
    bool noStatus = false;  // retry of an update whose status bits the kernel refused
    bool noLabels = false;  // retry of an update the kernel had no room for labels for
    uint8_t replaced = 0;   // stale entries removed for this flow so far
  };
  static constexpr uint8_t kMaxReplacements = 2;
  // GET answers are entries (~1 KiB each in the receive buffer), not just errors.
  static constexpr size_t kMaxGetsPerSend = 1024;

  static constexpr size_t kAnswerSlots = 64;
  static constexpr size_t kAnswerSlotBytes = 4096;  // an error carries the request's header only

  Impl(const conf::KernelSettings& s, MnlPtr socket)
      : settings(s),
        nl(std::move(socket)),
        requester(nl.get()),
        answerBuf(kAnswerSlots * kAnswerSlotBytes) {
    // Bytes per send: the count limit should bind first; one message always fits.
    batchLimit = std::clamp<size_t>(size_t{s.commitBatch} * 512, kMaxMessageBytes, 4u << 20);
    for (std::vector<char>& b : pipe) b.resize(batchLimit + kMaxMessageBytes);
    const int fd = mnl_socket_get_fd(nl.get());
    setBuffer(fd, SO_SNDBUFFORCE, SO_SNDBUF,
              std::max<uint32_t>(s.netlinkSndbufBytes, static_cast<uint32_t>(2 * batchLimit)));
    // Room for one error per message of a batch (each a small skb of ~1 KiB truesize).
    setBuffer(fd, SO_RCVBUFFORCE, SO_RCVBUF,
              static_cast<uint32_t>(std::max<size_t>(8u << 20, 2048 * s.commitBatch)));
    timeval tv{static_cast<time_t>(kAnswerTimeout.count()), 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }

  void fail(CommitResult& res, const FlowKey& key, int err) {
    ++res.failed;
    if (res.errors.size() < kMaxErrorLines)
      res.errors.push_back(describe(key) + ": " + errnoText(err));
  }

  // Builds one message for `op` at `buf`.
  static void build(const Op& op, void* buf, uint32_t seq, std::span<const FlowRecord> upserts,
                    std::span<const FlowKey> deletes) {
    NfctPtr ct(nfct_new());
    if (op.kind == Kind::kDelete) {
      const FlowKey& k = deletes[op.index];
      nlmsghdr* nlh =
          putHeader(buf, IPCTNL_MSG_CT_DELETE, 0, seq, static_cast<uint8_t>(family(k.orig.l3)));
      setKey(ct.get(), k);
      nfct_nlmsg_build(nlh, ct.get());
      return;
    }
    const FlowRecord& r = upserts[op.index];
    const auto fam = static_cast<uint8_t>(family(r.key.orig.l3));
    switch (op.kind) {
      case Kind::kGet:
      case Kind::kDeleteOrig: {
        nlmsghdr* nlh = putHeader(
            buf, op.kind == Kind::kGet ? IPCTNL_MSG_CT_GET : IPCTNL_MSG_CT_DELETE, 0, seq, fam);
        setKey(ct.get(), r.key);
        nfct_nlmsg_build(nlh, ct.get());
        return;
      }
      case Kind::kDeleteReply: {
        putReplyKey(putHeader(buf, IPCTNL_MSG_CT_DELETE, 0, seq, fam), r);
        return;
      }
      default:
        break;
    }
    const bool create = op.kind == Kind::kCreate;
    nlmsghdr* nlh =
        putHeader(buf, IPCTNL_MSG_CT_NEW, create ? NLM_F_CREATE | NLM_F_EXCL : 0, seq, fam);
    toKernel(r, r.timeoutSec, ct.get(), !create);
    if (op.noHelper) nfct_attr_unset(ct.get(), ATTR_HELPER_NAME);
    if (op.noStatus) nfct_attr_unset(ct.get(), ATTR_STATUS);
    if (op.noLabels) nfct_attr_unset(ct.get(), ATTR_CONNLABELS);
    std::function<void(nlmsghdr*)> icmpNat;
    if (create) icmpNat = takeIcmpNat(r, ct.get());
    nfct_nlmsg_build(nlh, ct.get());
    if (icmpNat) icmpNat(nlh);
  }

  // One send's worth of ops[from..], built into `buf`.
  struct Built {
    size_t from = 0;
    size_t count = 0;  // at least one
    size_t bytes = 0;
    uint32_t firstSeq = 0;
  };

  // Builds up to commitBatch messages (and at most batchLimit bytes) from ops[from..]. Touches
  // nothing but `buf`: the pipeline's builder thread calls it.
  Built buildBatch(const std::vector<Op>& ops, size_t from, uint32_t firstSeq,
                   std::vector<char>& buf, std::span<const FlowRecord> upserts,
                   std::span<const FlowKey> deletes) const {
    const size_t perSend = std::max<uint32_t>(settings.commitBatch, 1);
    mnl_nlmsg_batch* batch = mnl_nlmsg_batch_start(buf.data(), batchLimit);
    Built b{from, 0, 0, firstSeq};
    nlmsghdr* last = nullptr;
    size_t gets = 0;
    while (from + b.count < ops.size() && b.count < perSend) {
      if (ops[from + b.count].kind == Kind::kGet && ++gets > kMaxGetsPerSend) break;
      auto* nlh = static_cast<nlmsghdr*>(mnl_nlmsg_batch_current(batch));
      build(ops[from + b.count], nlh, firstSeq + static_cast<uint32_t>(b.count), upserts, deletes);
      // Full: this message goes first next time. The byte limit always holds one message.
      if (!mnl_nlmsg_batch_next(batch) && last != nullptr) break;
      last = nlh;
      ++b.count;
    }
    // Errors always come back; the ack of the last message says the batch is done.
    last->nlmsg_flags |= NLM_F_ACK;
    b.bytes = static_cast<size_t>(reinterpret_cast<char*>(last) + last->nlmsg_len - buf.data());
    mnl_nlmsg_batch_stop(batch);
    return b;
  }

  void sendBatch(const Built& b, const std::vector<char>& buf, const std::vector<Op>& ops,
                 std::vector<Op>& retries, std::span<const FlowRecord> upserts,
                 std::span<const FlowKey> deletes, CommitResult& res) {
    answers.assign(b.count, kNoAnswer);
    replies.assign(b.count, std::nullopt);
    const int sendErr = sendAndCollect(buf.data(), b.bytes, b.firstSeq, answers, &replies);
    ++counters.batches;
    for (size_t k = 0; k < b.count; ++k) {
      int err = answers[k];
      if (err == kNoAnswer) err = sendErr;  // 0 unless the answers were lost
      settle(retries, ops[b.from + k], err, replies[k], upserts, deletes, res);
    }
  }

  // Runs `ops`, then the retries their answers ask for (EEXIST -> update, ...), round by round.
  void runPhase(std::vector<Op> ops, std::span<const FlowRecord> upserts,
                std::span<const FlowKey> deletes, CommitResult& res) {
    std::vector<Op> retries;
    while (!ops.empty()) {
      retries.clear();
      runRound(ops, retries, upserts, deletes, res);
      ops.swap(retries);
    }
  }

  void runRound(const std::vector<Op>& ops, std::vector<Op>& retries,
                std::span<const FlowRecord> upserts, std::span<const FlowKey> deletes,
                CommitResult& res) {
    const uint32_t base = requester.nextSeq();
    requester.advance(static_cast<uint32_t>(ops.size()));
    const size_t perSend = std::max<uint32_t>(settings.commitBatch, 1);
    if (perSend < kPipeMinBatch || ops.size() <= 2 * perSend) {
      for (size_t pos = 0; pos < ops.size();) {
        const Built b =
            buildBatch(ops, pos, base + static_cast<uint32_t>(pos), pipe[0], upserts, deletes);
        sendBatch(b, pipe[0], ops, retries, upserts, deletes, res);
        pos += b.count;
      }
      return;
    }
    // The kernel handles a send in the sending thread, one message after the other under
    // ctnetlink's mutex: building the next batch meanwhile on another core hides our part
    // (about a fifth of a commit). The builder touches only its buffers and the inputs; all
    // answers and counters stay on this thread.
    std::mutex mu;
    std::condition_variable cv;
    std::deque<size_t> ready;
    std::deque<size_t> free;
    std::array<Built, kPipeDepth> built{};
    for (size_t i = 0; i < kPipeDepth; ++i) free.push_back(i);
    // A slot moves free -> (built) -> ready -> (sent) -> free.
    auto take = [&](std::deque<size_t>& from) {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return !from.empty(); });
      const size_t slot = from.front();
      from.pop_front();
      return slot;
    };
    auto give = [&](std::deque<size_t>& to, size_t slot) {
      {
        std::lock_guard lock(mu);
        to.push_back(slot);
      }
      cv.notify_all();
    };
    std::thread builder([&] {
      for (size_t pos = 0; pos < ops.size();) {
        const size_t slot = take(free);
        built[slot] =
            buildBatch(ops, pos, base + static_cast<uint32_t>(pos), pipe[slot], upserts, deletes);
        pos += built[slot].count;
        give(ready, slot);
      }
    });
    for (size_t done = 0; done < ops.size();) {
      const size_t slot = take(ready);
      sendBatch(built[slot], pipe[slot], ops, retries, upserts, deletes, res);
      done += built[slot].count;
      give(free, slot);
    }
    builder.join();
  }

  static constexpr int kNoAnswer = -1;

  // Sends one batch and reads the answers. Fills `out[k]` with the errno of message k (0 for the
  // acked last one). Messages without an answer succeeded, unless the return value (an
  // errno) says the answers were lost or the send failed. With `entries`, the reply tuples of the
  // entries that come back (GETs) go to (*entries)[k].
  int sendAndCollect(const void* data, size_t len, uint32_t firstSeq, std::vector<int>& out,
                     std::vector<std::optional<Tuple>>* entries = nullptr) {
    if (mnl_socket_sendto(nl.get(), data, len) < 0) return errno;
    const uint32_t lastSeq = firstSeq + static_cast<uint32_t>(out.size()) - 1;
    // Each answer is a datagram of its own (a batch of EEXIST is one per message): many per call.
    std::array<mmsghdr, kAnswerSlots> msgs{};
    std::array<iovec, kAnswerSlots> iov{};
    bool lost = false;
    bool done = false;
    for (;;) {
      for (size_t i = 0; i < kAnswerSlots; ++i) {
        iov[i] = {answerBuf.data() + i * kAnswerSlotBytes, kAnswerSlotBytes};
        msgs[i] = {};
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
      }
      // Block for the first answer only; after a loss, or once the last one is in, take what
      // is queued and stop.
      const int flags = (lost || done) ? MSG_DONTWAIT : MSG_WAITFORONE;
      const int n =
          ::recvmmsg(mnl_socket_get_fd(nl.get()), msgs.data(), kAnswerSlots, flags, nullptr);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == ENOBUFS) {  // some answers were dropped: read what is left, then give up
          lost = true;
          continue;
        }
        if (done) return 0;
        return lost ? ENOBUFS : errno;  // EAGAIN after a loss, or the receive timeout
      }
      for (int i = 0; i < n; ++i) {
        int left = static_cast<int>(msgs[static_cast<size_t>(i)].msg_len);
        for (auto* m = reinterpret_cast<const nlmsghdr*>(iov[static_cast<size_t>(i)].iov_base);
             mnl_nlmsg_ok(m, left); m = mnl_nlmsg_next(m, &left)) {
          const uint32_t seq = m->nlmsg_seq;
          if (seq - firstSeq > lastSeq - firstSeq) continue;  // an older batch's straggler
          if (m->nlmsg_type != NLMSG_ERROR) {
            if (entries != nullptr && (m->nlmsg_type >> 8) == NFNL_SUBSYS_CTNETLINK) {
              if (std::optional<FlowRecord> r = parseRecord(m)) {
                (*entries)[seq - firstSeq] = r->reply;
              }
            }
            continue;
          }
          const auto* e = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(m));
          out[seq - firstSeq] = -e->error;
          if (seq == lastSeq) done = true;
        }
      }
      // The answers come in order, all queued before the send returned: the last one closes
      // the batch.
      if (done && !lost) return 0;
    }
  }

  // Whether the kernel's reply tuple is the one a create of r would make (ports only where NAT
  // sets them; ICMP: the id).
  static bool sameMapping(const Tuple& kernel, const FlowRecord& r) {
    const Tuple& want = r.reply;
    if (kernel.l3 != want.l3 || kernel.l4 != want.l4 || !(kernel.src == want.src) ||
        !(kernel.dst == want.dst)) {
      return false;
    }
    if (natHasPorts(want.l4)) return kernel.sport == want.sport && kernel.dport == want.dport;
    if (isIcmp(want.l4)) return kernel.sport == want.sport;
    return true;
  }

  void settle(std::vector<Op>& ops, const Op& op, int err, const std::optional<Tuple>& got,
              std::span<const FlowRecord> upserts, std::span<const FlowKey> deletes,
              CommitResult& res) {
    switch (op.kind) {
      case Kind::kDelete:
        if (err == 0) {
          ++res.deleted;
        } else if (err == ENOENT) {
          ++res.absent;
        } else {
          fail(res, deletes[op.index], err);
        }
        return;
      case Kind::kGet: {
        // After a create's EEXIST: is it our flow with the same mapping?
        const FlowRecord& r = upserts[op.index];
        Op next = op;
        if (err == 0 && got) {
          if (sameMapping(*got, r)) {
            next.kind = Kind::kUpdate;
          } else {  // another NAT mapping, which an update cannot change
            next.kind = Kind::kDeleteOrig;
            ++next.replaced;
          }
        } else if (err == 0 || err == ENOENT) {
          // No entry with this original tuple: another one holds the reply tuple.
          next.kind = Kind::kDeleteReply;
          ++next.replaced;
        } else {
          next.kind = Kind::kUpdate;  // no answer (lost): as before, update in place
        }
        ops.push_back(next);
        return;
      }
      case Kind::kDeleteOrig:
      case Kind::kDeleteReply: {
        if (err == 0 || err == ENOENT) {
          Op next = op;
          next.kind = Kind::kCreate;
          ops.push_back(next);
        } else {
          fail(res, upserts[op.index].key, err);
        }
        return;
      }
      case Kind::kCreate: {
        const FlowRecord& r = upserts[op.index];
        if (err == 0) {
          ++res.created;
          if (op.replaced > 0) ++res.replaced;
        } else if (err == EEXIST) {
          Op next = op;
          next.kind = op.replaced < kMaxReplacements ? Kind::kGet : Kind::kUpdate;
          ops.push_back(next);
        } else if (err == EOPNOTSUPP && r.helper != 0 && !op.noHelper) {
          // The kernel has no such helper (or not for this protocol): the flow matters more
          // than its helper, so it goes in without one.
          Op retry = op;
          retry.noHelper = true;
          ops.push_back(retry);
        } else {
          fail(res, r.key, err);
        }
        return;
      }
      case Kind::kUpdate: {
        const FlowRecord& r = upserts[op.index];
        if (err == 0) {
          ++res.updated;
        } else if (err == ENOENT && op.replaced < kMaxReplacements) {
          // Gone between the check and the update, or (no check) the create's EEXIST was
          // another entry holding the reply tuple: remove that one and create.
          Op next = op;
          next.kind = Kind::kDeleteReply;
          ++next.replaced;
          ops.push_back(next);
        } else if (err == EBUSY && !op.noStatus) {
          // The entry has status bits the record lacks (ASSURED cannot be cleared) or another
          // EXPECTED bit: keep the kernel's and change the rest.
          Op retry = op;
          retry.noStatus = true;
          ops.push_back(retry);
        } else if (err == ENOSPC && !op.noLabels) {
          // No label extension on the entry (nothing in the namespace uses labels, so a create
          // dropped them silently): change the rest.
          Op retry = op;
          retry.noLabels = true;
          ops.push_back(retry);
        } else {
          fail(res, r.key, err);
        }
        return;
      }
    }
  }

  conf::KernelSettings settings;
  MnlPtr nl;
  Requester requester;
  static constexpr size_t kPipeDepth = 3;
  static constexpr size_t kPipeMinBatch = 64;  // below, the hand-offs cost more than they save
  size_t batchLimit = 0;
  std::array<std::vector<char>, kPipeDepth> pipe;  // batch buffers: built, in flight, next
  std::vector<char> answerBuf;
  std::vector<int> answers;
  std::vector<std::optional<Tuple>> replies;
  KernelSinkCounters counters;
};

std::variant<std::unique_ptr<KernelSink>, std::string> KernelSink::open(
    const conf::KernelSettings& settings) {
  auto nl = openNetlink(0, "kernel sink");
  if (auto* err = std::get_if<std::string>(&nl)) return *err;
  auto impl = std::make_unique<Impl>(settings, std::move(std::get<MnlPtr>(nl)));
  return std::unique_ptr<KernelSink>(new KernelSink(std::move(impl)));
}

KernelSink::KernelSink(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KernelSink::~KernelSink() = default;

CommitResult KernelSink::commit(std::span<const FlowRecord> upserts,
                                std::span<const FlowKey> deletes) {
  const auto t0 = Clock::now();
  CommitResult res;
  using Op = Impl::Op;
  using Kind = Impl::Kind;
  // Deletes first (they may free tuples the creates need), then flows without a master, then
  // related flows, whose masters must exist by then.
  std::vector<Op> ops;
  ops.reserve(deletes.size());
  for (uint32_t i = 0; i < deletes.size(); ++i) ops.push_back(Op{Kind::kDelete, i});
  impl_->runPhase(std::move(ops), upserts, deletes, res);
  for (const bool related : {false, true}) {
    ops.clear();
    for (uint32_t i = 0; i < upserts.size(); ++i) {
      if (upserts[i].master.has_value() == related) ops.push_back(Op{Kind::kCreate, i});
    }
    impl_->runPhase(std::move(ops), upserts, deletes, res);
  }
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  KernelSinkCounters& c = impl_->counters;
  ++c.commits;
  c.created += res.created;
  c.replaced += res.replaced;
  c.updated += res.updated;
  c.deleted += res.deleted;
  c.failed += res.failed;
  return res;
}

size_t KernelSink::flushKernel() {
  size_t entries = 0;
  runDump(impl_->nl.get(), impl_->requester, [&](const nlmsghdr*) {
    ++entries;
    return DumpStep::kNext;
  });
  // One message empties the table (every family and zone): AF_UNSPEC with no tuple.
  std::array<char, 64> msg{};
  const uint32_t seq = impl_->requester.nextSeq();
  nlmsghdr* nlh = putHeader(msg.data(), IPCTNL_MSG_CT_DELETE, NLM_F_ACK, seq, AF_UNSPEC);
  std::vector<int> answers(1, Impl::kNoAnswer);
  const int err = impl_->sendAndCollect(nlh, nlh->nlmsg_len, seq, answers);
  ++impl_->counters.batches;
  if (err != 0 || answers[0] != 0) return 0;
  return entries;
}

const KernelSinkCounters& KernelSink::counters() const {
  return impl_->counters;
}

}  // namespace ctsync::syncd
