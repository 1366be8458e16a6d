// Unit tests of the TCP tracker against the behaviour of Linux's nf_conntrack_proto_tcp.c.
// Segments are built as bytes; a small Flow plays the table's part (tcpError, tcpNew on the
// first packet, SEEN_REPLY after an accepted reply, as nf_conntrack_in does).
#include "table/tcp.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace ctsync::table {
namespace {

constexpr uint8_t F = 0x01;
constexpr uint8_t S = 0x02;
constexpr uint8_t R = 0x04;
constexpr uint8_t P = 0x08;
constexpr uint8_t A = 0x10;
constexpr uint8_t U = 0x20;
constexpr uint8_t E = 0x40;
constexpr uint8_t C = 0x80;

constexpr Dir kOrig = Dir::kOriginal;
constexpr Dir kRepl = Dir::kReply;

// One TCP segment; bytes() lays it out as on the wire (ports 1234 -> 80).
struct Seg {
  uint8_t flags = A;
  uint32_t seq = 0;
  uint32_t ack = 0;
  uint16_t win = 1000;
  std::optional<uint16_t> mss;
  std::optional<uint8_t> wscale;
  bool sackPerm = false;
  std::vector<std::pair<uint32_t, uint32_t>> sack;
  std::optional<std::pair<uint32_t, uint32_t>> ts;
  uint32_t payload = 0;
  std::optional<uint8_t> doff;  // override of the data offset field

  Seg& w(uint16_t v) {
    win = v;
    return *this;
  }
  Seg& len(uint32_t v) {
    payload = v;
    return *this;
  }
  Seg& ws(uint8_t v) {
    wscale = v;
    return *this;
  }
  Seg& sp() {
    sackPerm = true;
    return *this;
  }
  Seg& blk(uint32_t l, uint32_t r) {
    sack.emplace_back(l, r);
    return *this;
  }
  Seg& stamp(uint32_t v, uint32_t e) {
    ts = std::make_pair(v, e);
    return *this;
  }
  Seg& maxseg(uint16_t v) {
    mss = v;
    return *this;
  }

  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> o;
    auto put32 = [&o](uint32_t v) {
      for (int i = 3; i >= 0; --i) o.push_back(static_cast<uint8_t>(v >> (8 * i)));
    };
    if (mss) o.insert(o.end(), {2, 4, static_cast<uint8_t>(*mss >> 8), static_cast<uint8_t>(*mss)});
    if (ts) {
      o.insert(o.end(), {1, 1, 8, 10});
      put32(ts->first);
      put32(ts->second);
    }
    if (sackPerm) o.insert(o.end(), {1, 1, 4, 2});
    if (wscale) o.insert(o.end(), {1, 3, 3, *wscale});
    if (!sack.empty()) {
      o.insert(o.end(), {1, 1, 5, static_cast<uint8_t>(2 + 8 * sack.size())});
      for (const auto& [l, r] : sack) {
        put32(l);
        put32(r);
      }
    }
    while (o.size() % 4 != 0) o.push_back(0);
    std::vector<uint8_t> b(20, 0);
    b[0] = 0x04;
    b[1] = 0xd2;
    b[3] = 80;
    for (int i = 0; i < 4; ++i) {
      b[4 + i] = static_cast<uint8_t>(seq >> (24 - 8 * i));
      b[8 + i] = static_cast<uint8_t>(ack >> (24 - 8 * i));
    }
    const uint8_t off = doff ? *doff : static_cast<uint8_t>((20 + o.size()) / 4);
    b[12] = static_cast<uint8_t>(off << 4);
    b[13] = flags;
    b[14] = static_cast<uint8_t>(win >> 8);
    b[15] = static_cast<uint8_t>(win);
    b.insert(b.end(), o.begin(), o.end());
    b.resize(b.size() + payload, 0xab);
    return b;
  }
};

Seg seg(uint8_t flags, uint32_t seq, uint32_t ack = 0) {
  Seg s;
  s.flags = flags;
  s.seq = seq;
  s.ack = ack;
  return s;
}

// What the table does around the tracker, reduced to one entry.
struct Flow {
  TcpSettings settings;
  TcpConn conn;
  uint32_t status = 0;
  bool exists = false;
  Nanos remaining = seconds(432000);  // what the table would say the entry has left

  L4Outcome send(Dir dir, const Seg& sg) {
    const std::vector<uint8_t> b = sg.bytes();
    const InvalidReason err = tcpError(b.data(), static_cast<uint32_t>(b.size()));
    if (err != InvalidReason::kNone) return L4Outcome::invalid(err);
    if (!exists) {
      const L4Outcome n = tcpNew(settings, b.data(), static_cast<uint32_t>(b.size()), conn);
      if (n.kind != L4Outcome::Kind::kAccept) return n;
      exists = true;
    }
    L4Outcome o = tcpPacket(settings, conn, status, dir, b.data(), static_cast<uint32_t>(b.size()),
                            remaining);
    if (o.kind == L4Outcome::Kind::kAccept && dir == kRepl) status |= status::kSeenReply;
    if (o.kind == L4Outcome::Kind::kKill || o.kind == L4Outcome::Kind::kReopen) exists = false;
    return o;
  }

  TcpState state() const { return conn.state; }

  // Client 1000 (wscale 7 unless told), server 5000: both windows 1000 (unscaled on SYNs).
  void handshake(std::optional<uint8_t> clientWs = 7, std::optional<uint8_t> serverWs = 7) {
    Seg syn = seg(S, 1000).w(1000).maxseg(1460).sp();
    syn.wscale = clientWs;
    Seg synack = seg(S | A, 5000, 1001).w(1000).maxseg(1460).sp();
    synack.wscale = serverWs;
    ASSERT_EQ(send(kOrig, syn).kind, L4Outcome::Kind::kAccept);
    ASSERT_EQ(send(kRepl, synack).kind, L4Outcome::Kind::kAccept);
    ASSERT_EQ(send(kOrig, seg(A, 1001, 5001)).kind, L4Outcome::Kind::kAccept);
    ASSERT_EQ(state(), TcpState::kEstablished);
  }
};

bool isAccept(const L4Outcome& o) {
  return o.kind == L4Outcome::Kind::kAccept;
}
bool isIgnored(const L4Outcome& o) {
  return isAccept(o) && !o.refresh && o.events == 0;
}

// ---------------------------------------------------------------------------------------------
// Names, tcpError

