// TCP tracking with the semantics of Linux's nf_conntrack_proto_tcp.c (6.x). The structure
// follows the kernel's on purpose: a differential test replays the same packets through the
// kernel, so every check happens in the same order, with the same wrap-around arithmetic and
// the same quirks (documented where they are surprising).
#include "table/tcp.hpp"

#include <cstddef>

namespace ctsync::table {

static_assert(sizeof(TcpConn) <= 52, "TcpConn lives in every entry: keep it at 52 bytes");

namespace {

// TCP header flag bits (byte 13).
constexpr uint8_t kFin = 0x01;
constexpr uint8_t kSyn = 0x02;
constexpr uint8_t kRst = 0x04;
constexpr uint8_t kPsh = 0x08;
constexpr uint8_t kAck = 0x10;
constexpr uint8_t kUrg = 0x20;
constexpr uint8_t kEce = 0x40;
constexpr uint8_t kCwr = 0x80;

constexpr uint32_t kMinHeader = 20;
constexpr uint8_t kMaxWscale = 14;
// Lower bound of the ack window (kernel's MAXACKWINCONST): acks older than this are ignored.
constexpr uint32_t kMaxAckWinConst = 66000;
// nf_tcp_handle_invalid leaves entries alone that expire within this time anyway.
constexpr Nanos kInvalidCapFloor = seconds(120);

// TCP options.
constexpr uint8_t kOptEol = 0;
constexpr uint8_t kOptNop = 1;
constexpr uint8_t kOptWindow = 3;
constexpr uint8_t kOptSackPerm = 4;
constexpr uint8_t kOptSack = 5;
constexpr uint8_t kOptTimestamp = 8;

// Flag class, numbered as the kernel's enum tcp_bit_set (stored in TcpConn::lastIndex).
enum Index : uint8_t { kSynSet = 0, kSynAckSet, kFinSet, kAckSet, kRstSet, kNoneSet };

// Transition results beyond the real states.
constexpr uint8_t sNO = static_cast<uint8_t>(TcpState::kNone);
constexpr uint8_t sSS = static_cast<uint8_t>(TcpState::kSynSent);
constexpr uint8_t sSR = static_cast<uint8_t>(TcpState::kSynRecv);
constexpr uint8_t sES = static_cast<uint8_t>(TcpState::kEstablished);
constexpr uint8_t sFW = static_cast<uint8_t>(TcpState::kFinWait);
constexpr uint8_t sCW = static_cast<uint8_t>(TcpState::kCloseWait);
constexpr uint8_t sLA = static_cast<uint8_t>(TcpState::kLastAck);
constexpr uint8_t sTW = static_cast<uint8_t>(TcpState::kTimeWait);
constexpr uint8_t sCL = static_cast<uint8_t>(TcpState::kClose);
constexpr uint8_t sS2 = static_cast<uint8_t>(TcpState::kSynSent2);
constexpr uint8_t sIV = static_cast<uint8_t>(TcpState::kCount);      // invalid
constexpr uint8_t sIG = static_cast<uint8_t>(TcpState::kCount) + 1;  // ignore (maybe out of sync)
constexpr int kStates = static_cast<int>(TcpState::kCount);

// [direction][flag class][old state] -> new state; the kernel's tcp_conntracks table.
constexpr uint8_t kTransitions[2][6][kStates] = {
    {
        // ORIGINAL   sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
        /* syn    */ {sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2},
        /* synack */ {sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR},
        /* fin    */ {sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV},
        /* ack    */ {sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV},
        /* rst    */ {sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL},
        /* none   */ {sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV},
    },
    {
        // REPLY      sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
        /* syn    */ {sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2},
        /* synack */ {sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR},
        /* fin    */ {sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV},
        /* ack    */ {sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG},
        /* rst    */ {sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL},
        /* none   */ {sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV},
    },
};
static_assert(sNO == 0 && sS2 == 9 && kStates == 10, "table columns follow TcpState");

// Flag combinations tcp_error() accepts, indexed by FIN|SYN|RST|ACK|URG (PSH, ECE and CWR are
// masked off before the lookup).
constexpr bool validFlags(uint8_t f) {
  switch (f) {
    case kSyn:
    case kSyn | kUrg:
    case kSyn | kAck:
    case kRst:
    case kRst | kAck:
    case kFin | kAck:
    case kFin | kAck | kUrg:
    case kAck:
    case kAck | kUrg:
      return true;
    default:
      return false;
  }
}

// Sequence-space comparisons (RFC 1982 style, as the kernel's before()/after()).
inline bool before(uint32_t a, uint32_t b) {
  return static_cast<int32_t>(a - b) < 0;
}
inline bool after(uint32_t a, uint32_t b) {
  return before(b, a);
}

inline uint32_t load32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
inline uint16_t load16(const uint8_t* p) {
  return static_cast<uint16_t>((p[0] << 8) | p[1]);
}

// The fields of one segment the tracker looks at.
struct Segment {
  uint32_t seq;
  uint32_t ack;
  uint32_t end;  // seq + payload length + SYN + FIN
  uint16_t win;  // raw, unscaled
  uint8_t flags;
  const uint8_t* opts;
  uint32_t optLen;
};

Segment parse(const uint8_t* l4, uint32_t l4Len) {
  Segment s;
  const uint32_t hdrLen = uint32_t{static_cast<uint8_t>(l4[12] >> 4)} * 4;
  s.seq = load32(l4 + 4);
  s.ack = load32(l4 + 8);
  s.flags = l4[13];
  s.win = load16(l4 + 14);
  s.opts = l4 + kMinHeader;
  s.optLen = hdrLen - kMinHeader;
  s.end = s.seq + (l4Len - hdrLen) + ((s.flags & kSyn) ? 1 : 0) + ((s.flags & kFin) ? 1 : 0);
  return s;
}

Index flagIndex(uint8_t flags) {
  if (flags & kRst) return kRstSet;
  if (flags & kSyn) return (flags & kAck) ? kSynAckSet : kSynSet;
  if (flags & kFin) return kFinSet;
  if (flags & kAck) return kAckSet;
  return kNoneSet;
}

uint32_t maxack(const TcpConn& c, int d) {
  return (uint32_t{c.maxackHigh[d]} << 16) | c.seen[d].maxackLow;
}
void setMaxack(TcpConn& c, int d, uint32_t v) {
  c.maxackHigh[d] = static_cast<uint16_t>(v >> 16);
  c.seen[d].maxackLow = static_cast<uint16_t>(v);
}

// The kernel's tcp_options(): window scale and SACK-permitted. Options are only reset when the
// segment carries any, so a SYN without options keeps what an earlier one announced.
void parseOptions(const Segment& s, uint8_t& scale, uint8_t& flags) {
  if (s.optLen == 0) return;
  scale = 0;
  flags &= tcpflag::kBeLiberal;
  const uint8_t* p = s.opts;
  int32_t left = static_cast<int32_t>(s.optLen);
  while (left > 0) {
    const uint8_t kind = *p++;
    if (kind == kOptEol) return;
    if (kind == kOptNop) {
      --left;
      continue;
    }
    if (left < 2) return;
    const uint8_t size = *p++;
    if (size < 2 || size > left) return;  // silly or partial option: stop, as the kernel does
    if (kind == kOptSackPerm && size == 2) {
      flags |= tcpflag::kSackPerm;
    } else if (kind == kOptWindow && size == 3) {
      scale = p[0] > kMaxWscale ? kMaxWscale : p[0];
      flags |= tcpflag::kWindowScale;
    }
    p += size - 2;
    left -= size;
  }
}

// The kernel's tcp_sack(): raises `sack` to the highest right edge of the first SACK option.
void parseSack(const Segment& s, uint32_t& sack) {
  if (s.optLen == 0) return;
  const uint8_t* p = s.opts;
  // Timestamps alone (NOP, NOP, TS) are what almost every segment carries: skip the walk.
  if (s.optLen == 12 && p[0] == kOptNop && p[1] == kOptNop && p[2] == kOptTimestamp && p[3] == 10) {
    return;
  }
  int32_t left = static_cast<int32_t>(s.optLen);
  while (left > 0) {
    const uint8_t kind = *p++;
    if (kind == kOptEol) return;
    if (kind == kOptNop) {
      --left;
      continue;
    }
    if (left < 2) return;
    const uint8_t size = *p++;
    if (size < 2 || size > left) return;
    if (kind == kOptSack && size >= 2 + 8 && (size - 2) % 8 == 0) {
      for (int i = 0; i < size - 2; i += 8) {
        const uint32_t right = load32(p + i + 4);
        if (after(right, sack)) sack = right;
      }
      return;
    }
    p += size - 2;
    left -= size;
  }
}

// First SYN (or SYN+ACK) of a direction, or a re-initialising one (tcp_init_sender).
void initSender(TcpDirState& sender, TcpDirState& receiver, const Segment& s, Dir dir) {
  sender.end = s.end;
  sender.maxend = s.end;
  sender.maxwin = s.win == 0 ? 1 : s.win;
  parseOptions(s, sender.scale, sender.flags);
  // RFC 1323: scaling is on in either direction only if both sides sent the option.
  if (dir == Dir::kReply &&
      !((sender.flags & tcpflag::kWindowScale) && (receiver.flags & tcpflag::kWindowScale))) {
    sender.scale = 0;
    receiver.scale = 0;
  }
}

enum class WindowResult : uint8_t { kAccept, kIgnore, kInvalid };

// The kernel's tcp_in_window(). A failed check is turned into kAccept when the sender is
// liberal, but then (as in the kernel) none of the window updates below the check happen.
WindowResult inWindow(const TcpSettings& settings, TcpConn& c, Dir dir, Index cls,
                      const Segment& s) {
  const int d = index(dir);
  TcpDirState& sender = c.seen[d];
  TcpDirState& receiver = c.seen[1 - d];
  const auto fail = [&](WindowResult r) {
    const bool liberal = settings.beLiberal || (sender.flags & tcpflag::kBeLiberal);
    return liberal ? WindowResult::kAccept : r;
  };

  uint32_t seq = s.seq;
  uint32_t ack = s.ack;
  uint32_t sack = s.ack;
  uint32_t end = s.end;
  uint32_t win = s.win;
  const bool syn = s.flags & kSyn;
  const bool hasAck = s.flags & kAck;

  if (receiver.flags & tcpflag::kSackPerm) parseSack(s, sack);

  if (sender.maxwin == 0) {
    if (syn) {
      initSender(sender, receiver, s, dir);
      if (!hasAck) return WindowResult::kAccept;  // simultaneous open
    } else {
      // Mid-stream: take what this packet tells.
      sender.end = end;
      const uint32_t swin = win << sender.scale;
      sender.maxwin = swin == 0 ? 1 : swin;
      sender.maxend = end + sender.maxwin;
      if (receiver.maxwin == 0) {
        // Nothing seen the other way yet: make checks III and IV pass until it is.
        receiver.end = sack;
        receiver.maxend = sack;
      } else if (sack == receiver.end + 1) {
        ++receiver.end;  // probably the answer to a keepalive
      }
    }
  } else if (syn && after(end, sender.end) &&
             (c.state == TcpState::kSynSent || c.state == TcpState::kSynRecv)) {
    // A reinitialised TCP only promises higher sequence numbers: start this side over.
    initSender(sender, receiver, s, dir);
    if (dir == Dir::kReply && !hasAck) return WindowResult::kAccept;
  }

  // No ACK: pretend it acked everything. Broken stacks send RST|ACK with ack 0: likewise.
  if (!hasAck || ((s.flags & kRst) && ack == 0)) ack = sack = receiver.end;

  if ((s.flags & kRst) && seq == 0 && c.state == TcpState::kSynSent) {
    seq = end = sender.end;  // RST answering our SYN
  }

  const uint32_t maxAckWindow = sender.maxwin > kMaxAckWinConst ? sender.maxwin : kMaxAckWinConst;

  // I. upper bound of the data.
  if (!before(seq, sender.maxend + 1)) {
    const uint32_t overshot = end - sender.maxend + 1;
    const bool ackOk = after(sack, receiver.end - maxAckWindow - 1);
    const bool inRecvWin = receiver.maxwin != 0 && after(end, sender.end - receiver.maxwin - 1);
    if (inRecvWin && ackOk && overshot <= receiver.maxwin && before(sack, receiver.end + 1)) {
      // Only the sequence check failed, by less than a window: a sender that overruns the
      // advertised window. Remember the data so that its ack does not look bogus later.
      sender.end = end;
      sender.flags |= tcpflag::kDataUnacknowledged;
      return fail(WindowResult::kIgnore);
    }
    return fail(WindowResult::kInvalid);
  }
  // III. the ack must not cover data never seen.
  if (!before(sack, receiver.end + 1)) return fail(WindowResult::kInvalid);
  // II. lower bound of the data: old retransmissions are let through untracked.
  if (receiver.maxwin != 0 && !after(end, sender.end - receiver.maxwin - 1)) {
    return fail(WindowResult::kIgnore);
  }
  // IV. lower bound of the ack: very late acks likewise.
  if (!after(sack, receiver.end - maxAckWindow - 1)) return fail(WindowResult::kIgnore);

  if (!syn) win <<= sender.scale;

  const uint32_t swin = win + (sack - ack);
  if (sender.maxwin < swin) sender.maxwin = swin;
  if (after(end, sender.end)) {
    sender.end = end;
    sender.flags |= tcpflag::kDataUnacknowledged;
  }
  if (hasAck) {
    if (!(sender.flags & tcpflag::kMaxackSet)) {
      setMaxack(c, d, ack);
      sender.flags |= tcpflag::kMaxackSet;
    } else if (after(ack, maxack(c, d))) {
      setMaxack(c, d, ack);
    }
  }

  if (receiver.maxwin != 0 && after(end, sender.maxend)) receiver.maxwin += end - sender.maxend;
  if (after(sack + win, receiver.maxend - 1)) {
    receiver.maxend = sack + win;
    if (win == 0) ++receiver.maxend;
  }
  if (ack == receiver.end) receiver.flags &= static_cast<uint8_t>(~tcpflag::kDataUnacknowledged);

  // Retransmission detection: the same bare segment again and again.
  if (cls == kAckSet) {
    const uint16_t len = static_cast<uint16_t>(end - seq);
    if (c.lastDir == d && c.lastEnd == end && c.lastLen == len && c.lastAck == ack &&
        c.lastWin == s.win) {
      ++c.retrans;  // uint8_t wraps after 255 repeats, as the kernel's u8 does
    } else {
      c.lastDir = static_cast<uint8_t>(d);
      c.lastEnd = end;
      c.lastLen = len;
      c.lastAck = ack;
      c.lastWin = s.win;
      c.retrans = 0;
    }
  }
  return WindowResult::kAccept;
}

Nanos stateTimeout(const TcpSettings& s, TcpState state) {
  switch (state) {
    case TcpState::kNone:  // the kernel's timeouts[0] mirrors SYN_SENT
    case TcpState::kSynSent:
      return s.synSent;
    case TcpState::kSynRecv:
      return s.synRecv;
    case TcpState::kEstablished:
      return s.established;
    case TcpState::kFinWait:
      return s.finWait;
    case TcpState::kCloseWait:
      return s.closeWait;
    case TcpState::kLastAck:
      return s.lastAck;
    case TcpState::kTimeWait:
      return s.timeWait;
    case TcpState::kClose:
      return s.close;
    case TcpState::kSynSent2:
      return s.synSent2;
    case TcpState::kCount:
      break;
  }
  return s.synSent;
}

// nf_conntrack_tcp_established(): the exact-sequence RST rule only protects assured flows.
bool establishedAssured(const TcpConn& c, uint32_t status) {
  return c.state == TcpState::kEstablished && (status & status::kAssured);
}

void resetDir(TcpConn& c, int d) {
  TcpDirState& s = c.seen[d];
  s.end = 0;
  s.maxend = 0;
  s.maxwin = 0;
  s.scale = 0;
  s.flags &= tcpflag::kBeLiberal;
  setMaxack(c, d, 0);
}

L4Outcome ignored() {
  // Accepted, but the entry's timeout is not touched (the kernel returns NF_ACCEPT early).
  return L4Outcome{};
}

}  // namespace

const char* tcpStateName(TcpState s) {
  switch (s) {
    case TcpState::kNone:
      return "NONE";
    case TcpState::kSynSent:
      return "SYN_SENT";
    case TcpState::kSynRecv:
      return "SYN_RECV";
    case TcpState::kEstablished:
      return "ESTABLISHED";
    case TcpState::kFinWait:
      return "FIN_WAIT";
    case TcpState::kCloseWait:
      return "CLOSE_WAIT";
    case TcpState::kLastAck:
      return "LAST_ACK";
    case TcpState::kTimeWait:
      return "TIME_WAIT";
    case TcpState::kClose:
      return "CLOSE";
    case TcpState::kSynSent2:
      return "SYN_SENT2";
    case TcpState::kCount:
      break;
  }
  return "UNKNOWN";
}

InvalidReason tcpError(const uint8_t* l4, uint32_t l4Len) {
  if (l4Len < kMinHeader) return InvalidReason::kTruncated;
  const uint32_t hdrLen = uint32_t{static_cast<uint8_t>(l4[12] >> 4)} * 4;
  if (hdrLen < kMinHeader) return InvalidReason::kBadL4Header;
  if (hdrLen > l4Len) return InvalidReason::kTruncated;
  const uint8_t flags = l4[13] & static_cast<uint8_t>(~(kEce | kCwr | kPsh));
  if (!validFlags(flags)) return InvalidReason::kBadTcpFlags;
  return InvalidReason::kNone;
}

L4Outcome tcpNew(const TcpSettings& settings, const uint8_t* l4, uint32_t l4Len, TcpConn& conn) {
  if (const InvalidReason r = tcpError(l4, l4Len); r != InvalidReason::kNone) {
    return L4Outcome::invalid(r);
  }
  const Segment s = parse(l4, l4Len);
  const uint8_t next = kTransitions[0][flagIndex(s.flags)][sNO];
  if (next == sSS) {
    conn = TcpConn{};
    TcpDirState& orig = conn.seen[0];
    orig.end = s.end;
    orig.maxwin = s.win == 0 ? 1 : s.win;
    orig.maxend = s.end;
    parseOptions(s, orig.scale, orig.flags);
  } else if (next == sES && settings.loose) {
    conn = TcpConn{};
    TcpDirState& orig = conn.seen[0];
    orig.end = s.end;
    orig.maxwin = s.win == 0 ? 1 : s.win;
    orig.maxend = s.end + orig.maxwin;
    // The handshake was missed, so window scaling is unknown: assume SACK and be liberal in
    // both directions for the life of the entry.
    conn.seen[0].flags = tcpflag::kSackPerm | tcpflag::kBeLiberal;
    conn.seen[1].flags = tcpflag::kSackPerm | tcpflag::kBeLiberal;
  } else {
    return L4Outcome::invalid(InvalidReason::kTcpNoNew);
  }
  conn.lastIndex = kNoneSet;
  return L4Outcome{};
}

L4Outcome tcpPacket(const TcpSettings& settings, TcpConn& conn, uint32_t& status, Dir dir,
                    const uint8_t* l4, uint32_t l4Len, Nanos remaining) {
  // tcpError() ran before the lookup; these two compares only keep a broken caller from
  // making us read past the buffer.
  if (l4Len < kMinHeader) return L4Outcome::invalid(InvalidReason::kTruncated);
  if (uint32_t{static_cast<uint8_t>(l4[12] >> 4)} * 4 > l4Len || (l4[12] >> 4) < 5) {
    return L4Outcome::invalid(InvalidReason::kBadL4Header);
  }
  const Segment s = parse(l4, l4Len);
  const int d = index(dir);
  const Index idx = flagIndex(s.flags);
  TcpState oldState = conn.state;
  uint8_t next = kTransitions[d][idx][static_cast<int>(oldState)];
  bool skipWindow = false;

  switch (next) {
    case sSS:
      if (oldState < TcpState::kTimeWait) break;
      // A SYN on a closed entry (or on one the same side aborted): the old connection is over
      // and this SYN starts a new one.
      if (((conn.seen[0].flags | conn.seen[1].flags) & tcpflag::kCloseInit) ||
          (conn.lastDir == d && conn.lastIndex == kRstSet)) {
        L4Outcome o;
        o.kind = L4Outcome::Kind::kReopen;
        return o;
      }
      [[fallthrough]];
    case sIG:
      // We may be out of sync with the endpoints: let SYN (orig), SYN+ACK (reply) and reply
      // ACKs after a SYN pass untracked, remembering enough to resynchronise on the answer.
      if (idx == kSynAckSet && conn.lastIndex == kSynSet && conn.lastDir != d &&
          s.ack == conn.lastEnd) {
        // This SYN+ACK answers the SYN we let through: both ends are in sync, we are not.
        oldState = TcpState::kSynSent;
        next = sSR;
        const int ld = conn.lastDir;
        TcpDirState& prev = conn.seen[ld];
        prev.end = conn.lastEnd;
        prev.maxend = conn.lastEnd;
        prev.maxwin = conn.lastWin == 0 ? 1 : conn.lastWin;
        prev.scale = conn.lastWscale;
        conn.lastFlags &= static_cast<uint8_t>(~tcpflag::kChallengeAck);
        prev.flags = conn.lastFlags;  // kernel quirk: kSimultaneousOpen may land here too
        resetDir(conn, d);
        break;
      }
      conn.lastIndex = idx;
      conn.lastDir = static_cast<uint8_t>(d);
      conn.lastEnd = s.end;
      conn.lastLen = static_cast<uint16_t>(s.end - s.seq);
      conn.lastWin = s.win;
      if (idx == kSynSet && dir == Dir::kOriginal) {
        // Note the options of this SYN: if the server answers it, they become the entry's.
        uint8_t scale = 0;
        uint8_t flags = 0;
        parseOptions(s, scale, flags);
        conn.lastFlags = 0;
        conn.lastWscale = 0;
        if (flags & tcpflag::kWindowScale) {
          conn.lastFlags |= tcpflag::kWindowScale;
          conn.lastWscale = scale & 0x0f;
        }
        if (flags & tcpflag::kSackPerm) conn.lastFlags |= tcpflag::kSackPerm;
        // In LAST_ACK an RFC 5961 challenge ACK to this SYN would look like the final ACK.
        if (oldState == TcpState::kLastAck) conn.lastFlags |= tcpflag::kChallengeAck;
      }
      if (oldState == TcpState::kSynSent && idx == kAckSet && dir == Dir::kReply) {
        conn.lastAck = s.ack;  // possibly a challenge ACK to our SYN; a RST may follow
      }
      return ignored();
    case sIV:
      return L4Outcome::invalid(InvalidReason::kTcpState);
    case sTW:
      if (oldState == TcpState::kLastAck && idx == kAckSet && conn.lastDir != d &&
          conn.lastIndex == kSynSet && (conn.lastFlags & tcpflag::kChallengeAck)) {
        // Challenge ACK to the SYN seen in LAST_ACK, not the last ACK: keep the state.
        conn.lastFlags &= static_cast<uint8_t>(~tcpflag::kChallengeAck);
        return ignored();
      }
      break;
    case sS2:
      conn.lastFlags |= tcpflag::kSimultaneousOpen;  // the table alone cannot tell
      break;
    case sSR:
      if (dir == Dir::kReply && idx == kAckSet && (conn.lastFlags & tcpflag::kSimultaneousOpen)) {
        next = sES;
      }
      break;
    case sCL: {
      if (idx != kRstSet) break;
      // Closing entries may already describe a reused tuple: their sequence memory is stale.
      if (tcpCanEarlyDrop(conn)) {
        skipWindow = true;
        break;
      }
      const int peer = 1 - d;
      // td_maxack is stale if we let a SYN through since.
      if ((conn.seen[peer].flags & tcpflag::kMaxackSet) && conn.lastIndex != kSynSet) {
        const bool established = establishedAssured(conn, status);
        // Seq 0 outside an established flow: most likely the answer to a SYN we let pass.
        if (s.seq == 0 && !established) break;
        const uint32_t peerAck = maxack(conn, peer);
        if (before(s.seq, peerAck) && !settings.ignoreInvalidRst) {
          return L4Outcome::invalid(InvalidReason::kTcpRst);
        }
        if (!established || s.seq == peerAck) break;
        // The RST right after our own data segment, at its end (a "train").
        if (conn.lastIndex == kAckSet && conn.lastDir == d && s.seq == conn.lastEnd) break;
        // Inexact RST on an established flow: keep the state so that the challenge ACK the
        // endpoint sends can carry on (RFC 5961).
        next = static_cast<uint8_t>(oldState);
      }
      // RST answering a SYN or ACK we let through while out of sync: accept without window
      // checks (it may ack what we ignored). The direction test is the 2026 fix
      // bed6e04be8e6 ("do not force CLOSE on invalid-seq RST without direction check").
      if ((((status & status::kSeenReply) && conn.lastIndex == kSynSet && conn.lastDir != d) ||
           (!(status & status::kAssured) && conn.lastIndex == kAckSet)) &&
          s.ack == conn.lastEnd) {
        skipWindow = true;
        break;
      }
      // RST answering a challenge ACK we let through in SYN_SENT.
      if (oldState == TcpState::kSynSent && conn.lastIndex == kAckSet &&
          conn.lastDir == index(Dir::kReply) && s.seq == conn.lastAck) {
        skipWindow = true;
      }
      break;
    }
    default:
      break;
  }

  if (!skipWindow) {
    switch (inWindow(settings, conn, dir, idx, s)) {
      case WindowResult::kAccept:
        break;
      case WindowResult::kIgnore:
        return ignored();
      case WindowResult::kInvalid: {
        L4Outcome o = L4Outcome::invalid(InvalidReason::kTcpWindow);
        // nf_tcp_handle_invalid: an assured flow whose FIN/RST exchange fell out of window is
        // probably dead; the kernel lowers its remaining timeout to `unacknowledged` when more
        // than that is left, and leaves entries with less than 120 s alone altogether.
        if ((status & status::kAssured) && !(status & status::kFixedTimeout) &&
            (idx == kRstSet || idx == kFinSet)) {
          if (conn.lastDir != d && (conn.lastIndex == kFinSet || conn.lastIndex == kRstSet)) {
            if (remaining < kInvalidCapFloor) return o;
            if (remaining > settings.unacknowledged) {
              o.refresh = true;
              o.timeout = settings.unacknowledged;
            }
          }
          conn.lastIndex = idx;
          conn.lastDir = static_cast<uint8_t>(d);
        }
        return o;
      }
    }
  }

  conn.lastIndex = idx;
  conn.lastDir = static_cast<uint8_t>(d);
  const TcpState newState = static_cast<TcpState>(next);
  conn.state = newState;
  if (oldState != newState && newState == TcpState::kFinWait) {
    conn.seen[d].flags |= tcpflag::kCloseInit;
  }

  const Nanos base = stateTimeout(settings, newState);
  Nanos timeout;
  if (conn.retrans >= settings.maxRetransCount && base > settings.maxRetrans) {
    timeout = settings.maxRetrans;
  } else if (idx == kRstSet) {
    timeout = settings.close;  // even when an inexact RST kept ESTABLISHED
  } else if (((conn.seen[0].flags | conn.seen[1].flags) & tcpflag::kDataUnacknowledged) &&
             base > settings.unacknowledged) {
    timeout = settings.unacknowledged;
  } else if (conn.lastWin == 0 && base > settings.maxRetrans) {
    timeout = settings.maxRetrans;  // zero window (lastWin is 0 until the first bare ACK, too)
  } else {
    timeout = base;
  }

  uint32_t events = oldState != newState ? ev::kProtoinfo : 0;
  if (!(status & status::kSeenReply)) {
    if (s.flags & kRst) {
      // Only a RST ever answered: no connection worth keeping. The kernel never delivers the
      // events it cached for an entry it kills, hence none here.
      L4Outcome o;
      o.kind = L4Outcome::Kind::kKill;
      return o;
    }
    if (idx == kSynSet && oldState == TcpState::kSynSent) {
      // A retransmitted SYN must not keep an unanswered entry (and its NAT mapping) alive.
      L4Outcome o;
      o.events = events;
      return o;
    }
    if (newState == TcpState::kEstablished && timeout > settings.unacknowledged) {
      timeout = settings.unacknowledged;  // picked up mid-stream and never answered
    }
  } else if (!(status & status::kAssured) &&
             (oldState == TcpState::kSynRecv || oldState == TcpState::kEstablished) &&
             newState == TcpState::kEstablished) {
    status |= status::kAssured;
    events |= ev::kAssured;
  }
  return L4Outcome::accept(timeout, events);
}

bool tcpCanEarlyDrop(const TcpConn& conn) {
  switch (conn.state) {
    case TcpState::kFinWait:
    case TcpState::kCloseWait:
    case TcpState::kLastAck:
    case TcpState::kTimeWait:
    case TcpState::kClose:
      return true;
    default:
      return false;
  }
}

}  // namespace ctsync::table
