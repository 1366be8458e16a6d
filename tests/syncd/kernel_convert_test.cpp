// Conversions between FlowRecord and libnetfilter_conntrack objects, and the kernel filter:
// pure, no socket. "What the kernel reports" is built as an object and sent through the
// library's own message builder and parser, so the attributes look as they do after a dump.
#include "syncd/kernel.hpp"
#include "table/helpers.hpp"
#include "tests/support/tuples.hpp"
// (system headers after)
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack_tcp.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>

#include <array>
#include <cstring>
#include <memory>
#include <ostream>
#include <string>

#include "table/tcp.hpp"
#include "table/types.hpp"

namespace ctsync::replication {
// Readable failure messages.
void PrintTo(const FlowRecord& r, std::ostream* os) {
  auto tuple = [&](const table::Tuple& t) {
    return table::formatAddr(t.l3, t.src) + ":" + std::to_string(t.sport) + " -> " +
           table::formatAddr(t.l3, t.dst) + ":" + std::to_string(t.dport) + " l4 " +
           std::to_string(t.l4);
  };
  *os << "{" << tuple(r.key.orig) << " zone " << r.key.zone << " reply " << tuple(r.reply)
      << " status 0x" << std::hex << r.status << std::dec << " tcp " << int{r.tcpState} << " flags "
      << int{r.tcpFlags[0]} << "/" << int{r.tcpFlags[1]} << " scale " << int{r.tcpScale[0]} << "/"
      << int{r.tcpScale[1]} << " timeout " << r.timeoutSec << " mark " << r.mark << " helper "
      << int{r.helper} << " master " << (r.master ? tuple(*r.master) : "-") << "}";
}
}  // namespace ctsync::replication