TEST(TcpTest, StateNamesAsConntrackPrintsThem) {
  EXPECT_STREQ(tcpStateName(TcpState::kNone), "NONE");
  EXPECT_STREQ(tcpStateName(TcpState::kSynSent), "SYN_SENT");
  EXPECT_STREQ(tcpStateName(TcpState::kSynRecv), "SYN_RECV");
  EXPECT_STREQ(tcpStateName(TcpState::kEstablished), "ESTABLISHED");
  EXPECT_STREQ(tcpStateName(TcpState::kFinWait), "FIN_WAIT");
  EXPECT_STREQ(tcpStateName(TcpState::kCloseWait), "CLOSE_WAIT");
  EXPECT_STREQ(tcpStateName(TcpState::kLastAck), "LAST_ACK");
  EXPECT_STREQ(tcpStateName(TcpState::kTimeWait), "TIME_WAIT");
  EXPECT_STREQ(tcpStateName(TcpState::kClose), "CLOSE");
  EXPECT_STREQ(tcpStateName(TcpState::kSynSent2), "SYN_SENT2");
}

TEST(TcpTest, ErrorFlagTableMatchesKernel) {
  const std::vector<uint8_t> valid = {S, S | U, S | A, R, R | A, F | A, F | A | U, A, A | U};
  for (int f = 0; f < 256; ++f) {
    const uint8_t flags = static_cast<uint8_t>(f);
    const uint8_t core = flags & static_cast<uint8_t>(~(P | E | C));
    bool expectValid = false;
    for (uint8_t v : valid) expectValid = expectValid || v == core;
    const std::vector<uint8_t> b = seg(flags, 1).bytes();
    const InvalidReason r = tcpError(b.data(), static_cast<uint32_t>(b.size()));
    EXPECT_EQ(r, expectValid ? InvalidReason::kNone : InvalidReason::kBadTcpFlags)
        << "flags 0x" << std::hex << f;
  }
}

TEST(TcpTest, ErrorRejectsCommonBadCombinations) {
  for (uint8_t flags : {uint8_t{F}, uint8_t{0}, uint8_t{S | F}, uint8_t{S | R}, uint8_t{R | F | A},
                        uint8_t{F | P | U}, uint8_t{S | F | R | P | A | U}}) {
    const std::vector<uint8_t> b = seg(flags, 1).bytes();
    EXPECT_EQ(tcpError(b.data(), static_cast<uint32_t>(b.size())), InvalidReason::kBadTcpFlags);
  }
  // PSH, ECE and CWR never matter.
  for (uint8_t flags : {uint8_t{S | E | C}, uint8_t{A | P}, uint8_t{F | A | P | E}}) {
    const std::vector<uint8_t> b = seg(flags, 1).bytes();
    EXPECT_EQ(tcpError(b.data(), static_cast<uint32_t>(b.size())), InvalidReason::kNone);
  }
}

TEST(TcpTest, ErrorChecksHeaderLength) {
  std::vector<uint8_t> b = seg(A, 1).bytes();
  EXPECT_EQ(tcpError(b.data(), 19), InvalidReason::kTruncated);
  Seg s = seg(A, 1);
  s.doff = 4;
  b = s.bytes();
  EXPECT_EQ(tcpError(b.data(), static_cast<uint32_t>(b.size())), InvalidReason::kBadL4Header);
  s.doff = 6;  // claims 24 bytes, has 20
  b = s.bytes();
  EXPECT_EQ(tcpError(b.data(), static_cast<uint32_t>(b.size())), InvalidReason::kTruncated);
  s.payload = 4;  // now the 24 bytes exist (the "option" is payload bytes 0xab: still fine)
  b = s.bytes();
  EXPECT_EQ(tcpError(b.data(), static_cast<uint32_t>(b.size())), InvalidReason::kNone);
  s = seg(A, 1).ws(2).sp().stamp(1, 2);
  b = s.bytes();
  EXPECT_EQ(tcpError(b.data(), static_cast<uint32_t>(b.size())), InvalidReason::kNone);
  EXPECT_EQ(tcpError(b.data(), static_cast<uint32_t>(b.size()) - 1), InvalidReason::kTruncated);
}

// ---------------------------------------------------------------------------------------------
// tcpNew

TEST(TcpTest, NewFromSynInitialisesOriginalDirection) {
  TcpSettings st;
  TcpConn c;
  c.state = TcpState::kClose;  // garbage must be cleared
  const std::vector<uint8_t> b = seg(S, 1000).w(29200).maxseg(1460).sp().ws(7).len(10).bytes();
  const L4Outcome o = tcpNew(st, b.data(), static_cast<uint32_t>(b.size()), c);
  EXPECT_EQ(o.kind, L4Outcome::Kind::kAccept);
  EXPECT_FALSE(o.refresh);
  EXPECT_EQ(c.state, TcpState::kNone);
  EXPECT_EQ(c.seen[0].end, 1000u + 10 + 1);  // data on the SYN counts, and so does the SYN
  EXPECT_EQ(c.seen[0].maxend, c.seen[0].end);
  EXPECT_EQ(c.seen[0].maxwin, 29200u);
  EXPECT_EQ(c.seen[0].scale, 7);
  EXPECT_EQ(c.seen[0].flags, tcpflag::kWindowScale | tcpflag::kSackPerm);
  EXPECT_EQ(c.seen[1].maxwin, 0u);
  EXPECT_EQ(c.lastIndex, 5);  // TCP_NONE_SET
}

TEST(TcpTest, NewRefusesSynAckRstFinAndPickupWhenNotLoose) {
  TcpSettings st;
  TcpConn c;
  for (uint8_t flags : {uint8_t{S | A}, uint8_t{R}, uint8_t{R | A}, uint8_t{F | A}}) {
    const std::vector<uint8_t> b = seg(flags, 1, 1).bytes();
    const L4Outcome o = tcpNew(st, b.data(), static_cast<uint32_t>(b.size()), c);
    EXPECT_EQ(o.kind, L4Outcome::Kind::kInvalid);
    EXPECT_EQ(o.reason, InvalidReason::kTcpNoNew);
  }
  st.loose = false;
  const std::vector<uint8_t> b = seg(A, 1, 1).bytes();
  EXPECT_EQ(tcpNew(st, b.data(), static_cast<uint32_t>(b.size()), c).reason,
            InvalidReason::kTcpNoNew);
  const std::vector<uint8_t> bad = seg(F, 1).bytes();
  EXPECT_EQ(tcpNew(st, bad.data(), static_cast<uint32_t>(bad.size()), c).reason,
            InvalidReason::kBadTcpFlags);
}

TEST(TcpTest, NewPickupIsLiberalBothWays) {
  TcpSettings st;
  TcpConn c;
  const std::vector<uint8_t> b = seg(A | P, 7000, 9000).w(500).len(100).bytes();
  ASSERT_EQ(tcpNew(st, b.data(), static_cast<uint32_t>(b.size()), c).kind,
            L4Outcome::Kind::kAccept);
  EXPECT_EQ(c.seen[0].end, 7100u);
  EXPECT_EQ(c.seen[0].maxwin, 500u);
  EXPECT_EQ(c.seen[0].maxend, 7600u);
  EXPECT_EQ(c.seen[0].flags, tcpflag::kSackPerm | tcpflag::kBeLiberal);
  EXPECT_EQ(c.seen[1].flags, tcpflag::kSackPerm | tcpflag::kBeLiberal);
  // A zero window still counts as one byte.
  const std::vector<uint8_t> z = seg(S, 1).w(0).bytes();
  ASSERT_EQ(tcpNew(st, z.data(), static_cast<uint32_t>(z.size()), c).kind,
            L4Outcome::Kind::kAccept);
  EXPECT_EQ(c.seen[0].maxwin, 1u);
}

