#include "replication/codec.hpp"

#include <capnp/message.h>
#include <capnp/serialize-packed.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>
#include <kj/io.h>

#include <cstdio>
#include <functional>
#include <random>

#include "table/tcp.hpp"
#include "table/types.hpp"
#include "wire.capnp.h"

namespace ctsync::replication {
namespace {

using table::Addr;
using table::L3;
using table::Tuple;

constexpr size_t kMtuPayload = 1472;  // 1500 - IPv4 - UDP, before auth

Tuple tcp4(uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport) {
  Tuple t;
  t.l3 = L3::kIpv4;
  t.l4 = table::proto::kTcp;
  t.src = Addr::v4(src);
  t.dst = Addr::v4(dst);
  t.sport = sport;
  t.dport = dport;
  return t;
}

Addr v6(uint64_t hi, uint64_t lo) {
  Addr a;
  for (int i = 0; i < 8; ++i) {
    a.bytes[static_cast<size_t>(i)] = static_cast<uint8_t>(hi >> (56 - 8 * i));
    a.bytes[static_cast<size_t>(8 + i)] = static_cast<uint8_t>(lo >> (56 - 8 * i));
  }
  return a;
}

Tuple tcp6(Addr src, Addr dst, uint16_t sport, uint16_t dport) {
  Tuple t;
  t.l3 = L3::kIpv6;
  t.l4 = table::proto::kTcp;
  t.src = src;
  t.dst = dst;
  t.sport = sport;
  t.dport = dport;
  return t;
}

Tuple inverted(const Tuple& t) {
  return *table::invertTuple(t);
}

FlowRecord tcpFlow(const Tuple& orig, const Tuple& reply) {
  FlowRecord f;
  f.key.orig = orig;
  f.reply = reply;
  f.status = table::status::kSeenReply | table::status::kAssured | table::status::kConfirmed;
  f.tcpState = static_cast<uint8_t>(table::TcpState::kEstablished);
  f.tcpFlags[0] = table::tcpflag::kWindowScale | table::tcpflag::kSackPerm;
  f.tcpFlags[1] = table::tcpflag::kWindowScale | table::tcpflag::kMaxackSet;
  f.tcpScale[0] = 7;
  f.tcpScale[1] = 9;
  f.timeoutSec = 431'999;
  f.version = Version{3, (uint64_t{1'732'000'000'123} << 16) | 5, 2};
  return f;
}

// SNAT to 203.0.113.9:40000.
FlowRecord snatFlow() {
  const Tuple orig = tcp4(0x0a000105, 0x5db8d822, 51234, 443);
  Tuple reply = inverted(orig);
  reply.dst = Addr::v4(0xcb007109);
  reply.dport = 40000;
  FlowRecord f = tcpFlow(orig, reply);
  f.status |= table::status::kSrcNat | table::status::kSrcNatDone;
  return f;
}

Header header() {
  return Header{kProtocolVersion, 0xc1a57e5u, 2, 0x1122334455667788ull, 77};
}

std::vector<uint8_t> encodeOne(const std::vector<Record>& records, const Header& h = header(),
                               size_t maxBytes = kMtuPayload) {
  DatagramBuilder b(maxBytes);
  for (const Record& r : records) EXPECT_TRUE(b.add(r));
  EXPECT_EQ(b.size(), records.size());
  auto bytes = b.finish(h);
  EXPECT_TRUE(b.empty());
  EXPECT_LE(bytes.size(), maxBytes);
  return bytes;
}

Decoded decodeOk(const std::vector<uint8_t>& bytes) {
  auto d = decode(bytes);
  if (const auto* e = std::get_if<DecodeError>(&d)) {
    ADD_FAILURE() << "decode failed: " << decodeErrorName(*e);
    return {};
  }
  return std::get<Decoded>(std::move(d));
}

void expectRoundTrip(const std::vector<Record>& records) {
  const Decoded d = decodeOk(encodeOne(records));
  EXPECT_EQ(d.header, header());
  ASSERT_EQ(d.records.size(), records.size());
  for (size_t i = 0; i < records.size(); ++i) EXPECT_EQ(d.records[i], records[i]) << "record " << i;
}

void expectFlowRoundTrip(const FlowRecord& f) {
  const Decoded d = decodeOk(encodeOne({f}));
  ASSERT_EQ(d.records.size(), 1u);
  const auto* g = std::get_if<FlowRecord>(&d.records[0]);
  ASSERT_NE(g, nullptr);
  // Field by field, so a failure says which.
  EXPECT_EQ(g->key.orig, f.key.orig);
  EXPECT_EQ(g->key.zone, f.key.zone);
  EXPECT_EQ(g->reply, f.reply);
  EXPECT_EQ(g->status, f.status);
  EXPECT_EQ(g->tcpState, f.tcpState);
  EXPECT_EQ(g->tcpFlags[0], f.tcpFlags[0]);
  EXPECT_EQ(g->tcpFlags[1], f.tcpFlags[1]);
  EXPECT_EQ(g->tcpScale[0], f.tcpScale[0]);
  EXPECT_EQ(g->tcpScale[1], f.tcpScale[1]);
  EXPECT_EQ(g->timeoutSec, f.timeoutSec);
  EXPECT_EQ(g->mark, f.mark);
  EXPECT_EQ(g->labels, f.labels);
  EXPECT_EQ(g->helper, f.helper);
  EXPECT_EQ(g->master, f.master);
  EXPECT_EQ(g->seqAdj[0], f.seqAdj[0]);
  EXPECT_EQ(g->seqAdj[1], f.seqAdj[1]);
  EXPECT_EQ(g->sctpState, f.sctpState);
  EXPECT_EQ(g->sctpVtag[0], f.sctpVtag[0]);
  EXPECT_EQ(g->sctpVtag[1], f.sctpVtag[1]);
  EXPECT_EQ(g->dccpState, f.dccpState);
  EXPECT_EQ(g->dccpRole, f.dccpRole);
  EXPECT_EQ(g->dccpHandshakeSeq, f.dccpHandshakeSeq);
  EXPECT_EQ(g->version, f.version);
  EXPECT_EQ(*g, f);
}

TEST(CodecTest, Ipv4FlowWithoutNat) {
  const Tuple orig = tcp4(0x0a000105, 0x5db8d822, 51234, 443);
  expectFlowRoundTrip(tcpFlow(orig, inverted(orig)));
}

TEST(CodecTest, Ipv4FlowSnatDnatAndBoth) {
  expectFlowRoundTrip(snatFlow());
  const Tuple orig = tcp4(0x08080808, 0xcb007109, 40001, 80);
  Tuple dnat = inverted(orig);
  dnat.src = Addr::v4(0xc0a80a0a);
  dnat.sport = 8080;
  expectFlowRoundTrip(tcpFlow(orig, dnat));
  Tuple both = dnat;
  both.dst = Addr::v4(0x0a0a0a0a);
  both.dport = 1;
  expectFlowRoundTrip(tcpFlow(orig, both));
}

TEST(CodecTest, Ipv4FlowAllFieldsSet) {
  FlowRecord f = snatFlow();
  f.key.zone = 65535;
  f.mark = 0xdeadbeef;
  for (size_t i = 0; i < 16; ++i) f.labels[i] = static_cast<uint8_t>(i * 17 + 1);
  f.helper = 1;
  f.master = tcp4(0x0a000105, 0x5db8d822, 40000, 21);
  f.status = 0xffffffff;
  f.version = Version{0xffffffff, ~uint64_t{0}, 0xffff};
  f.timeoutSec = 0xffffffff;
  expectFlowRoundTrip(f);
  f.labels = {};
  f.labels[15] = 0x80;  // only the last label bit
  expectFlowRoundTrip(f);
}

TEST(CodecTest, Ipv6FlowsWithAndWithoutNatAndMaster) {
  const Addr a = v6(0x20010db800000001ull, 0x0000000000000042ull);
  const Addr b = v6(0x2a0014500400080cull, 0x000000000000200eull);
  const Tuple orig = tcp6(a, b, 50000, 443);
  expectFlowRoundTrip(tcpFlow(orig, inverted(orig)));
  Tuple nat = inverted(orig);
  nat.dst = v6(0x20010db8ffff0000ull, 0x1ull);  // NPTv6-like rewrite
  nat.dport = 61000;
  FlowRecord f = tcpFlow(orig, nat);
  f.master = tcp6(a, b, 50001, 21);
  f.helper = 1;
  f.labels[0] = 1;
  expectFlowRoundTrip(f);
  // An IPv4 flow with an IPv6 master is nonsense for conntrack, but must not be lost.
  FlowRecord g = snatFlow();
  g.master = orig;
  expectFlowRoundTrip(g);
}

TEST(CodecTest, NonTcpFlows) {
  Tuple udp = tcp4(0x0a000001, 0x08080808, 5353, 53);
  udp.l4 = table::proto::kUdp;
  FlowRecord f = tcpFlow(udp, inverted(udp));
  f.tcpState = 0;
  f.tcpFlags[0] = f.tcpFlags[1] = f.tcpScale[0] = f.tcpScale[1] = 0;
  f.timeoutSec = 30;
  expectFlowRoundTrip(f);
  // ICMP echo: the inverse changes the type (8 -> 0), so the reply costs nothing.
  Tuple icmp = tcp4(0x0a000001, 0x08080808, 0x1234, 8 << 8);
  icmp.l4 = table::proto::kIcmp;
  f = tcpFlow(icmp, inverted(icmp));
  f.tcpState = 0;
  expectFlowRoundTrip(f);
  // An ICMP type without inverse: the reply is carried against a plain swap.
  icmp.dport = 3 << 8 | 1;
  Tuple reply = icmp;
  std::swap(reply.src, reply.dst);
  f.key.orig = icmp;
  f.reply = reply;
  expectFlowRoundTrip(f);
  // Generic protocol (GRE without helper): no ports.
  Tuple gre = tcp4(0x0a000001, 0x0a000002, 0, 0);
  gre.l4 = 47;
  f = tcpFlow(gre, inverted(gre));
  f.tcpState = 0;
  expectFlowRoundTrip(f);
}

// Whether the encoded flow record (the only record of `bytes`) has its FlowExtra pointer set.
bool wireHasExtra(const std::vector<uint8_t>& bytes) {
  kj::ArrayInputStream in(kj::arrayPtr(bytes.data(), bytes.size()));
  capnp::PackedMessageReader reader(in);
  return reader.getRoot<wire::Datagram>().getRecords()[0].getFlow().hasExtra();
}

TEST(CodecTest, SeqAdjustSctpAndDccpStateRoundTrip) {
  FlowRecord f = snatFlow();
  EXPECT_FALSE(wireHasExtra(encodeOne({f})));  // an ordinary flow pays nothing for them
  // FTP's PORT rewritten shorter in one direction, longer in the other; extreme values.
  f.status |= table::status::kSeqAdjust;
  f.seqAdj[0] = SeqAdjust{0xffffffff, -1, INT32_MIN};
  f.seqAdj[1] = SeqAdjust{1, INT32_MAX, 7};
  EXPECT_TRUE(wireHasExtra(encodeOne({f})));
  expectFlowRoundTrip(f);
  f.seqAdj[0] = SeqAdjust{};  // one direction only
  expectFlowRoundTrip(f);
  f.seqAdj[1] = SeqAdjust{0, -3, 0};  // only a negative offset before the position
  expectFlowRoundTrip(f);

  FlowRecord sctp = snatFlow();
  sctp.key.orig.l4 = sctp.reply.l4 = 132;
  sctp.tcpState = 0;
  sctp.sctpState = 4;  // ESTABLISHED
  sctp.sctpVtag[0] = 0xffffffff;
  sctp.sctpVtag[1] = 0x12345678;
  expectFlowRoundTrip(sctp);
  sctp.sctpState = 9;
  sctp.sctpVtag[0] = 0;
  expectFlowRoundTrip(sctp);

  FlowRecord dccp = snatFlow();
  dccp.key.orig.l4 = dccp.reply.l4 = 33;
  dccp.tcpState = 0;
  dccp.dccpState = 4;  // OPEN
  dccp.dccpRole = 1;
  dccp.dccpHandshakeSeq = ~uint64_t{0} >> 16;  // DCCP sequence numbers have 48 bits
  expectFlowRoundTrip(dccp);
  dccp.dccpHandshakeSeq = ~uint64_t{0};
  dccp.dccpState = 9;
  expectFlowRoundTrip(dccp);
  dccp.dccpState = 0;
  dccp.dccpHandshakeSeq = 0;  // the role alone (a client is 0: then nothing is sent at all)
  expectFlowRoundTrip(dccp);

  // IPv6 with every out-of-line part at once.
  FlowRecord g = tcpFlow(tcp6(v6(~0ull, ~0ull), v6(~0ull, 1), 1, 2), Tuple{});
  g.master = tcp6(v6(~0ull, ~0ull), v6(~0ull, ~0ull), 3, 4);
  g.labels.fill(0xff);
  g.seqAdj[0] = SeqAdjust{~0u, INT32_MIN, INT32_MIN};
  g.seqAdj[1] = SeqAdjust{~0u, INT32_MIN, INT32_MIN};
  g.sctpState = 9;
  g.sctpVtag[0] = g.sctpVtag[1] = ~0u;
  g.dccpState = 9;
  g.dccpRole = 1;
  g.dccpHandshakeSeq = ~uint64_t{0};
  expectFlowRoundTrip(g);
}

TEST(CodecTest, ReplyWithOtherFamilyOrProtocolIsCarriedWhole) {
  FlowRecord f = snatFlow();
  f.reply = Tuple{};  // a default reply, as a careless caller might leave it
  expectFlowRoundTrip(f);
  f.reply = tcp6(v6(1, 2), v6(3, 4), 5, 6);
  expectFlowRoundTrip(f);
  f.reply = inverted(f.key.orig);
  f.reply.l4 = table::proto::kUdp;
  expectFlowRoundTrip(f);
}

TEST(CodecTest, DeletesRoundTrip) {
  FlowDelete d{FlowKey{tcp4(0x0a000105, 0x5db8d822, 51234, 443), 7}, Version{1, 99, 3}};
  FlowDelete d6{FlowKey{tcp6(v6(~0ull, 1), v6(2, ~0ull), 1, 65535), 0},
                Version{0, ~uint64_t{0}, 0xffff}};
  expectRoundTrip({d, d6});
}

// An FTP data-connection expectation of `master` (PORT or 227: any source port, one
// destination port), as the kernel's ftp helper makes it.
ExpectRecord ftpExpect(const Tuple& master, uint16_t dataPort) {
  ExpectRecord e;
  e.master = master;
  e.key.expected = master;
  e.key.expected.sport = 0;  // wildcard
  e.key.expected.dport = dataPort;
  e.mask = master;
  e.mask.src = master.l3 == L3::kIpv4 ? Addr::v4(0xffffffff) : v6(~0ull, ~0ull);
  e.mask.dst = e.mask.src;
  e.mask.sport = 0;
  e.mask.dport = 0xffff;
  e.timeoutSec = 300;
  e.helper = 1;  // ftp
  e.fn = 1;      // nat-follow-master
  e.version = Version{0, (uint64_t{1'732'000'000'321} << 16) | 2, 2};
  return e;
}

TEST(CodecTest, ExpectationsRoundTripIpv4AndIpv6WithAndWithoutNat) {
  const Tuple m4 = tcp4(0x0a000105, 0x5db8d822, 51234, 21);
  ExpectRecord e4 = ftpExpect(m4, 40123);
  e4.key.zone = 3;
  expectRoundTrip({e4});
  ExpectRecord nat4 = e4;
  nat4.natTuple = tcp4(0, 0xcb007109, 0, 40123);  // where the helper's NAT points it
  nat4.natDir = 1;
  nat4.flags = expectflag::kPermanent | expectflag::kInactive | expectflag::kUserspace;
  nat4.cls = 0xffffffff;
  nat4.timeoutSec = 0xffffffff;
  nat4.version = Version{0xffffffff, ~uint64_t{0}, 0xffff};
  expectRoundTrip({nat4});

  const Tuple m6 = tcp6(v6(0x20010db800000001ull, 0x42), v6(0x2a0014500400080cull, 0x200e), 50000, 21);
  ExpectRecord e6 = ftpExpect(m6, 50001);
  expectRoundTrip({e6});
  ExpectRecord nat6 = e6;
  nat6.natTuple = tcp6(v6(0, 0), v6(0x20010db8ffff0000ull, 1), 0, 61000);
  expectRoundTrip({nat6});

  // Deletes, and a datagram that mixes them with flows: versions relative to the first record.
  const ExpectDelete d4{e4.key, Version{1, 99, 3}};
  const ExpectDelete d6{e6.key, Version{0, ~uint64_t{0}, 0xffff}};
  expectRoundTrip({d4, d6});
  expectRoundTrip({snatFlow(), nat4, d6, Alive{1}, e6, FlowDelete{FlowKey{m4, 0}, Version{}}});
  EXPECT_FALSE(encodeOne({e4}).empty());
}

TEST(CodecTest, ControlRecordsRoundTrip) {
  constexpr uint64_t kMax = ~uint64_t{0};
  expectRoundTrip({
      Ack{3, 0x1234567890abcdefull, 42},
      Ack{0xffff, kMax, kMax},
      Nack{4, 5, {{1, 1}, {7, 9}, {kMax - 1, kMax}}},
      Nack{4, 5, {}},
      Alive{kMax},
      Alive{0},
      ResyncRequest{9},
      BulkBegin{0xffffffff, kMax},
      BulkBegin{1, 0},
      BulkEnd{0xffffffff, kMax},
      Digest{0, 0xffffffff, kMax, 123456},
      Covered{{{1, 1}, {7, 9}, {kMax - 1, kMax}}},
      Covered{},
  });
}

TEST(CodecTest, MixedDatagramKeepsOrderAndVersionsAcrossWrap) {
  // hlc deltas are taken to the first record, modulo 2^64: both directions across the wrap.
  FlowRecord a = snatFlow();
  a.version.hlc = 5;
  FlowRecord b = snatFlow();
  b.version.hlc = ~uint64_t{0} - 3;
  b.version.node = 0x8001;
  FlowDelete c{a.key, Version{0, uint64_t{1} << 63, 1}};
  expectRoundTrip({Alive{3}, a, c, b, Ack{1, 2, 3}, a});
}

TEST(CodecTest, HeaderRoundTripsAndEmptyDatagram) {
  const Header h{kProtocolVersion, 0xffffffff, 0xffff, ~uint64_t{0}, ~uint64_t{0}};
  const Decoded d = decodeOk(encodeOne({}, h));
  EXPECT_EQ(d.header, h);
  EXPECT_TRUE(d.records.empty());
}

// ---- Size -------------------------------------------------------------------------------

struct Realistic {
  std::mt19937_64 rng;
  uint64_t hlcNow = uint64_t{1'732'000'000'000} << 16;
  uint64_t hlcSpread;  // how far back a record's version may be
  std::vector<uint32_t> natPool;
  std::vector<uint16_t> servicePorts{443, 443, 443, 80, 80, 22, 25, 993, 3389, 8443, 53, 123};