namespace ctsync::syncd {
namespace {

using table::Addr;
using table::L3;
using table::Tuple;
namespace st = table::status;

struct NfctDeleter {
  void operator()(nf_conntrack* ct) const { nfct_destroy(ct); }
};
using NfctPtr = std::unique_ptr<nf_conntrack, NfctDeleter>;

Addr v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  return Addr::v4((uint32_t{a} << 24) | (uint32_t{b} << 16) | (uint32_t{c} << 8) | d);
}

Addr v6(const char* text) {
  Addr a;
  EXPECT_EQ(::inet_pton(AF_INET6, text, a.bytes.data()), 1) << text;
  return a;
}

using testing::tuple;

Tuple inverse(const Tuple& t) {
  return table::invertTuple(t).value();
}

uint32_t be32(const Addr& a) {
  uint32_t n;
  std::memcpy(&n, a.bytes.data(), 4);
  return n;
}

// Serialises `ct` as ctnetlink would carry it and parses it back into a fresh object.
NfctPtr throughMessage(const nf_conntrack* ct) {
  std::array<char, 4096> buf{};
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
  nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
  auto* nfh = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfh->nfgen_family = static_cast<uint8_t>(nfct_get_attr_u8(ct, ATTR_L3PROTO));
  EXPECT_EQ(nfct_nlmsg_build(nlh, ct), 0);
  NfctPtr out(nfct_new());
  EXPECT_EQ(nfct_nlmsg_parse(nlh, out.get()), 0);
  return out;
}

void setAddr(nf_conntrack* ct, L3 l3, nf_conntrack_attr a4, nf_conntrack_attr a6, const Addr& a) {
  if (l3 == L3::kIpv4) {
    nfct_set_attr_u32(ct, a4, be32(a));
  } else {
    nfct_set_attr(ct, a6, a.bytes.data());
  }
}

// An entry as a dump reports it: the record's tuples (the reply already NAT'd), status and so on.
NfctPtr kernelEntry(const replication::FlowRecord& r) {
  NfctPtr ct(nfct_new());
  const Tuple& o = r.key.orig;
  const uint8_t fam = o.l3 == L3::kIpv4 ? AF_INET : AF_INET6;
  nfct_set_attr_u8(ct.get(), ATTR_L3PROTO, fam);
  nfct_set_attr_u8(ct.get(), ATTR_L4PROTO, o.l4);
  nfct_set_attr_u8(ct.get(), ATTR_REPL_L3PROTO, fam);
  nfct_set_attr_u8(ct.get(), ATTR_REPL_L4PROTO, o.l4);
  setAddr(ct.get(), o.l3, ATTR_ORIG_IPV4_SRC, ATTR_ORIG_IPV6_SRC, o.src);
  setAddr(ct.get(), o.l3, ATTR_ORIG_IPV4_DST, ATTR_ORIG_IPV6_DST, o.dst);
  setAddr(ct.get(), o.l3, ATTR_REPL_IPV4_SRC, ATTR_REPL_IPV6_SRC, r.reply.src);
  setAddr(ct.get(), o.l3, ATTR_REPL_IPV4_DST, ATTR_REPL_IPV6_DST, r.reply.dst);
  if (o.l4 == table::proto::kIcmp || o.l4 == table::proto::kIcmpv6) {
    nfct_set_attr_u8(ct.get(), ATTR_ICMP_TYPE, o.icmpType());
    nfct_set_attr_u8(ct.get(), ATTR_ICMP_CODE, o.icmpCode());
    nfct_set_attr_u16(ct.get(), ATTR_ICMP_ID, htons(o.sport));
  } else {
    nfct_set_attr_u16(ct.get(), ATTR_ORIG_PORT_SRC, htons(o.sport));
    nfct_set_attr_u16(ct.get(), ATTR_ORIG_PORT_DST, htons(o.dport));
    nfct_set_attr_u16(ct.get(), ATTR_REPL_PORT_SRC, htons(r.reply.sport));
    nfct_set_attr_u16(ct.get(), ATTR_REPL_PORT_DST, htons(r.reply.dport));
  }
  nfct_set_attr_u32(ct.get(), ATTR_STATUS, r.status);
  nfct_set_attr_u32(ct.get(), ATTR_TIMEOUT, r.timeoutSec);
  nfct_set_attr_u32(ct.get(), ATTR_MARK, r.mark);
  if (r.key.zone != 0) nfct_set_attr_u16(ct.get(), ATTR_ZONE, r.key.zone);
  if (o.l4 == table::proto::kTcp) {
    nfct_set_attr_u8(ct.get(), ATTR_TCP_STATE, r.tcpState);
    nfct_set_attr_u8(ct.get(), ATTR_TCP_FLAGS_ORIG, r.tcpFlags[0]);
    nfct_set_attr_u8(ct.get(), ATTR_TCP_MASK_ORIG, 0xff);
    nfct_set_attr_u8(ct.get(), ATTR_TCP_FLAGS_REPL, r.tcpFlags[1]);
    nfct_set_attr_u8(ct.get(), ATTR_TCP_MASK_REPL, 0xff);
    nfct_set_attr_u8(ct.get(), ATTR_TCP_WSCALE_ORIG, r.tcpScale[0]);
    nfct_set_attr_u8(ct.get(), ATTR_TCP_WSCALE_REPL, r.tcpScale[1]);
  }
  bool anyLabel = false;
  nfct_bitmask* b = nfct_bitmask_new(127);
  for (unsigned bit = 0; bit < 128; ++bit) {
    if (r.labels[bit / 8] & (1u << (bit % 8))) {
      nfct_bitmask_set_bit(b, bit);
      anyLabel = true;
    }
  }
  if (anyLabel) {
    nfct_set_attr(ct.get(), ATTR_CONNLABELS, b);
  } else {
    nfct_bitmask_destroy(b);
  }
  if (r.helper == 1) nfct_set_attr(ct.get(), ATTR_HELPER_NAME, "ftp");
  if (r.master) {
    const Tuple& m = *r.master;
    nfct_set_attr_u8(ct.get(), ATTR_MASTER_L3PROTO, fam);
    nfct_set_attr_u8(ct.get(), ATTR_MASTER_L4PROTO, m.l4);
    setAddr(ct.get(), m.l3, ATTR_MASTER_IPV4_SRC, ATTR_MASTER_IPV6_SRC, m.src);
    setAddr(ct.get(), m.l3, ATTR_MASTER_IPV4_DST, ATTR_MASTER_IPV6_DST, m.dst);
    nfct_set_attr_u16(ct.get(), ATTR_MASTER_PORT_SRC, htons(m.sport));
    nfct_set_attr_u16(ct.get(), ATTR_MASTER_PORT_DST, htons(m.dport));
  }
  return throughMessage(ct.get());
}

replication::FlowRecord tcpSnat() {
  replication::FlowRecord r;
  r.key.orig =
      tuple(L3::kIpv4, table::proto::kTcp, v4(10, 0, 0, 1), v4(198, 51, 100, 7), 40123, 443);
  r.reply =
      tuple(L3::kIpv4, table::proto::kTcp, v4(198, 51, 100, 7), v4(203, 0, 113, 1), 443, 61000);
  r.status = st::kSeenReply | st::kAssured | st::kConfirmed | st::kSrcNat | st::kSrcNatDone |
             st::kDstNatDone;
  r.tcpState = static_cast<uint8_t>(table::TcpState::kEstablished);
  r.tcpFlags[0] =
      table::tcpflag::kWindowScale | table::tcpflag::kSackPerm | table::tcpflag::kMaxackSet;
  r.tcpFlags[1] = table::tcpflag::kWindowScale | table::tcpflag::kDataUnacknowledged;
  r.tcpScale[0] = 7;
  r.tcpScale[1] = 9;
  r.timeoutSec = 431999;
  r.mark = 0x2a;
  return r;
}

TEST(KernelConvert, TcpWithSnatRoundTrip) {
  const replication::FlowRecord r = tcpSnat();
  NfctPtr entry = kernelEntry(r);
  const std::optional<replication::FlowRecord> back = fromKernel(entry.get());
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, r);