// ---------------------------------------------------------------------------------------------
// Opening

TEST(TcpTest, HandshakeReachesEstablishedAssured) {
  Flow f;
  L4Outcome o = f.send(kOrig, seg(S, 1000).w(1000).maxseg(1460).sp().ws(7));
  EXPECT_TRUE(isAccept(o));
  EXPECT_EQ(f.state(), TcpState::kSynSent);
  EXPECT_TRUE(o.refresh);
  EXPECT_EQ(o.timeout, seconds(120));
  EXPECT_EQ(o.events, ev::kProtoinfo);

  o = f.send(kRepl, seg(S | A, 5000, 1001).w(2000).maxseg(1460).sp().ws(7));
  EXPECT_EQ(f.state(), TcpState::kSynRecv);
  EXPECT_EQ(o.timeout, seconds(60));
  EXPECT_EQ(o.events, ev::kProtoinfo);
  EXPECT_EQ(f.status & status::kAssured, 0u);

  o = f.send(kOrig, seg(A, 1001, 5001).w(300));
  EXPECT_EQ(f.state(), TcpState::kEstablished);
  EXPECT_EQ(o.timeout, seconds(432000));
  EXPECT_EQ(o.events, ev::kProtoinfo | ev::kAssured);
  EXPECT_NE(f.status & status::kAssured, 0u);

  // Window bookkeeping after the handshake.
  const TcpConn& c = f.conn;
  EXPECT_EQ(c.seen[0].end, 1001u);
  EXPECT_EQ(c.seen[1].end, 5001u);
  EXPECT_EQ(c.seen[0].scale, 7);
  EXPECT_EQ(c.seen[1].scale, 7);
  EXPECT_EQ(c.seen[0].maxwin, 300u << 7);            // scaled once the SYNs are over
  EXPECT_EQ(c.seen[1].maxend, 5001u + (300u << 7));  // client's ack + scaled window
  EXPECT_EQ(c.seen[0].maxend, 1001u + 2000);         // SYN+ACK window is never scaled
  EXPECT_NE(c.seen[0].flags & tcpflag::kMaxackSet, 0);
  EXPECT_NE(c.seen[1].flags & tcpflag::kMaxackSet, 0);
  EXPECT_EQ(c.seen[0].flags & tcpflag::kDataUnacknowledged, 0);
  EXPECT_EQ(c.retrans, 0);

  // More traffic: no further events, full timeout.
  o = f.send(kRepl, seg(A, 5001, 1001).w(400).len(100));
  EXPECT_EQ(o.events, 0u);
  EXPECT_EQ(o.timeout, seconds(300));  // unacknowledged data caps the timeout
  o = f.send(kOrig, seg(A, 1001, 5101).w(300));
  EXPECT_EQ(o.timeout, seconds(432000));
}

TEST(TcpTest, WindowScaleOnlyWhenBothSidesSendIt) {
  Flow both;
  both.handshake(7, 9);
  EXPECT_EQ(both.conn.seen[0].scale, 7);
  EXPECT_EQ(both.conn.seen[1].scale, 9);

  Flow clientOnly;
  clientOnly.handshake(7, std::nullopt);
  EXPECT_EQ(clientOnly.conn.seen[0].scale, 0);
  EXPECT_EQ(clientOnly.conn.seen[1].scale, 0);
  EXPECT_NE(clientOnly.conn.seen[0].flags & tcpflag::kWindowScale, 0);  // flag stays
  EXPECT_EQ(clientOnly.conn.seen[0].maxwin, 1000u);                     // unscaled

  Flow serverOnly;
  serverOnly.handshake(std::nullopt, 7);
  EXPECT_EQ(serverOnly.conn.seen[0].scale, 0);
  EXPECT_EQ(serverOnly.conn.seen[1].scale, 0);
}

TEST(TcpTest, WindowScaleIsClampedTo14) {
  Flow f;
  f.handshake(20, 15);
  EXPECT_EQ(f.conn.seen[0].scale, 14);
  EXPECT_EQ(f.conn.seen[1].scale, 14);
}

TEST(TcpTest, RepeatedSynInSynSentDoesNotRefresh) {
  Flow f;
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(S, 1000))));
  const L4Outcome o = f.send(kOrig, seg(S, 1000));
  EXPECT_TRUE(isAccept(o));
  EXPECT_FALSE(o.refresh);
  EXPECT_EQ(o.events, 0u);
  EXPECT_EQ(f.state(), TcpState::kSynSent);
}

TEST(TcpTest, NewerSynInSynSentReinitialisesSender) {
  Flow f;
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(S, 1000).ws(3))));
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(S, 90000).w(777))));  // no options: keeps scale
  EXPECT_EQ(f.conn.seen[0].end, 90001u);
  EXPECT_EQ(f.conn.seen[0].maxwin, 777u);
  EXPECT_EQ(f.conn.seen[0].scale, 3);
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(S, 95000).sp())));  // options: reset
  EXPECT_EQ(f.conn.seen[0].scale, 0);
  EXPECT_EQ(f.conn.seen[0].flags, tcpflag::kSackPerm);
}

TEST(TcpTest, AckOrFinInSynSentIsInvalid) {
  Flow f;
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(S, 1000))));
  L4Outcome o = f.send(kOrig, seg(A, 1001, 1));
  EXPECT_EQ(o.kind, L4Outcome::Kind::kInvalid);
  EXPECT_EQ(o.reason, InvalidReason::kTcpState);
  o = f.send(kOrig, seg(F | A, 1001, 1));
  EXPECT_EQ(o.reason, InvalidReason::kTcpState);
  o = f.send(kOrig, seg(S | A, 1000, 1));
  EXPECT_EQ(o.reason, InvalidReason::kTcpState);
  EXPECT_EQ(f.state(), TcpState::kSynSent);
}