  Realistic(uint64_t seed, uint64_t spreadMs) : rng(seed), hlcSpread(spreadMs << 16) {
    for (int i = 0; i < 4; ++i) natPool.push_back(0xcb007100 + static_cast<uint32_t>(rng() % 250));
  }
  uint32_t u32(uint32_t lo, uint32_t hi) {
    return lo + static_cast<uint32_t>(rng() % (uint64_t{hi} - lo + 1));
  }

  FlowRecord flow(bool nat) {
    // Clients in a /16 behind the firewall, servers anywhere, ephemeral source ports.
    const uint32_t client = 0x0a000000 | u32(1, 0xfffe);
    const uint32_t server = u32(0x01000000, 0xdfffffff);
    const auto sport = static_cast<uint16_t>(u32(32768, 60999));
    const uint16_t dport = servicePorts[rng() % servicePorts.size()];
    const Tuple orig = tcp4(client, server, sport, dport);
    Tuple reply = inverted(orig);
    FlowRecord f = tcpFlow(orig, reply);
    if (nat) {  // SNAT / masquerade to a small pool, random port
      f.reply.dst = Addr::v4(natPool[rng() % natPool.size()]);
      f.reply.dport = static_cast<uint16_t>(u32(1024, 65535));
      f.status |= table::status::kSrcNat | table::status::kSrcNatDone;
    }
    static constexpr table::TcpState kStates[] = {
        table::TcpState::kEstablished, table::TcpState::kEstablished, table::TcpState::kEstablished,
        table::TcpState::kSynRecv,     table::TcpState::kFinWait,     table::TcpState::kTimeWait,
        table::TcpState::kCloseWait,   table::TcpState::kSynSent};
    const auto state = kStates[rng() % std::size(kStates)];
    f.tcpState = static_cast<uint8_t>(state);
    f.timeoutSec = state == table::TcpState::kEstablished ? u32(1, 432000) : u32(1, 120);
    f.tcpFlags[0] = static_cast<uint8_t>(rng() % 4 == 0 ? 0x03 : 0x23);
    f.tcpFlags[1] = static_cast<uint8_t>(rng() % 4 == 0 ? 0x03 : 0x23);
    f.tcpScale[0] = static_cast<uint8_t>(u32(0, 10));
    f.tcpScale[1] = static_cast<uint8_t>(u32(0, 10));
    f.version.generation = rng() % 20 == 0 ? 1 : 0;
    f.version.hlc = hlcNow - rng() % (hlcSpread + 1);
    f.version.node = 1;
    hlcNow += rng() % (uint64_t{1} << 16);  // time moves on
    return f;
  }
};

struct FillResult {
  double bytesPerRecord = 0;  // packed datagram size / records
  double mtuPerRecord = 0;    // maxBytes / records: what the MTU buys
};

FillResult fillDatagrams(bool nat, uint64_t spreadMs, size_t maxBytes) {
  Realistic gen(42 + spreadMs, spreadMs);
  size_t bytes = 0;
  size_t records = 0;
  size_t datagrams = 0;
  DatagramBuilder b(maxBytes);
  Header h = header();
  std::vector<Record> sent;
  for (int d = 0; d < 200; ++d) {
    sent.clear();
    while (true) {
      FlowRecord f = gen.flow(nat);
      if (!b.add(f)) break;
      sent.push_back(f);
    }
    h.seq++;
    const auto dg = b.finish(h);
    EXPECT_LE(dg.size(), maxBytes);
    EXPECT_TRUE(b.empty());
    const Decoded back = decodeOk(dg);
    EXPECT_EQ(back.records, sent);
    bytes += dg.size();
    records += sent.size();
    ++datagrams;
  }
  return FillResult{static_cast<double>(bytes) / static_cast<double>(records),
                    static_cast<double>(maxBytes * datagrams) / static_cast<double>(records)};
}

TEST(CodecTest, FullDatagramOfIpv4TcpUpsertsIsSmall) {
  struct Case {
    const char* name;
    bool nat;
    uint64_t spreadMs;
  };
  for (const Case c : {Case{"live, NAT", true, 1000}, Case{"live, no NAT", false, 1000},
                       Case{"bulk (versions up to 5 days old), NAT", true, 432'000'000}}) {
    const FillResult r = fillDatagrams(c.nat, c.spreadMs, kMtuPayload);
    std::printf("  %-40s %.2f bytes/upsert on the wire, %.2f of MTU per upsert (%zu)\n", c.name,
                r.bytesPerRecord, r.mtuPerRecord, kMtuPayload);
    EXPECT_LE(r.bytesPerRecord, 48.0) << c.name;
    EXPECT_LE(r.mtuPerRecord, 48.0) << c.name;
  }
}

TEST(CodecTest, BuilderNeverExceedsMaxBytesWithAnyMix) {
  std::mt19937_64 rng(7);
  Realistic gen(8, 1000);
  auto anyRecord = [&]() -> Record {
    switch (rng() % 10) {
      case 0: {
        FlowRecord f = gen.flow(true);
        f.key.orig = tcp6(v6(rng(), rng()), v6(rng(), rng()), 1, 2);
        f.reply = inverted(f.key.orig);
        f.reply.dst = v6(rng(), rng());
        if (rng() % 2) f.master = tcp6(v6(rng(), rng()), v6(rng(), rng()), 3, 4);
        if (rng() % 2) f.labels.fill(0xff);
        if (rng() % 2) {
          f.seqAdj[rng() % 2] = SeqAdjust{static_cast<uint32_t>(rng()),
                                          static_cast<int32_t>(rng()), static_cast<int32_t>(rng())};
          f.dccpHandshakeSeq = rng();
        }
        f.mark = static_cast<uint32_t>(rng());
        return f;
      }
      case 1:
        return FlowDelete{FlowKey{gen.flow(false).key.orig, 1}, Version{1, rng(), 2}};
      case 2:
        return Ack{1, rng(), rng()};
      case 3: {
        Nack n{2, rng(), {}};
        for (size_t i = rng() % 12; i > 0; --i) n.missing.push_back({i, i + rng() % 1000});
        return n;
      }
      case 4:
        return Digest{static_cast<uint32_t>(rng()), ~0u, rng(), 5};
      case 5:
        return Alive{rng()};
      case 7: {
        ExpectRecord e = ftpExpect(gen.flow(rng() % 2).key.orig, static_cast<uint16_t>(rng()));
        if (rng() % 2) e.natTuple = tcp6(v6(rng(), rng()), v6(rng(), rng()), 0, 5);
        if (rng() % 2) {
          e.key.expected = tcp6(v6(rng(), rng()), v6(rng(), rng()), 0, 6);
          e.mask = tcp6(v6(~0ull, ~0ull), v6(~0ull, ~0ull), 0, 0xffff);
          e.master = tcp6(v6(rng(), rng()), v6(rng(), rng()), 7, 21);
        }
        e.version = Version{0, rng(), static_cast<uint16_t>(rng())};
        return e;
      }
      case 8:
        return ExpectDelete{ExpectKey{gen.flow(false).key.orig, 2}, Version{0, rng(), 1}};
      case 6: {
        Covered c;
        for (size_t i = rng() % 12; i > 0; --i) c.ranges.push_back({i, i + rng() % 1000});
        return c;
      }
      default:
        return gen.flow(rng() % 2);
    }
  };
  for (const size_t maxBytes : {kMinDatagramBytes, size_t{512}, size_t{1232}, kMtuPayload,
                                size_t{8952}, kMaxDatagramBytes}) {
    DatagramBuilder b(maxBytes);
    for (int d = 0; d < 60; ++d) {
      std::vector<Record> sent;
      while (true) {
        Record r = anyRecord();
        if (!b.add(r)) {
          EXPECT_FALSE(b.empty()) << "a normal record did not fit an empty builder";
          break;
        }
        sent.push_back(std::move(r));
      }
      Header h = header();
      h.bootEpoch = rng();  // headers of every shape: the bound must hold for all
      h.seq = rng() >> (rng() % 64);
      h.clusterId = static_cast<uint32_t>(rng());
      const auto dg = b.finish(h);
      ASSERT_LE(dg.size(), maxBytes);
      const Decoded back = decodeOk(dg);
      EXPECT_EQ(back.header, h);
      EXPECT_EQ(back.records, sent);
    }
  }
}

TEST(CodecTest, RecordTooLargeForAnyDatagramIsRefusedOnAnEmptyBuilder) {
  DatagramBuilder b(kMinDatagramBytes);
  Nack huge{1, 2, {}};
  for (uint64_t i = 0; i < 1000; ++i) huge.missing.push_back({i * 0x10001, i * 0x10001 + 7});
  EXPECT_FALSE(b.add(huge));
  EXPECT_TRUE(b.empty());
  // The largest flow record fits alone in the smallest datagram.
  FlowRecord f = snatFlow();
  f.key.orig = tcp6(v6(~0ull, ~0ull), v6(~0ull, ~0ull), 0xffff, 0xffff);
  f.reply = tcp4(~0u, ~0u, 0xffff, 0xffff);  // carried whole
  f.master = f.key.orig;
  f.labels.fill(0xff);
  f.mark = f.status = f.timeoutSec = ~0u;
  f.key.zone = 0xffff;
  f.helper = 0xff;
  f.version = Version{~0u, 0x5555555555555555ull, 0xffff};
  EXPECT_TRUE(b.add(f));
  const auto dg = b.finish(header());
  EXPECT_LE(dg.size(), kMinDatagramBytes);
  EXPECT_EQ(decodeOk(dg).records, std::vector<Record>{f});
  // After a small record (the version base), its clock delta is large too.
  FlowDelete base{f.key, Version{0, 0xaaaaaaaaaaaaaaaaull, 0}};
  EXPECT_TRUE(b.add(base));
  EXPECT_TRUE(b.add(f));
  EXPECT_EQ(decodeOk(b.finish(header())).records, (std::vector<Record>{base, f}));
}

// ---- Untrusted input ----------------------------------------------------------------------

std::vector<uint8_t> sampleDatagram() {
  FlowRecord f = snatFlow();
  f.master = tcp4(1, 2, 3, 21);
  f.labels[3] = 9;
  FlowRecord g = snatFlow();
  g.key.orig = tcp6(v6(1, 2), v6(3, 4), 5, 6);
  g.reply = inverted(g.key.orig);
  f.seqAdj[1] = SeqAdjust{5, -2, 3};
  ExpectRecord e = ftpExpect(f.key.orig, 4000);
  e.natTuple = tcp4(0, 7, 0, 4000);
  return encodeOne({f, g, Nack{1, 2, {{3, 4}}}, FlowDelete{f.key, f.version}, Alive{9}, e,
                    ExpectDelete{e.key, e.version}});
}

// Packs raw words the way a peer would (for hand-made messages).
std::vector<uint8_t> packWords(kj::ArrayPtr<const capnp::word> words) {
  kj::VectorOutputStream out;
  kj::ArrayPtr<const capnp::word> segments[1] = {words};
  capnp::writePackedMessage(out, kj::arrayPtr(segments, 1));
  auto a = out.getArray();
  return {a.begin(), a.end()};
}

std::vector<uint8_t> packMessage(capnp::MessageBuilder& msg) {
  kj::VectorOutputStream out;
  capnp::writePackedMessage(out, msg);
  auto a = out.getArray();
  return {a.begin(), a.end()};
}

DecodeError decodeErr(const std::vector<uint8_t>& bytes) {
  auto d = decode(bytes);
  EXPECT_TRUE(std::holds_alternative<DecodeError>(d));
  return std::holds_alternative<DecodeError>(d) ? std::get<DecodeError>(d)
                                                : DecodeError::kMalformed;
}

TEST(CodecTest, EmptyOversizedAndTruncatedInputsAreErrors) {
  EXPECT_EQ(decodeErr({}), DecodeError::kTruncated);
  EXPECT_EQ(decodeErr(std::vector<uint8_t>(kMaxDatagramBytes + 1, 0)), DecodeError::kTooLarge);
  const auto good = sampleDatagram();
  for (size_t n = 1; n < good.size(); ++n) {
    std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<ptrdiff_t>(n));
    const DecodeError e = decodeErr(cut);
    EXPECT_TRUE(e == DecodeError::kTruncated || e == DecodeError::kMalformed)
        << n << ": " << decodeErrorName(e);
  }
  std::vector<uint8_t> longer = good;
  longer.insert(longer.end(), {0x01, 0x05});  // one more word after the message
  EXPECT_EQ(decodeErr(longer), DecodeError::kMalformed);
}

TEST(CodecTest, ZeroRunBombIsTooLarge) {
  std::vector<uint8_t> bomb;
  for (int i = 0; i < 30000; ++i) bomb.insert(bomb.end(), {0x00, 0xff});  // 256 words each
  EXPECT_EQ(decodeErr(bomb), DecodeError::kTooLarge);
}

TEST(CodecTest, VersionsAreChecked) {
  Header h = header();
  h.protocolVersion = 0x0101;  // another major version
  EXPECT_EQ(decodeErr(encodeOne({Alive{1}}, h)), DecodeError::kUnknownVersion);
  h.protocolVersion = 0;
  EXPECT_EQ(decodeErr(encodeOne({Alive{1}}, h)), DecodeError::kUnknownVersion);
  h.protocolVersion = kProtocolVersion + 1;  // newer minor: fine
  EXPECT_EQ(decodeOk(encodeOne({Alive{1}}, h)).records, std::vector<Record>{Alive{1}});
}

// A message made by hand: one flow record that `mutate` spoils, under `version`.
std::vector<uint8_t> handMade(uint16_t version,
                              const std::function<void(wire::Record::Builder)>& mutate) {
  capnp::MallocMessageBuilder msg;
  auto dg = msg.initRoot<wire::Datagram>();
  dg.setProtocolVersion(version);
  auto recs = dg.initRecords(2);
  recs[0].initAlive().setLastSeq(5);
  auto f = recs[1].initFlow();
  f.setL4(6);
  f.setTcpState(3);
  mutate(recs[1]);
  return packMessage(msg);
}

TEST(CodecTest, OutOfRangeValuesAreBadRecords) {
  const uint16_t v = kProtocolVersion;
  EXPECT_EQ(decodeOk(handMade(v, [](auto) {})).records.size(), 2u);
  EXPECT_EQ(decodeErr(handMade(v, [](auto r) { r.getFlow().setTcpState(200); })),
            DecodeError::kBadRecord);
  EXPECT_EQ(
      decodeErr(handMade(
          v,
          [](auto r) { r.getFlow().setTcpState(static_cast<uint8_t>(table::TcpState::kCount)); })),
      DecodeError::kBadRecord);
  EXPECT_EQ(decodeErr(handMade(v, [](auto r) { r.getFlow().setTcpScaleReply(15); })),
            DecodeError::kBadRecord);
  EXPECT_EQ(decodeErr(handMade(v,
                               [](auto r) {
                                 r.getFlow().setFamily(wire::Family::IPV6);  // without addresses
                               })),
            DecodeError::kBadRecord);
  EXPECT_EQ(decodeErr(handMade(v,
                               [](auto r) {
                                 auto n = r.initNack();
                                 auto m = n.initMissing(1);
                                 m[0].setFirst(9);
                                 m[0].setLast(8);
                               })),
            DecodeError::kBadRecord);
  // An unknown address family: an error from a peer of our version, skipped from a newer one.
  auto unknownFamily = [](auto r) { r.getFlow().setFamily(static_cast<wire::Family>(7)); };
  EXPECT_EQ(decodeErr(handMade(v, unknownFamily)), DecodeError::kBadRecord);
  EXPECT_EQ(decodeOk(handMade(v + 1, unknownFamily)).records, std::vector<Record>{Alive{5}});
  auto unknownMaster = [](auto r) {
    r.getFlow().initMaster().setFamily(static_cast<wire::Family>(2));
  };
  EXPECT_EQ(decodeErr(handMade(v, unknownMaster)), DecodeError::kBadRecord);
  // SCTP and DCCP values beyond the kernel's enums.
  EXPECT_EQ(decodeOk(handMade(v, [](auto r) { r.getFlow().initExtra().setSctpState(9); }))
                .records.size(),
            2u);
  EXPECT_EQ(decodeErr(handMade(v, [](auto r) { r.getFlow().initExtra().setSctpState(10); })),
            DecodeError::kBadRecord);
  EXPECT_EQ(decodeErr(handMade(v, [](auto r) { r.getFlow().initExtra().setDccpState(10); })),
            DecodeError::kBadRecord);
  EXPECT_EQ(decodeErr(handMade(v, [](auto r) { r.getFlow().initExtra().setDccpRole(2); })),
            DecodeError::kBadRecord);
}

// A message made by hand with one expectation record (all tuples set) that `mutate` spoils.
std::vector<uint8_t> handMadeExpect(uint16_t version,
                                    const std::function<void(wire::Record::Builder)>& mutate) {
  capnp::MallocMessageBuilder msg;
  auto dg = msg.initRoot<wire::Datagram>();
  dg.setProtocolVersion(version);
  auto recs = dg.initRecords(2);
  recs[0].initAlive().setLastSeq(5);
  auto x = recs[1].initExpect();
  for (auto t : {x.initExpected(), x.initMask(), x.initMaster()}) t.setL4(6);
  mutate(recs[1]);
  return packMessage(msg);
}

TEST(CodecTest, MalformedExpectationsAreBadRecords) {
  const uint16_t v = kProtocolVersion;
  EXPECT_EQ(decodeOk(handMadeExpect(v, [](auto) {})).records.size(), 2u);
  // Each required tuple missing.
  EXPECT_EQ(decodeErr(handMadeExpect(v, [](auto r) { r.getExpect().disownExpected(); })),
            DecodeError::kBadRecord);
  EXPECT_EQ(decodeErr(handMadeExpect(v, [](auto r) { r.getExpect().disownMask(); })),
            DecodeError::kBadRecord);
  EXPECT_EQ(decodeErr(handMadeExpect(v, [](auto r) { r.getExpect().disownMaster(); })),
            DecodeError::kBadRecord);
  // A mask of another family or protocol than the tuple it masks.
  EXPECT_EQ(decodeErr(handMadeExpect(v, [](auto r) { r.getExpect().getMask().setL4(17); })),
            DecodeError::kBadRecord);
  EXPECT_EQ(decodeErr(handMadeExpect(v,
                                     [](auto r) {
                                       auto m = r.getExpect().getMask();
                                       m.setFamily(wire::Family::IPV6);
                                       m.initV6();
                                     })),
            DecodeError::kBadRecord);
  EXPECT_EQ(decodeErr(handMadeExpect(v, [](auto r) { r.getExpect().setNatDir(2); })),
            DecodeError::kBadRecord);
  // IPv6 without addresses, in any of the tuples.
  EXPECT_EQ(decodeErr(handMadeExpect(
                v, [](auto r) { r.getExpect().initNatTuple().setFamily(wire::Family::IPV6); })),
            DecodeError::kBadRecord);
  EXPECT_EQ(decodeErr(handMadeExpect(v, [](auto r) { r.initExpectDelete(); })),
            DecodeError::kBadRecord);  // a delete without its tuple
  // An unknown family: an error from our minor, skipped from a newer one.
  auto unknownFamily = [](auto r) {
    r.getExpect().getMaster().setFamily(static_cast<wire::Family>(5));
  };
  EXPECT_EQ(decodeErr(handMadeExpect(v, unknownFamily)), DecodeError::kBadRecord);
  EXPECT_EQ(decodeOk(handMadeExpect(v + 1, unknownFamily)).records, std::vector<Record>{Alive{5}});
  // Minor 3 added the kinds: a datagram of minor 2 cannot carry them.
  EXPECT_EQ(decodeErr(handMadeExpect(2, [](auto) {})), DecodeError::kBadRecord);
  EXPECT_EQ(decodeErr(handMadeExpect(2,
                                     [](auto r) {
                                       r.initExpectDelete().initExpected().setL4(6);
                                     })),
            DecodeError::kBadRecord);
}

TEST(CodecTest, FlowExtraIsAnErrorInAnOlderMinor) {
  // Minor 3 added it: no writer of minor 2 can have sent one.
  auto withExtra = [](auto r) { r.getFlow().initExtra().setSctpVtagOrig(1); };
  EXPECT_EQ(decodeOk(handMade(kProtocolVersion, withExtra)).records.size(), 2u);
  EXPECT_EQ(decodeErr(handMade(2, withExtra)), DecodeError::kBadRecord);
  EXPECT_EQ(decodeOk(handMade(2, [](auto) {})).records.size(), 2u);
}

TEST(CodecTest, UnknownRecordKindIsSkippedOnlyFromNewerMinor) {
  for (const uint16_t version : {kProtocolVersion, uint16_t(kProtocolVersion + 1)}) {
    capnp::MallocMessageBuilder msg;
    auto dg = msg.initRoot<wire::Datagram>();
    dg.setProtocolVersion(version);
    auto recs = dg.initRecords(2);
    recs[0].initAlive().setLastSeq(5);
    recs[1].initAlive().setLastSeq(6);
    // Overwrite the second record's union tag with a kind this build does not know.
    auto words = capnp::messageToFlatArray(msg);
    auto* bytes = reinterpret_cast<uint8_t*>(words.begin());
    // Table, root, datagram, list tag, record 0; then the union tag's word in record 1.
    constexpr size_t kRecordWords = wire::Record::_capnpPrivate::dataWordSize +
                                    wire::Record::_capnpPrivate::pointerCount;
    const size_t tagWord = 1 + 1 + 5 + 1 + 1 + kRecordWords + 8;
    bytes[tagWord * 8] = 99;
    ASSERT_EQ(bytes[(tagWord - 8) * 8], 6);  // the second record's lastSeq, as a layout check
    const auto packed = packWords(words.slice(1, words.size()));
    if (version == kProtocolVersion) {
      EXPECT_EQ(decodeErr(packed), DecodeError::kBadRecord);
    } else {
      EXPECT_EQ(decodeOk(packed).records, std::vector<Record>{Alive{5}});
    }
  }
}

TEST(CodecTest, SeededMutationsNeverCrash) {
  const auto good = sampleDatagram();
  std::mt19937_64 rng(1234);
  size_t ok = 0;
  size_t errors[5] = {};
  for (int i = 0; i < 5000; ++i) {
    std::vector<uint8_t> m = good;
    switch (i % 4) {
      case 0:  // bit flips
        for (int k = 1 + static_cast<int>(rng() % 4); k > 0; --k)
          m[rng() % m.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1:  // random bytes overwritten
        for (int k = 1 + static_cast<int>(rng() % 8); k > 0; --k)
          m[rng() % m.size()] = static_cast<uint8_t>(rng());
        break;
      case 2:  // truncated and then flipped
        m.resize(1 + rng() % m.size());
        m[rng() % m.size()] ^= static_cast<uint8_t>(rng());
        break;
      default:  // pure garbage of any length
        m.resize(rng() % 2048);
        for (auto& byte : m) byte = static_cast<uint8_t>(rng());
        break;
    }
    auto d = decode(m);
    if (auto* e = std::get_if<DecodeError>(&d)) {
      ++errors[static_cast<size_t>(*e)];
      continue;
    }
    ++ok;
    // Whatever decoded must encode and decode to the same again.
    const Decoded& first = std::get<Decoded>(d);
    DatagramBuilder b(kMaxDatagramBytes);
    for (const Record& r : first.records) ASSERT_TRUE(b.add(r));
    Header h = first.header;
    const Decoded second = decodeOk(b.finish(h));
    EXPECT_EQ(second.header, first.header);
    EXPECT_EQ(second.records, first.records);
  }
  std::printf(
      "  5000 mutations: %zu decoded, errors truncated %zu malformed %zu too_large %zu "
      "version %zu bad_record %zu\n",
      ok, errors[0], errors[1], errors[2], errors[3], errors[4]);
}

TEST(CodecTest, DecodeErrorNames) {
  EXPECT_STREQ(decodeErrorName(DecodeError::kTruncated), "truncated");
  EXPECT_STREQ(decodeErrorName(DecodeError::kBadRecord), "bad_record");
}

}  // namespace
}  // namespace ctsync::replication