  NfctPtr ct(nfct_new());
  toKernel(r, 300, ct.get(), false);
  // NAT to the reply's destination; the reply tuple sent is the plain inverse (the kernel's NAT
  // turns it into r.reply and sets SRC_NAT only if it had something to change).
  EXPECT_EQ(nfct_get_attr_u32(ct.get(), ATTR_SNAT_IPV4), be32(r.reply.dst));
  EXPECT_EQ(ntohs(nfct_get_attr_u16(ct.get(), ATTR_SNAT_PORT)), 61000);
  EXPECT_FALSE(nfct_attr_is_set(ct.get(), ATTR_DNAT_IPV4));
  EXPECT_FALSE(nfct_attr_is_set(ct.get(), ATTR_DNAT_PORT));
  EXPECT_EQ(nfct_get_attr_u32(ct.get(), ATTR_REPL_IPV4_DST), be32(r.key.orig.src));
  EXPECT_EQ(ntohs(nfct_get_attr_u16(ct.get(), ATTR_REPL_PORT_DST)), 40123);
  EXPECT_EQ(nfct_get_attr_u32(ct.get(), ATTR_TIMEOUT), 300u);
  EXPECT_EQ(nfct_get_attr_u32(ct.get(), ATTR_MARK), 0x2au);
  EXPECT_EQ(nfct_get_attr_u32(ct.get(), ATTR_STATUS), st::kSeenReply | st::kAssured);
  EXPECT_EQ(nfct_get_attr_u8(ct.get(), ATTR_TCP_STATE), TCP_CONNTRACK_ESTABLISHED);
  // Liberal both ways; only the flags a replica can vouch for, the rest masked out.
  const uint8_t carried = IP_CT_TCP_FLAG_WINDOW_SCALE | IP_CT_TCP_FLAG_SACK_PERM |
                          IP_CT_TCP_FLAG_CLOSE_INIT | IP_CT_TCP_FLAG_BE_LIBERAL;
  EXPECT_EQ(nfct_get_attr_u8(ct.get(), ATTR_TCP_FLAGS_ORIG),
            IP_CT_TCP_FLAG_WINDOW_SCALE | IP_CT_TCP_FLAG_SACK_PERM | IP_CT_TCP_FLAG_BE_LIBERAL);
  EXPECT_EQ(nfct_get_attr_u8(ct.get(), ATTR_TCP_FLAGS_REPL),
            IP_CT_TCP_FLAG_WINDOW_SCALE | IP_CT_TCP_FLAG_BE_LIBERAL);
  EXPECT_EQ(nfct_get_attr_u8(ct.get(), ATTR_TCP_MASK_ORIG), carried);
  EXPECT_EQ(nfct_get_attr_u8(ct.get(), ATTR_TCP_MASK_REPL), carried);
  EXPECT_EQ(nfct_get_attr_u8(ct.get(), ATTR_TCP_WSCALE_ORIG), 7);
  EXPECT_EQ(nfct_get_attr_u8(ct.get(), ATTR_TCP_WSCALE_REPL), 9);
  EXPECT_FALSE(nfct_attr_is_set(ct.get(), ATTR_CONNLABELS));  // all zero: not sent
  EXPECT_FALSE(nfct_attr_is_set(ct.get(), ATTR_ZONE));

  // The message carries what the object says.
  NfctPtr sent = throughMessage(ct.get());
  EXPECT_EQ(nfct_get_attr_u32(sent.get(), ATTR_TIMEOUT), 300u);
  EXPECT_EQ(nfct_get_attr_u8(sent.get(), ATTR_TCP_FLAGS_ORIG),
            IP_CT_TCP_FLAG_WINDOW_SCALE | IP_CT_TCP_FLAG_SACK_PERM | IP_CT_TCP_FLAG_BE_LIBERAL);
  EXPECT_EQ(nfct_get_attr_u32(sent.get(), ATTR_STATUS),
            st::kSeenReply | st::kAssured | st::kConfirmed);  // the library adds CONFIRMED
}

TEST(KernelConvert, UpdateCarriesNoNatNoReplyNoMaster) {
  replication::FlowRecord r = tcpSnat();
  r.master = tuple(L3::kIpv4, table::proto::kTcp, v4(10, 0, 0, 1), v4(198, 51, 100, 7), 40000, 21);
  r.helper = 1;
  NfctPtr ct(nfct_new());
  toKernel(r, 0, ct.get(), true);
  EXPECT_EQ(nfct_get_attr_u32(ct.get(), ATTR_TIMEOUT), 1u);  // at least one second
  for (nf_conntrack_attr a : {ATTR_SNAT_IPV4, ATTR_SNAT_PORT, ATTR_DNAT_IPV4, ATTR_DNAT_PORT,
                              ATTR_REPL_IPV4_SRC, ATTR_REPL_IPV4_DST, ATTR_REPL_PORT_SRC,
                              ATTR_MASTER_L3PROTO, ATTR_MASTER_IPV4_SRC, ATTR_HELPER_NAME}) {
    EXPECT_FALSE(nfct_attr_is_set(ct.get(), a)) << "attribute " << a;
  }
  // A related flow's entry has EXPECTED: an update must say so, or the kernel answers EBUSY.
  EXPECT_EQ(nfct_get_attr_u32(ct.get(), ATTR_STATUS),
            st::kSeenReply | st::kAssured | st::kExpected);
  EXPECT_EQ(nfct_get_attr_u32(ct.get(), ATTR_MARK), 0x2au);
  EXPECT_EQ(nfct_get_attr_u8(ct.get(), ATTR_TCP_STATE), TCP_CONNTRACK_ESTABLISHED);

  // A zero mark is sent on update (it may have been cleared), not on create.
  r.mark = 0;
  NfctPtr upd(nfct_new());
  toKernel(r, 5, upd.get(), true);
  EXPECT_TRUE(nfct_attr_is_set(upd.get(), ATTR_MARK));
  NfctPtr create(nfct_new());
  toKernel(r, 5, create.get(), false);
  EXPECT_FALSE(nfct_attr_is_set(create.get(), ATTR_MARK));
}