TEST(TcpTest, SimultaneousOpen) {
  Flow f;
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(S, 1000).ws(2))));
  L4Outcome o = f.send(kRepl, seg(S, 5000).ws(2));
  EXPECT_TRUE(isAccept(o));
  EXPECT_EQ(f.state(), TcpState::kSynSent2);
  // The kernel's "no refresh on SYN retransmit" rule does not look at the direction.
  EXPECT_FALSE(o.refresh);
  EXPECT_EQ(o.events, ev::kProtoinfo);
  EXPECT_NE(f.conn.lastFlags & tcpflag::kSimultaneousOpen, 0);
  EXPECT_EQ(f.conn.seen[1].end, 5001u);

  o = f.send(kOrig, seg(S | A, 1000, 5001));
  EXPECT_EQ(f.state(), TcpState::kSynRecv);
  EXPECT_EQ(o.timeout, seconds(60));
  // The peer's SYN+ACK is a retransmission as far as the table goes: ignored.
  o = f.send(kRepl, seg(S | A, 5000, 1001));
  EXPECT_TRUE(isIgnored(o));
  EXPECT_EQ(f.state(), TcpState::kSynRecv);
  // A reply ACK ends a simultaneous open (the table alone would stay in SYN_RECV).
  o = f.send(kRepl, seg(A, 5001, 1001));
  EXPECT_EQ(f.state(), TcpState::kEstablished);
  EXPECT_EQ(o.events, ev::kProtoinfo | ev::kAssured);
  EXPECT_EQ(o.timeout, seconds(432000));
}

TEST(TcpTest, ReplyAckInSynSentIsIgnored) {
  Flow f;
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(S, 1000))));
  const L4Outcome o = f.send(kRepl, seg(A, 777, 4242));
  EXPECT_TRUE(isIgnored(o));
  EXPECT_EQ(f.state(), TcpState::kSynSent);
  EXPECT_EQ(f.conn.lastAck, 4242u);  // remembered as a possible challenge ACK
  EXPECT_EQ(f.conn.lastIndex, 3);    // TCP_ACK_SET
  EXPECT_EQ(f.conn.lastDir, 1);
}

TEST(TcpTest, RstAnsweringChallengeAckInSynSentCloses) {
  Flow f;
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(S, 1000))));
  ASSERT_TRUE(isIgnored(f.send(kRepl, seg(A, 777, 4242))));  // challenge ACK
  // The client resets with the acknowledged sequence, far outside what we track.
  const L4Outcome o = f.send(kOrig, seg(R, 4242));
  EXPECT_TRUE(isAccept(o));
  EXPECT_EQ(f.state(), TcpState::kClose);
  EXPECT_EQ(o.timeout, seconds(10));
  EXPECT_EQ(o.events, ev::kProtoinfo);
}

// ---------------------------------------------------------------------------------------------
// Closing

TEST(TcpTest, FinCloseFromClient) {
  Flow f;
  f.handshake();
  L4Outcome o = f.send(kOrig, seg(F | A, 1001, 5001));
  EXPECT_EQ(f.state(), TcpState::kFinWait);
  EXPECT_EQ(o.timeout, seconds(120));
  EXPECT_EQ(o.events, ev::kProtoinfo);
  EXPECT_NE(f.conn.seen[0].flags & tcpflag::kCloseInit, 0);
  EXPECT_EQ(f.conn.seen[1].flags & tcpflag::kCloseInit, 0);
  EXPECT_TRUE(tcpCanEarlyDrop(f.conn));

  o = f.send(kRepl, seg(A, 5001, 1002));
  EXPECT_EQ(f.state(), TcpState::kCloseWait);
  EXPECT_EQ(o.timeout, seconds(60));
  o = f.send(kRepl, seg(F | A, 5001, 1002));
  EXPECT_EQ(f.state(), TcpState::kLastAck);
  EXPECT_EQ(o.timeout, seconds(30));
  o = f.send(kOrig, seg(A, 1002, 5002));
  EXPECT_EQ(f.state(), TcpState::kTimeWait);
  EXPECT_EQ(o.timeout, seconds(120));
  EXPECT_EQ(o.events, ev::kProtoinfo);
  // A retransmitted last ACK keeps TIME_WAIT.
  o = f.send(kOrig, seg(A, 1002, 5002));
  EXPECT_EQ(f.state(), TcpState::kTimeWait);
  EXPECT_EQ(o.events, 0u);
}

TEST(TcpTest, FinCloseFromServerWithCombinedFinAck) {
  Flow f;
  f.handshake();
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(F | A, 5001, 1001))));
  EXPECT_EQ(f.state(), TcpState::kFinWait);
  EXPECT_NE(f.conn.seen[1].flags & tcpflag::kCloseInit, 0);
  // The client's FIN also acks the server's: FIN_WAIT -> LAST_ACK.
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(F | A, 1001, 5002))));
  EXPECT_EQ(f.state(), TcpState::kLastAck);
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(A, 5002, 1002))));
  EXPECT_EQ(f.state(), TcpState::kTimeWait);
}

TEST(TcpTest, SimultaneousClose) {
  Flow f;
  f.handshake();
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(F | A, 1001, 5001))));
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(F | A, 5001, 1001))));
  EXPECT_EQ(f.state(), TcpState::kLastAck);
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(A, 5002, 1002))));
  EXPECT_EQ(f.state(), TcpState::kTimeWait);
}

TEST(TcpTest, FinBeforeHandshakeCompletesIsInvalid) {
  Flow f;
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(S, 1000))));
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(S | A, 5000, 1001))));
  // FIN in SYN_RECV is a valid close start.
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(F | A, 1001, 5001))));
  EXPECT_EQ(f.state(), TcpState::kFinWait);
}

TEST(TcpTest, ChallengeAckInLastAckKeepsState) {
  Flow f;
  f.handshake();
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(F | A, 1001, 5001))));
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(F | A, 5001, 1002))));
  ASSERT_EQ(f.state(), TcpState::kLastAck);
  // A new SYN from the client is let through and noted as possibly drawing a challenge ACK.
  L4Outcome o = f.send(kOrig, seg(S, 70000).ws(4));
  EXPECT_TRUE(isIgnored(o));
  EXPECT_NE(f.conn.lastFlags & tcpflag::kChallengeAck, 0);
  EXPECT_EQ(f.conn.lastWscale, 4);
  o = f.send(kRepl, seg(A, 5002, 1002));
  EXPECT_TRUE(isIgnored(o));
  EXPECT_EQ(f.state(), TcpState::kLastAck);
  EXPECT_EQ(f.conn.lastFlags & tcpflag::kChallengeAck, 0);
}

// ---------------------------------------------------------------------------------------------
// RST

TEST(TcpTest, ExactRstInEstablishedCloses) {
  Flow f;
  f.handshake();
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(A, 1001, 5001).len(100))));
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(A, 5001, 1101))));  // server acks 1101
  const L4Outcome o = f.send(kOrig, seg(R, 1101));
  EXPECT_TRUE(isAccept(o));
  EXPECT_EQ(f.state(), TcpState::kClose);
  EXPECT_EQ(o.timeout, seconds(10));
  EXPECT_EQ(o.events, ev::kProtoinfo);
  EXPECT_TRUE(tcpCanEarlyDrop(f.conn));
}

TEST(TcpTest, InexactRstInEstablishedKeepsStateWithCloseTimeout) {
  Flow f;
  f.handshake();
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(A, 5001, 1001).len(100))));
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(A, 1001, 5101))));
  // The client acked 5101; a RST from the server at 5150 is in window but not exact.
  const L4Outcome o = f.send(kRepl, seg(R, 5150));
  EXPECT_TRUE(isAccept(o));
  EXPECT_EQ(f.state(), TcpState::kEstablished);
  EXPECT_EQ(o.timeout, seconds(10));  // the kernel still lowers the timeout
  EXPECT_EQ(o.events, 0u);
  // The RST's seq moved the server's td_end (and marked data unacknowledged), so the
  // challenge ACK that follows only gets the unacknowledged cap, as in the kernel.
  EXPECT_EQ(f.conn.seen[1].end, 5150u);
  const L4Outcome ack = f.send(kOrig, seg(A, 1001, 5101));
  EXPECT_EQ(f.state(), TcpState::kEstablished);
  EXPECT_EQ(ack.timeout, seconds(300));
}

TEST(TcpTest, RstTrainAfterOwnDataCloses) {
  Flow f;
  f.handshake();
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(A, 1001, 5001).len(50))));
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(A, 5001, 1051))));
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(A | P, 5001, 1051).len(19))));
  // RST right at the end of the data segment just sent: a "train".
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(R | A, 5020, 1051))));
  EXPECT_EQ(f.state(), TcpState::kClose);
}

TEST(TcpTest, RstBelowPeerAckIsInvalidUnlessIgnored) {
  Flow f;
  f.handshake();
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(A, 1001, 5001).len(100))));
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(A, 5001, 1101))));
  L4Outcome o = f.send(kOrig, seg(R, 1050));
  EXPECT_EQ(o.kind, L4Outcome::Kind::kInvalid);
  EXPECT_EQ(o.reason, InvalidReason::kTcpRst);
  EXPECT_EQ(f.state(), TcpState::kEstablished);

  f.settings.ignoreInvalidRst = true;
  o = f.send(kOrig, seg(R, 1050));
  EXPECT_TRUE(isAccept(o));
  EXPECT_EQ(f.state(), TcpState::kEstablished);  // inexact: state kept
  EXPECT_EQ(o.timeout, seconds(10));
}

TEST(TcpTest, RstInNonAssuredStatesChecksWindowOnly) {
  Flow f;
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(S, 1000))));
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(S | A, 5000, 1001))));
  // SYN_RECV is not "established": any in-window RST closes.
  const L4Outcome o = f.send(kOrig, seg(R, 1001));
  EXPECT_TRUE(isAccept(o));
  EXPECT_EQ(f.state(), TcpState::kClose);
  EXPECT_EQ(o.timeout, seconds(10));
}

TEST(TcpTest, RstInClosingStatesSkipsChecks) {
  Flow f;
  f.handshake();
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(F | A, 1001, 5001))));
  ASSERT_EQ(f.state(), TcpState::kFinWait);
  // Far out of any window: closing entries take RSTs as they come.
  const L4Outcome o = f.send(kRepl, seg(R, 123456789));
  EXPECT_TRUE(isAccept(o));
  EXPECT_EQ(f.state(), TcpState::kClose);
}

TEST(TcpTest, OutOfWindowRstInEstablishedIsInvalid) {
  Flow f;
  f.handshake();
  const L4Outcome o = f.send(kRepl, seg(R, 5001 + 100000000));
  EXPECT_EQ(o.kind, L4Outcome::Kind::kInvalid);
  EXPECT_EQ(o.reason, InvalidReason::kTcpWindow);
  EXPECT_EQ(f.state(), TcpState::kEstablished);
}

TEST(TcpTest, RstWhenOnlyReplyIsRstKillsEntry) {
  Flow f;
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(S, 1000))));
  const L4Outcome o = f.send(kRepl, seg(R | A, 0, 1001));
  EXPECT_EQ(o.kind, L4Outcome::Kind::kKill);
  EXPECT_EQ(o.events, 0u);
}

TEST(TcpTest, RstWithZeroAckAnsweringSynKills) {
  Flow f;
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(S, 1000))));
  // Broken stacks: RST|ACK with ack 0 is taken as acking everything.
  EXPECT_EQ(f.send(kRepl, seg(R | A, 0, 0)).kind, L4Outcome::Kind::kKill);
}

TEST(TcpTest, OriginalRstOnUnrepliedPickupKills) {
  Flow f;
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(A, 7000, 9000))));
  EXPECT_EQ(f.send(kOrig, seg(R, 7000)).kind, L4Outcome::Kind::kKill);
}

// ---------------------------------------------------------------------------------------------
// Window tracking

TEST(TcpTest, OldRetransmissionIsIgnored) {
  Flow f;
  f.handshake(std::nullopt, std::nullopt);  // no scaling: windows are 1000
  for (uint32_t seq = 1001; seq < 1001 + 5000; seq += 500) {
    ASSERT_TRUE(isAccept(f.send(kOrig, seg(A, seq, 5001).len(500))));
    ASSERT_TRUE(isAccept(f.send(kRepl, seg(A, 5001, seq + 500))));
  }
  const TcpConn before = f.conn;
  // Ends more than the receiver's max window below td_end.
  const L4Outcome o = f.send(kOrig, seg(A, 1001, 5001).len(500));
  EXPECT_TRUE(isIgnored(o));
  EXPECT_EQ(f.conn.seen[0].end, before.seen[0].end);
  EXPECT_EQ(f.conn.lastEnd, before.lastEnd);
  EXPECT_EQ(f.state(), TcpState::kEstablished);
}

TEST(TcpTest, DataFarBeyondWindowIsInvalid) {
  Flow f;
  f.handshake(std::nullopt, std::nullopt);
  L4Outcome o = f.send(kOrig, seg(A, 1001 + 50000, 5001).len(10));
  EXPECT_EQ(o.kind, L4Outcome::Kind::kInvalid);
  EXPECT_EQ(o.reason, InvalidReason::kTcpWindow);

  f.settings.beLiberal = true;
  const TcpConn before = f.conn;
  o = f.send(kOrig, seg(A, 1001 + 50000, 5001).len(10));
  EXPECT_TRUE(isAccept(o));
  EXPECT_TRUE(o.refresh);
  // Liberal accepts, but (as in the kernel) without learning from the packet.
  EXPECT_EQ(f.conn.seen[0].end, before.seen[0].end);
}

TEST(TcpTest, PerDirectionLiberalFlagAcceptsOutOfWindow) {
  Flow f;
  f.handshake(std::nullopt, std::nullopt);
  f.conn.seen[0].flags |= tcpflag::kBeLiberal;  // as ctnetlink sets it for synced entries
  EXPECT_TRUE(isAccept(f.send(kOrig, seg(A, 1001 + 50000, 5001).len(10))));
  // Only the sender's flag counts.
  EXPECT_EQ(f.send(kRepl, seg(A, 5001 + 50000, 1001).len(10)).reason, InvalidReason::kTcpWindow);
}