TEST(KernelConvert, Ipv6UdpWithDnatRoundTrip) {
  replication::FlowRecord r;
  r.key.orig =
      tuple(L3::kIpv6, table::proto::kUdp, v6("2001:db8::10"), v6("2001:db8:1::53"), 5353, 53);
  r.reply = tuple(L3::kIpv6, table::proto::kUdp, v6("fd00::53"), v6("2001:db8::10"), 5300, 5353);
  r.status = st::kSeenReply | st::kConfirmed | st::kDstNat | st::kSrcNatDone | st::kDstNatDone;
  r.timeoutSec = 29;
  NfctPtr entry = kernelEntry(r);
  const auto back = fromKernel(entry.get());
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, r);

  NfctPtr ct(nfct_new());
  toKernel(r, 29, ct.get(), false);
  const auto* dnat = static_cast<const uint8_t*>(nfct_get_attr(ct.get(), ATTR_DNAT_IPV6));
  ASSERT_NE(dnat, nullptr);
  EXPECT_EQ(std::memcmp(dnat, r.reply.src.bytes.data(), 16), 0);
  EXPECT_EQ(ntohs(nfct_get_attr_u16(ct.get(), ATTR_DNAT_PORT)), 5300);
  EXPECT_FALSE(nfct_attr_is_set(ct.get(), ATTR_SNAT_IPV6));
  EXPECT_FALSE(nfct_attr_is_set(ct.get(), ATTR_TCP_STATE));
  const auto* rsrc = static_cast<const uint8_t*>(nfct_get_attr(ct.get(), ATTR_REPL_IPV6_SRC));
  ASSERT_NE(rsrc, nullptr);
  EXPECT_EQ(std::memcmp(rsrc, r.key.orig.dst.bytes.data(), 16), 0);
  EXPECT_EQ(nfct_get_attr_u32(ct.get(), ATTR_STATUS), st::kSeenReply);
}

TEST(KernelConvert, IcmpEchoRoundTrip) {
  replication::FlowRecord r;
  r.key.orig = tuple(L3::kIpv4, table::proto::kIcmp, v4(10, 0, 0, 1), v4(10, 0, 0, 2), 777, 8 << 8);
  r.reply = inverse(r.key.orig);  // echo reply, same id
  EXPECT_EQ(r.reply.dport, 0);
  r.status = st::kSeenReply | st::kConfirmed;
  r.timeoutSec = 30;
  NfctPtr entry = kernelEntry(r);
  const auto back = fromKernel(entry.get());
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, r);

  NfctPtr ct(nfct_new());
  toKernel(r, 30, ct.get(), false);
  EXPECT_EQ(nfct_get_attr_u8(ct.get(), ATTR_ICMP_TYPE), 8);
  EXPECT_EQ(nfct_get_attr_u8(ct.get(), ATTR_ICMP_CODE), 0);
  EXPECT_EQ(ntohs(nfct_get_attr_u16(ct.get(), ATTR_ICMP_ID)), 777);
  EXPECT_FALSE(nfct_attr_is_set(ct.get(), ATTR_SNAT_IPV4));
  EXPECT_FALSE(nfct_attr_is_set(ct.get(), ATTR_SNAT_PORT));
  EXPECT_FALSE(nfct_attr_is_set(ct.get(), ATTR_ORIG_PORT_SRC));

  // ICMPv6 echo request 128 answers with 129; an SNAT'd one keeps its id (no port NAT).
  replication::FlowRecord r6;
  r6.key.orig = tuple(L3::kIpv6, table::proto::kIcmpv6, v6("fd00::1"), v6("fd00::2"), 9, 128 << 8);
  r6.reply = inverse(r6.key.orig);
  r6.reply.dst = v6("fd00::99");
  r6.status = st::kSeenReply | st::kConfirmed | st::kSrcNat;
  NfctPtr e6 = kernelEntry(r6);
  const auto back6 = fromKernel(e6.get());
  ASSERT_TRUE(back6);
  EXPECT_EQ(back6->reply.dport, 129 << 8);
  EXPECT_EQ(*back6, r6);
  NfctPtr ct6(nfct_new());
  toKernel(r6, 30, ct6.get(), false);
  EXPECT_TRUE(nfct_attr_is_set(ct6.get(), ATTR_SNAT_IPV6));
  EXPECT_FALSE(nfct_attr_is_set(ct6.get(), ATTR_SNAT_PORT));
}