TEST(TcpTest, SeqJustAboveMaxendWithinWindowIsIgnoredAndRemembered) {
  Flow f;
  f.handshake(std::nullopt, std::nullopt);
  // Server allowed up to 1001 + 1000 (its window, from the SYN+ACK).
  ASSERT_EQ(f.conn.seen[0].maxend, 2001u);
  const L4Outcome o = f.send(kOrig, seg(A, 2002, 5001).len(100));
  EXPECT_TRUE(isIgnored(o));
  EXPECT_EQ(f.conn.seen[0].end, 2102u);
  EXPECT_NE(f.conn.seen[0].flags & tcpflag::kDataUnacknowledged, 0);
  // The server may now ack it.
  EXPECT_TRUE(isAccept(f.send(kRepl, seg(A, 5001, 2102))));
  EXPECT_EQ(f.conn.seen[0].flags & tcpflag::kDataUnacknowledged, 0);
}

TEST(TcpTest, AckOfUnseenDataIsInvalid) {
  Flow f;
  f.handshake();
  const L4Outcome o = f.send(kRepl, seg(A, 5001, 1002));  // client has sent up to 1001
  EXPECT_EQ(o.kind, L4Outcome::Kind::kInvalid);
  EXPECT_EQ(o.reason, InvalidReason::kTcpWindow);
}

TEST(TcpTest, VeryOldAckIsIgnored) {
  Flow f;
  f.handshake(std::nullopt, std::nullopt);
  // Acks more than 66000 below what the client sent are overly delayed.
  const L4Outcome o = f.send(kRepl, seg(A, 5001, 1001 - 70000));
  EXPECT_TRUE(isIgnored(o));
  // Within the 66000 floor of the ack window: an old ack, but tracked.
  const L4Outcome late = f.send(kRepl, seg(A, 5001, 1001 - 60000));
  EXPECT_TRUE(isAccept(late));
  EXPECT_TRUE(late.refresh);
}

TEST(TcpTest, SackEdgeBeyondTdEndIsInvalid) {
  Flow f;
  f.handshake(std::nullopt, std::nullopt);  // both sent SACK-permitted
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(A, 1001, 5001).len(300))));
  // Right edge 1302 > td_end 1301.
  L4Outcome o = f.send(kRepl, seg(A, 5001, 1001).blk(1101, 1302));
  EXPECT_EQ(o.reason, InvalidReason::kTcpWindow);
  // SACK blocks after a timestamp are found too.
  o = f.send(kRepl, seg(A, 5001, 1001).stamp(5, 6).blk(1101, 1200).blk(1250, 1400));
  EXPECT_EQ(o.reason, InvalidReason::kTcpWindow);
  // In range: accepted, and the SACKed span widens the receiver's max window.
  const uint32_t maxwinBefore = f.conn.seen[1].maxwin;
  o = f.send(kRepl, seg(A, 5001, 1001).w(1000).stamp(5, 6).blk(1101, 1301));
  EXPECT_TRUE(isAccept(o));
  EXPECT_EQ(f.conn.seen[1].maxwin, std::max<uint32_t>(maxwinBefore, 1000 + 300));
  EXPECT_NE(f.conn.seen[0].flags & tcpflag::kDataUnacknowledged, 0);  // SACKed is not acked
}

TEST(TcpTest, SackIgnoredWithoutSackPermitted) {
  Flow f;
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(S, 1000))));  // no SACK-permitted
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(S | A, 5000, 1001).sp())));
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(A, 1001, 5001))));
  EXPECT_EQ(f.conn.seen[0].flags & tcpflag::kSackPerm, 0);
  // The client never allowed SACK, so the bogus edge is not even parsed.
  EXPECT_TRUE(isAccept(f.send(kRepl, seg(A, 5001, 1001).blk(1, 999999))));
}

TEST(TcpTest, TimestampOnlySegmentsTakeTheFastPath) {
  Flow f;
  f.handshake(std::nullopt, std::nullopt);
  for (int i = 0; i < 10; ++i) {
    const uint32_t seq = 1001 + 100 * static_cast<uint32_t>(i);
    ASSERT_TRUE(isAccept(f.send(kOrig, seg(A, seq, 5001).len(100).stamp(i, 7))));
    ASSERT_TRUE(isAccept(f.send(kRepl, seg(A, 5001, seq + 100).stamp(7, i))));
  }
  EXPECT_EQ(f.conn.seen[0].end, 2001u);
  EXPECT_EQ(f.conn.retrans, 0);
}

TEST(TcpTest, ScaledWindowsMoveMaxend) {
  Flow f;
  f.handshake(7, 7);
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(A, 5001, 1001).w(512))));
  EXPECT_EQ(f.conn.seen[0].maxend, 1001u + (512u << 7));
  // Data within the scaled window is fine, beyond it is not.
  EXPECT_TRUE(isAccept(f.send(kOrig, seg(A, 1001 + 60000, 5001).len(100))));
  EXPECT_EQ(f.send(kOrig, seg(A, 1001 + (512u << 7) + 70000, 5001).len(100)).reason,
            InvalidReason::kTcpWindow);
}

// ---------------------------------------------------------------------------------------------
// Timeout caps

TEST(TcpTest, RetransmissionsCapTimeout) {
  Flow f;
  f.settings.maxRetrans = seconds(250);  // tell it apart from the unacknowledged cap
  f.handshake();
  for (int i = 0; i < 3; ++i) {
    const L4Outcome o = f.send(kRepl, seg(A, 5001, 1001).w(300));
    ASSERT_TRUE(isAccept(o));
    EXPECT_EQ(o.timeout, seconds(432000)) << i;
    EXPECT_EQ(f.conn.retrans, i);
  }
  const L4Outcome o = f.send(kRepl, seg(A, 5001, 1001).w(300));
  EXPECT_EQ(f.conn.retrans, 3);
  EXPECT_EQ(o.timeout, seconds(250));
  // A different segment resets the counter.
  const L4Outcome n = f.send(kRepl, seg(A, 5001, 1001).w(301));
  EXPECT_EQ(f.conn.retrans, 0);
  EXPECT_EQ(n.timeout, seconds(432000));
  // The cap never raises a shorter state timeout.
  f.settings.maxRetransCount = 0;
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(F | A, 1001, 5001))));
  const L4Outcome fin = f.send(kRepl, seg(A, 5001, 1002));
  EXPECT_EQ(f.state(), TcpState::kCloseWait);
  EXPECT_EQ(fin.timeout, seconds(60));
}