// The library reports the original's ICMP id only; NAT may have given the reply another one.
// fromKernel(ct, msg) reads it from the message.
TEST(KernelConvert, IcmpReplyIdFromTheMessage) {
  replication::FlowRecord r;
  r.key.orig = tuple(L3::kIpv4, table::proto::kIcmp, v4(10, 0, 0, 1), v4(10, 0, 0, 2), 777, 8 << 8);
  r.reply = inverse(r.key.orig);
  r.reply.dst = v4(203, 0, 113, 1);
  r.status = st::kSeenReply | st::kConfirmed | st::kSrcNat;
  r.timeoutSec = 30;
  NfctPtr entry = kernelEntry(r);
  std::array<char, 4096> buf{};
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
  nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
  auto* nfh = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfh->nfgen_family = AF_INET;
  ASSERT_EQ(nfct_nlmsg_build(nlh, entry.get()), 0);
  // Patch the reply tuple's id to 555, as masquerade would have.
  auto find = [](void* first, int len, uint16_t type) -> nlattr* {
    for (auto* a = static_cast<nlattr*>(first); mnl_attr_ok(a, len); a = mnl_attr_next(a)) {
      if (mnl_attr_get_type(a) == type) return a;
      len -= static_cast<int>(MNL_ALIGN(a->nla_len));
    }
    return nullptr;
  };
  auto* first = static_cast<char*>(mnl_nlmsg_get_payload_offset(nlh, sizeof(nfgenmsg)));
  nlattr* reply =
      find(first, static_cast<int>(reinterpret_cast<char*>(nlh) + nlh->nlmsg_len - first),
           CTA_TUPLE_REPLY);
  ASSERT_NE(reply, nullptr);
  nlattr* proto = find(mnl_attr_get_payload(reply),
                       static_cast<int>(mnl_attr_get_payload_len(reply)), CTA_TUPLE_PROTO);
  ASSERT_NE(proto, nullptr);
  nlattr* id = find(mnl_attr_get_payload(proto), static_cast<int>(mnl_attr_get_payload_len(proto)),
                    CTA_PROTO_ICMP_ID);
  ASSERT_NE(id, nullptr);
  const uint16_t patched = htons(555);
  std::memcpy(mnl_attr_get_payload(id), &patched, sizeof patched);

  NfctPtr ct(nfct_new());
  ASSERT_EQ(nfct_nlmsg_parse(nlh, ct.get()), 0);
  EXPECT_EQ(fromKernel(ct.get())->reply.sport, 777);  // derived: the library has no getter
  const auto back = fromKernel(ct.get(), nlh);
  ASSERT_TRUE(back);
  r.reply.sport = 555;
  EXPECT_EQ(*back, r);

  // toKernel leaves the id pin to the sink's message (the library builds NAT ports for TCP and
  // UDP only): the SNAT address is set, no port.
  NfctPtr out(nfct_new());
  toKernel(r, 30, out.get(), false);
  EXPECT_TRUE(nfct_attr_is_set(out.get(), ATTR_SNAT_IPV4));
  EXPECT_FALSE(nfct_attr_is_set(out.get(), ATTR_SNAT_PORT));
}

TEST(KernelConvert, RelatedFlowCarriesItsMaster) {
  replication::FlowRecord r;
  r.key.orig = tuple(L3::kIpv4, table::proto::kTcp, v4(192, 0, 2, 9), v4(10, 0, 0, 1), 20, 50000);
  r.reply = inverse(r.key.orig);
  r.status = st::kExpected | st::kSeenReply | st::kConfirmed;
  r.tcpState = static_cast<uint8_t>(table::TcpState::kSynRecv);
  r.timeoutSec = 60;
  r.master = tuple(L3::kIpv4, table::proto::kTcp, v4(10, 0, 0, 1), v4(192, 0, 2, 9), 40000, 21);
  NfctPtr entry = kernelEntry(r);
  const auto back = fromKernel(entry.get());
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, r);

  NfctPtr ct(nfct_new());
  toKernel(r, 60, ct.get(), false);
  EXPECT_EQ(nfct_get_attr_u8(ct.get(), ATTR_MASTER_L4PROTO), table::proto::kTcp);
  EXPECT_EQ(nfct_get_attr_u32(ct.get(), ATTR_MASTER_IPV4_SRC), be32(r.master->src));
  EXPECT_EQ(ntohs(nfct_get_attr_u16(ct.get(), ATTR_MASTER_PORT_DST)), 21);
  // The kernel sets EXPECTED itself from the master; sending it on create is EBUSY.
  EXPECT_EQ(nfct_get_attr_u32(ct.get(), ATTR_STATUS), st::kSeenReply);

  // A helper name travels on create; the kernel marks such an entry IPS_HELPER itself.
  replication::FlowRecord ftp = r;
  ftp.master.reset();
  ftp.status = st::kSeenReply | st::kAssured;
  ftp.helper = 1;
  NfctPtr h(nfct_new());
  toKernel(ftp, 60, h.get(), false);
  EXPECT_STREQ(static_cast<const char*>(nfct_get_attr(h.get(), ATTR_HELPER_NAME)), "ftp");
  ftp.helper = 2;
  NfctPtr h2(nfct_new());
  toKernel(ftp, 60, h2.get(), false);
  EXPECT_STREQ(static_cast<const char*>(nfct_get_attr(h2.get(), ATTR_HELPER_NAME)), "tftp");
}

// Every helper of the kernel travels by name, not only ftp and tftp; one the list does not know
// (a userspace helper) is left off rather than misnamed.
TEST(KernelConvert, EveryKernelHelperByName) {
  replication::FlowRecord r;
  r.key.orig = tuple(L3::kIpv4, table::proto::kUdp, v4(10, 0, 0, 1), v4(192, 0, 2, 9), 5060, 5060);
  r.reply = inverse(r.key.orig);
  r.status = st::kSeenReply | st::kConfirmed;
  r.timeoutSec = 30;
  for (const char* name : {"ftp", "tftp", "sip", "RAS", "Q.931", "H.245", "irc", "pptp", "amanda",
                           "sane", "snmp", "snmp_trap", "netbios-ns"}) {
    NfctPtr entry = kernelEntry(r);
    nfct_set_attr(entry.get(), ATTR_HELPER_NAME, name);
    const auto back = fromKernel(throughMessage(entry.get()).get());
    ASSERT_TRUE(back) << name;
    EXPECT_EQ(table::helperName(back->helper), name);
    NfctPtr ct(nfct_new());
    toKernel(*back, 30, ct.get(), false);
    EXPECT_STREQ(static_cast<const char*>(nfct_get_attr(ct.get(), ATTR_HELPER_NAME)), name);
  }
  NfctPtr entry = kernelEntry(r);
  nfct_set_attr(entry.get(), ATTR_HELPER_NAME, "my-userspace-helper");
  const auto back = fromKernel(entry.get());
  ASSERT_TRUE(back);
  EXPECT_EQ(back->helper, 0);
}

// An FTP control flow whose PORT line NAT rewrote to another length: both directions' offsets
// come out of the kernel's entry and go back into a create and into an update (the kernel takes
// them on both and then sets SEQ_ADJUST itself).
TEST(KernelConvert, SequenceAdjustmentBothWays) {
  replication::FlowRecord r;
  r.key.orig = tuple(L3::kIpv4, table::proto::kTcp, v4(10, 1, 0, 100), v4(192, 0, 2, 10), 40000, 21);
  r.reply = r.key.orig;
  r.reply.src = r.key.orig.dst;
  r.reply.dst = v4(192, 0, 2, 1);
  r.reply.sport = 21;
  r.reply.dport = 40000;
  r.status = st::kSeenReply | st::kAssured | st::kConfirmed | st::kSrcNat | st::kSeqAdjust;
  r.tcpState = static_cast<uint8_t>(table::TcpState::kEstablished);
  r.timeoutSec = 300;
  r.helper = 1;
  r.seqAdj[0] = {0xfffffff0u, -1, -2};  // the line shrank twice, near the wrap
  r.seqAdj[1] = {12345u, 0, 0};
  NfctPtr entry = kernelEntry(r);
  nfct_set_attr(entry.get(), ATTR_HELPER_NAME, "ftp");
  for (int d = 0; d < 2; ++d) {
    nfct_set_attr_u32(entry.get(),
                      d == 0 ? ATTR_ORIG_NAT_SEQ_CORRECTION_POS : ATTR_REPL_NAT_SEQ_CORRECTION_POS,
                      r.seqAdj[d].correctionPos);
    nfct_set_attr_u32(entry.get(),
                      d == 0 ? ATTR_ORIG_NAT_SEQ_OFFSET_BEFORE : ATTR_REPL_NAT_SEQ_OFFSET_BEFORE,
                      static_cast<uint32_t>(r.seqAdj[d].offsetBefore));
    nfct_set_attr_u32(entry.get(),
                      d == 0 ? ATTR_ORIG_NAT_SEQ_OFFSET_AFTER : ATTR_REPL_NAT_SEQ_OFFSET_AFTER,
                      static_cast<uint32_t>(r.seqAdj[d].offsetAfter));
  }
  const auto back = fromKernel(throughMessage(entry.get()).get());
  ASSERT_TRUE(back);
  EXPECT_EQ(back->seqAdj[0], r.seqAdj[0]);
  EXPECT_EQ(back->seqAdj[1], r.seqAdj[1]);

  NfctPtr create(nfct_new());
  toKernel(r, 300, create.get(), false);
  const auto sent = fromKernel(throughMessage(create.get()).get());
  ASSERT_TRUE(sent);
  EXPECT_EQ(sent->seqAdj[0], r.seqAdj[0]);
  EXPECT_EQ(sent->seqAdj[1], r.seqAdj[1]);
  // An update has no reply tuple, so read the attributes of the message back directly.
  NfctPtr update(nfct_new());
  toKernel(r, 300, update.get(), true);
  NfctPtr u = throughMessage(update.get());
  EXPECT_EQ(nfct_get_attr_u32(u.get(), ATTR_ORIG_NAT_SEQ_CORRECTION_POS), 0xfffffff0u);
  EXPECT_EQ(static_cast<int32_t>(nfct_get_attr_u32(u.get(), ATTR_ORIG_NAT_SEQ_OFFSET_AFTER)), -2);
  EXPECT_EQ(nfct_get_attr_u32(u.get(), ATTR_REPL_NAT_SEQ_CORRECTION_POS), 12345u);
  // Without SEQ_ADJUST nothing is sent: an entry that never had a helper rewrite stays plain.
  r.status &= ~st::kSeqAdjust;
  NfctPtr plain(nfct_new());
  toKernel(r, 300, plain.get(), false);
  EXPECT_FALSE(nfct_attr_is_set(plain.get(), ATTR_ORIG_NAT_SEQ_CORRECTION_POS));
}