TEST(TcpTest, RetransmissionMeansSameSeqNotJustSameEnd) {
  Flow f;
  f.handshake();
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(A, 1001, 5001).len(100))));
  EXPECT_EQ(f.conn.lastEnd, 1101u);
  EXPECT_EQ(f.conn.lastLen, 100);
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(A, 1051, 5001).len(50))));  // same end, other seq
  EXPECT_EQ(f.conn.retrans, 0);
  EXPECT_EQ(f.conn.lastLen, 50);
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(A, 1051, 5001).len(50))));
  EXPECT_EQ(f.conn.retrans, 1);
  // Same segment from the other direction's point of view is not a repeat either.
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(A, 5001, 1101))));
  EXPECT_EQ(f.conn.retrans, 0);
}

TEST(TcpTest, UnacknowledgedDataCapsTimeout) {
  Flow f;
  f.settings.unacknowledged = seconds(200);
  f.handshake();
  L4Outcome o = f.send(kOrig, seg(A | P, 1001, 5001).len(100));
  EXPECT_EQ(o.timeout, seconds(200));
  EXPECT_NE(f.conn.seen[0].flags & tcpflag::kDataUnacknowledged, 0);
  o = f.send(kRepl, seg(A, 5001, 1101));
  EXPECT_EQ(o.timeout, seconds(432000));
  EXPECT_EQ(f.conn.seen[0].flags & tcpflag::kDataUnacknowledged, 0);
}

TEST(TcpTest, ZeroWindowCapsTimeout) {
  Flow f;
  f.settings.maxRetrans = seconds(250);
  f.handshake();
  const uint32_t maxend = f.conn.seen[0].maxend;
  L4Outcome o = f.send(kRepl, seg(A, 5001, 1001).w(0));
  EXPECT_EQ(o.timeout, seconds(250));
  EXPECT_EQ(f.conn.lastWin, 0);
  EXPECT_EQ(f.conn.seen[0].maxend, maxend);  // a closing window never pulls maxend back
  o = f.send(kRepl, seg(A, 5001, 1001).w(10));
  EXPECT_EQ(o.timeout, seconds(432000));
}

// ---------------------------------------------------------------------------------------------
// Pickup

TEST(TcpTest, LoosePickupEstablishesUnrepliedThenAssures) {
  Flow f;
  L4Outcome o = f.send(kOrig, seg(A | P, 7000, 9000).w(500).len(100));
  EXPECT_TRUE(isAccept(o));
  EXPECT_EQ(f.state(), TcpState::kEstablished);
  EXPECT_EQ(o.events, ev::kProtoinfo);
  EXPECT_EQ(o.timeout, seconds(300));
  EXPECT_EQ(f.status & status::kAssured, 0u);

  o = f.send(kRepl, seg(A, 9000, 7100).w(500));
  EXPECT_EQ(f.state(), TcpState::kEstablished);
  EXPECT_EQ(o.timeout, seconds(300));  // first reply: SEEN_REPLY is set only after it
  EXPECT_EQ(o.events, 0u);
  EXPECT_EQ(f.status & status::kAssured, 0u);
  EXPECT_EQ(f.conn.seen[1].end, 9000u);

  o = f.send(kOrig, seg(A, 7100, 9000).w(500));
  EXPECT_EQ(o.events, ev::kAssured);
  EXPECT_NE(f.status & status::kAssured, 0u);
  EXPECT_EQ(o.timeout, seconds(432000));
}

TEST(TcpTest, PickupWithLooseOffCreatesNothing) {
  Flow f;
  f.settings.loose = false;
  const L4Outcome o = f.send(kOrig, seg(A, 7000, 9000));
  EXPECT_EQ(o.kind, L4Outcome::Kind::kInvalid);
  EXPECT_EQ(o.reason, InvalidReason::kTcpNoNew);
  EXPECT_FALSE(f.exists);
  EXPECT_EQ(f.send(kOrig, seg(S | A, 7000, 9000)).reason, InvalidReason::kTcpNoNew);
  EXPECT_TRUE(isAccept(f.send(kOrig, seg(S, 7000))));  // a SYN still works
}

// ---------------------------------------------------------------------------------------------
// Reopen, ignore and resync

TEST(TcpTest, SynInTimeWaitReopens) {
  Flow f;
  f.handshake();
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(F | A, 1001, 5001))));
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(F | A, 5001, 1002))));
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(A, 1002, 5002))));
  ASSERT_EQ(f.state(), TcpState::kTimeWait);
  const TcpConn before = f.conn;
  const L4Outcome o = f.send(kOrig, seg(S, 200000));
  EXPECT_EQ(o.kind, L4Outcome::Kind::kReopen);
  EXPECT_EQ(f.conn.state, before.state);  // untouched: the table deletes it
}

TEST(TcpTest, ReplySynInTimeWaitReopens) {
  Flow f;
  f.handshake();
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(F | A, 1001, 5001))));
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(F | A, 5001, 1002))));
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(A, 1002, 5002))));
  EXPECT_EQ(f.send(kRepl, seg(S, 800000)).kind, L4Outcome::Kind::kReopen);
}

TEST(TcpTest, SynAfterOwnRstReopensButNotAfterPeerRst) {
  Flow own;
  own.handshake();
  ASSERT_TRUE(isAccept(own.send(kOrig, seg(R, 1001))));
  ASSERT_EQ(own.state(), TcpState::kClose);
  EXPECT_EQ(own.send(kOrig, seg(S, 300000)).kind, L4Outcome::Kind::kReopen);

  Flow peer;
  peer.handshake();
  ASSERT_TRUE(isAccept(peer.send(kRepl, seg(R, 5001))));
  ASSERT_EQ(peer.state(), TcpState::kClose);
  const L4Outcome o = peer.send(kOrig, seg(S, 300000));
  EXPECT_TRUE(isIgnored(o));  // no CLOSE_INIT, RST came from the other side
  EXPECT_EQ(peer.state(), TcpState::kClose);
  EXPECT_EQ(peer.conn.lastIndex, 0);  // TCP_SYN_SET noted for a resync
}