// conntrackd carries SCTP and DCCP state; so do we, in both directions of the conversion.
TEST(KernelConvert, SctpAndDccpState) {
  replication::FlowRecord sctp;
  sctp.key.orig = tuple(L3::kIpv4, 132, v4(10, 0, 0, 1), v4(192, 0, 2, 9), 3868, 3868);
  sctp.reply = inverse(sctp.key.orig);
  sctp.status = st::kSeenReply | st::kAssured | st::kConfirmed;
  sctp.timeoutSec = 400;
  sctp.sctpState = 4;  // ESTABLISHED
  sctp.sctpVtag[0] = 0x11223344;
  sctp.sctpVtag[1] = 0xaabbccdd;
  NfctPtr e1(nfct_new());
  toKernel(sctp, 400, e1.get(), false);
  auto back = fromKernel(throughMessage(e1.get()).get());
  ASSERT_TRUE(back);
  EXPECT_EQ(back->sctpState, 4);
  EXPECT_EQ(back->sctpVtag[0], 0x11223344u);
  EXPECT_EQ(back->sctpVtag[1], 0xaabbccddu);

  replication::FlowRecord dccp;
  dccp.key.orig = tuple(L3::kIpv6, 33, v6("2001:db8::1"), v6("2001:db8::2"), 5001, 5002);
  dccp.reply = inverse(dccp.key.orig);
  dccp.status = st::kSeenReply | st::kConfirmed;
  dccp.timeoutSec = 100;
  dccp.dccpState = 4;  // OPEN
  dccp.dccpRole = 1;
  dccp.dccpHandshakeSeq = 0x0000123456789abcull;
  NfctPtr e2(nfct_new());
  toKernel(dccp, 100, e2.get(), false);
  back = fromKernel(throughMessage(e2.get()).get());
  ASSERT_TRUE(back);
  EXPECT_EQ(back->dccpState, 4);
  EXPECT_EQ(back->dccpRole, 1);
  EXPECT_EQ(back->dccpHandshakeSeq, 0x0000123456789abcull);
}

TEST(KernelConvert, MarkLabelsAndZone) {
  replication::FlowRecord r;
  r.key.orig = tuple(L3::kIpv4, table::proto::kUdp, v4(10, 1, 1, 1), v4(10, 2, 2, 2), 1000, 2000);
  r.key.zone = 7;
  r.reply = inverse(r.key.orig);
  r.status = st::kSeenReply | st::kAssured | st::kConfirmed;
  r.timeoutSec = 120;
  r.mark = 0xdeadbeef;
  r.labels[0] = 0x01;   // bit 0
  r.labels[1] = 0x02;   // bit 9
  r.labels[15] = 0x80;  // bit 127
  NfctPtr entry = kernelEntry(r);
  const auto back = fromKernel(entry.get());
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, r);

  NfctPtr ct(nfct_new());
  toKernel(r, 120, ct.get(), false);
  EXPECT_EQ(nfct_get_attr_u16(ct.get(), ATTR_ZONE), 7);
  EXPECT_EQ(nfct_get_attr_u32(ct.get(), ATTR_MARK), 0xdeadbeefu);
  const auto* b = static_cast<const nfct_bitmask*>(nfct_get_attr(ct.get(), ATTR_CONNLABELS));
  ASSERT_NE(b, nullptr);
  for (unsigned bit = 0; bit < 128; ++bit) {
    EXPECT_EQ(nfct_bitmask_test_bit(b, bit) != 0, bit == 0 || bit == 9 || bit == 127) << bit;
  }
  NfctPtr sent = throughMessage(ct.get());
  const auto back2 = fromKernel(sent.get());
  ASSERT_TRUE(back2);
  EXPECT_EQ(back2->labels, r.labels);
  EXPECT_EQ(back2->key.zone, 7);
}

TEST(KernelConvert, EntriesThatCannotBeCarried) {
  NfctPtr empty(nfct_new());
  EXPECT_FALSE(fromKernel(empty.get()));
  NfctPtr noReply(nfct_new());
  nfct_set_attr_u8(noReply.get(), ATTR_L3PROTO, AF_INET);
  nfct_set_attr_u8(noReply.get(), ATTR_L4PROTO, table::proto::kUdp);
  nfct_set_attr_u32(noReply.get(), ATTR_ORIG_IPV4_SRC, htonl(0x0a000001));
  nfct_set_attr_u32(noReply.get(), ATTR_ORIG_IPV4_DST, htonl(0x0a000002));
  EXPECT_FALSE(fromKernel(noReply.get()));
}

// ---- filter ------------------------------------------------------------------------------

KernelFilter makeFilter(const conf::KernelSettings& s) {
  auto f = KernelFilter::make(s);
  EXPECT_TRUE(std::holds_alternative<KernelFilter>(f)) << std::get<std::string>(f);
  return std::get<KernelFilter>(std::move(f));
}

TEST(KernelFilterTest, EmptyAcceptsEverything) {
  const KernelFilter f = makeFilter({});
  EXPECT_TRUE(f.accepts(tcpSnat()));
}

TEST(KernelFilterTest, Protocols) {
  conf::KernelSettings s;
  s.protocols = {table::proto::kUdp, table::proto::kIcmp};
  const KernelFilter f = makeFilter(s);
  replication::FlowRecord r = tcpSnat();
  EXPECT_FALSE(f.accepts(r));
  EXPECT_FALSE(f.acceptsIdentity(r));
  r.key.orig.l4 = r.reply.l4 = table::proto::kUdp;
  EXPECT_TRUE(f.accepts(r));
}

TEST(KernelFilterTest, IgnoredPrefixesMatchEitherTuple) {
  conf::KernelSettings s;
  s.ignoreAddresses = {"203.0.113.0/24", "fd00:1::/32", "10.9.9.9"};
  const KernelFilter f = makeFilter(s);
  replication::FlowRecord r = tcpSnat();  // reply.dst 203.0.113.1: the SNAT address
  EXPECT_FALSE(f.accepts(r));
  EXPECT_FALSE(f.acceptsIdentity(r));
  r.reply.dst = v4(203, 0, 114, 1);
  EXPECT_TRUE(f.accepts(r));
  r.key.orig.src = v4(10, 9, 9, 9);  // a plain address is a /32
  EXPECT_FALSE(f.accepts(r));
  r.key.orig.src = v4(10, 9, 9, 8);
  EXPECT_TRUE(f.accepts(r));

  replication::FlowRecord r6;
  r6.key.orig = tuple(L3::kIpv6, table::proto::kUdp, v6("fd00:1:ffff::1"), v6("2001:db8::1"), 1, 2);
  r6.reply = inverse(r6.key.orig);
  EXPECT_FALSE(f.accepts(r6));
  r6.key.orig.src = r6.reply.dst = v6("fd00:2::1");
  EXPECT_TRUE(f.accepts(r6));
  // A v4 prefix never matches a v6 flow whose bytes happen to start the same.
  r6.key.orig.src = r6.reply.dst = v6("cb00:7100::1");  // 203.0.113 as the first bytes
  EXPECT_TRUE(f.accepts(r6));
}

TEST(KernelFilterTest, OddPrefixLengths) {
  conf::KernelSettings s;
  s.ignoreAddresses = {"10.0.0.0/9", "0.0.0.0/0"};
  const KernelFilter all = makeFilter(s);
  EXPECT_FALSE(all.accepts(tcpSnat()));
  s.ignoreAddresses = {"10.0.0.0/9"};
  const KernelFilter f = makeFilter(s);
  replication::FlowRecord r = tcpSnat();
  r.key.orig.src = r.reply.dst = v4(10, 127, 255, 255);
  EXPECT_FALSE(f.accepts(r));
  r.key.orig.src = r.reply.dst = v4(10, 128, 0, 0);
  EXPECT_TRUE(f.accepts(r));
}

TEST(KernelFilterTest, TcpStatesOnlyForTcpAndNotForIdentity) {
  conf::KernelSettings s;
  s.tcpStates = {static_cast<uint8_t>(table::TcpState::kEstablished)};
  const KernelFilter f = makeFilter(s);
  replication::FlowRecord r = tcpSnat();
  EXPECT_TRUE(f.accepts(r));
  r.tcpState = static_cast<uint8_t>(table::TcpState::kTimeWait);
  EXPECT_FALSE(f.accepts(r));
  EXPECT_TRUE(f.acceptsIdentity(r));  // its DESTROY still goes through
  replication::FlowRecord udp;
  udp.key.orig = tuple(L3::kIpv4, table::proto::kUdp, v4(1, 1, 1, 1), v4(2, 2, 2, 2), 1, 2);
  udp.reply = inverse(udp.key.orig);
  EXPECT_TRUE(f.accepts(udp));
}

TEST(KernelFilterTest, BadCidrIsAnError) {
  for (const char* bad : {"10.0.0.0/33", "fd00::/129", "nonsense", "10.0.0.0/", "10.0.0.0/8x"}) {
    conf::KernelSettings s;
    s.ignoreAddresses = {bad};
    const auto f = KernelFilter::make(s);
    ASSERT_TRUE(std::holds_alternative<std::string>(f)) << bad;
    EXPECT_NE(std::get<std::string>(f).find(bad), std::string::npos);
  }
}

}  // namespace
}  // namespace ctsync::syncd