TEST(TcpTest, IgnoredSynResyncsOnMatchingSynAck) {
  Flow f;
  f.handshake();
  // The client restarted with a new ISN while we still think the old flow is up.
  L4Outcome o = f.send(kOrig, seg(S, 800000).w(4000).sp().ws(5));
  EXPECT_TRUE(isIgnored(o));
  EXPECT_EQ(f.state(), TcpState::kEstablished);
  EXPECT_EQ(f.conn.lastEnd, 800001u);
  EXPECT_EQ(f.conn.lastWin, 4000);
  EXPECT_EQ(f.conn.lastWscale, 5);
  EXPECT_EQ(f.conn.lastFlags, tcpflag::kWindowScale | tcpflag::kSackPerm);

  // A SYN+ACK that does not ack it stays ignored.
  o = f.send(kRepl, seg(S | A, 900000, 12345));
  EXPECT_TRUE(isIgnored(o));
  EXPECT_EQ(f.state(), TcpState::kEstablished);

  // Need the SYN noted again: the ignored SYN+ACK replaced last_*.
  ASSERT_TRUE(isIgnored(f.send(kOrig, seg(S, 800000).w(4000).sp().ws(5))));
  o = f.send(kRepl, seg(S | A, 900000, 800001).w(3000).sp().ws(6));
  EXPECT_TRUE(isAccept(o));
  EXPECT_EQ(f.state(), TcpState::kSynRecv);
  EXPECT_EQ(o.events, ev::kProtoinfo);
  EXPECT_EQ(o.timeout, seconds(60));
  EXPECT_EQ(f.conn.seen[0].end, 800001u);
  EXPECT_EQ(f.conn.seen[0].scale, 5);
  EXPECT_EQ(f.conn.seen[0].flags & (tcpflag::kWindowScale | tcpflag::kSackPerm),
            tcpflag::kWindowScale | tcpflag::kSackPerm);
  EXPECT_EQ(f.conn.seen[1].end, 900001u);
  EXPECT_EQ(f.conn.seen[1].scale, 6);
  EXPECT_EQ(f.conn.seen[0].maxend, 800001u + 3000);

  o = f.send(kOrig, seg(A, 800001, 900001).w(100));
  EXPECT_EQ(f.state(), TcpState::kEstablished);
  EXPECT_EQ(o.events, ev::kProtoinfo);  // already assured: no second kAssured
  EXPECT_EQ(o.timeout, seconds(432000));
}

TEST(TcpTest, RstAnsweringIgnoredSynComesFromThePeerOnly) {
  // The reply's RST to the SYN we let through closes without window checks...
  Flow peer;
  peer.handshake();
  ASSERT_TRUE(isIgnored(peer.send(kOrig, seg(S, 800000))));
  L4Outcome o = peer.send(kRepl, seg(R | A, 0, 800001));
  EXPECT_TRUE(isAccept(o));
  EXPECT_EQ(peer.state(), TcpState::kClose);

  // ...but a RST from the SYN's own side does not take that shortcut (2026 direction fix):
  // it goes through the window check, where this one fails.
  Flow same;
  same.handshake();
  ASSERT_TRUE(isIgnored(same.send(kOrig, seg(S, 800000))));
  o = same.send(kOrig, seg(R | A, 1001 + 100000000, 800001));
  EXPECT_EQ(o.kind, L4Outcome::Kind::kInvalid);
  EXPECT_EQ(same.state(), TcpState::kEstablished);
}

TEST(TcpTest, SynAckInEstablishedIsIgnored) {
  Flow f;
  f.handshake();
  const L4Outcome o = f.send(kRepl, seg(S | A, 5000, 1001));
  EXPECT_TRUE(isIgnored(o));
  EXPECT_EQ(f.state(), TcpState::kEstablished);
  // The original direction may never send SYN+ACK there.
  EXPECT_EQ(f.send(kOrig, seg(S | A, 1000, 5001)).reason, InvalidReason::kTcpState);
}

// ---------------------------------------------------------------------------------------------
// Invalid FIN/RST on assured flows, early drop

TEST(TcpTest, OutOfWindowFinExchangeAsksForUnacknowledgedCap) {
  Flow f;
  f.handshake();
  L4Outcome o = f.send(kOrig, seg(F | A, 1001 + 100000000, 5001));
  EXPECT_EQ(o.reason, InvalidReason::kTcpWindow);
  EXPECT_EQ(o.timeout, 0);         // first one is only noted
  EXPECT_EQ(f.conn.lastIndex, 2);  // TCP_FIN_SET
  EXPECT_EQ(f.conn.lastDir, 0);
  o = f.send(kRepl, seg(R, 5001 + 100000000));
  EXPECT_EQ(o.reason, InvalidReason::kTcpWindow);
  EXPECT_TRUE(o.refresh);
  EXPECT_EQ(o.timeout, seconds(300));  // the answer: lower the remaining timeout
  EXPECT_EQ(f.conn.lastIndex, 4);      // TCP_RST_SET, noted
  // Less than 120 s left: left alone entirely, not even noted.
  Flow h;
  h.handshake();
  h.send(kOrig, seg(F | A, 1001 + 100000000, 5001));
  h.remaining = seconds(119);
  o = h.send(kRepl, seg(R, 5001 + 100000000));
  EXPECT_EQ(o.reason, InvalidReason::kTcpWindow);
  EXPECT_FALSE(o.refresh);
  EXPECT_EQ(h.conn.lastIndex, 2);
  // Already below the cap: noted, timeout untouched.
  Flow k;
  k.handshake();
  k.send(kOrig, seg(F | A, 1001 + 100000000, 5001));
  k.remaining = seconds(200);
  o = k.send(kRepl, seg(R, 5001 + 100000000));
  EXPECT_FALSE(o.refresh);
  EXPECT_EQ(k.conn.lastIndex, 4);
  // Not for flows that are not assured.
  Flow g;
  ASSERT_TRUE(isAccept(g.send(kOrig, seg(S, 1000))));
  ASSERT_TRUE(isAccept(g.send(kRepl, seg(S | A, 5000, 1001))));
  o = g.send(kOrig, seg(F | A, 1001 + 100000000, 5001));
  EXPECT_EQ(o.timeout, 0);
  EXPECT_EQ(g.conn.lastIndex, 1);  // untouched (the SYN+ACK)
}

TEST(TcpTest, EarlyDropOnlyInClosingStates) {
  TcpConn c;
  for (int s = 0; s < static_cast<int>(TcpState::kCount); ++s) {
    c.state = static_cast<TcpState>(s);
    const bool closing = c.state == TcpState::kFinWait || c.state == TcpState::kCloseWait ||
                         c.state == TcpState::kLastAck || c.state == TcpState::kTimeWait ||
                         c.state == TcpState::kClose;
    EXPECT_EQ(tcpCanEarlyDrop(c), closing) << tcpStateName(c.state);
  }
}

TEST(TcpTest, MaxackSurvivesSixteenBitCarry) {
  Flow f;
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(S, 0x0001fff0))));
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(S | A, 0x7ffffff0, 0x0001fff1).w(60000))));
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(A, 0x0001fff1, 0x7ffffff1).w(60000))));
  ASSERT_TRUE(isAccept(f.send(kOrig, seg(A, 0x0001fff1, 0x7ffffff1).len(0x20))));
  ASSERT_TRUE(isAccept(f.send(kRepl, seg(A, 0x7ffffff1, 0x00020011).w(60000))));
  // Below the server's ack (0x00020011) across the 16-bit boundary: invalid.
  EXPECT_EQ(f.send(kOrig, seg(R, 0x0001fffa)).reason, InvalidReason::kTcpRst);
  EXPECT_TRUE(isAccept(f.send(kOrig, seg(R, 0x00020011))));
  EXPECT_EQ(f.state(), TcpState::kClose);
}

}  // namespace
}  // namespace ctsync::table
