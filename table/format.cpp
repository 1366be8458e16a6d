#include "table/format.hpp"

#include <cinttypes>
#include <cstdio>
#include <optional>

namespace ctsync::table {
namespace {

void appendf(std::string& out, const char* fmt, auto... args) {
  char buf[128];
  const int n = std::snprintf(buf, sizeof buf, fmt, args...);
  if (n > 0) out.append(buf, static_cast<size_t>(std::min<int>(n, sizeof buf - 1)));
}

int64_t remainingSeconds(const Entry& e, Nanos now) {
  const Nanos left = e.expiry - now;
  return left <= 0 ? 0 : left / kSecond;
}

}  // namespace

void appendTupleText(std::string& out, const Tuple& t) {
  out += "src=" + formatAddr(t.l3, t.src) + " dst=" + formatAddr(t.l3, t.dst) + " ";
  switch (t.l4) {
    case proto::kTcp:
    case proto::kUdp:
    case proto::kUdplite:
    case 33:   // DCCP
    case 132:  // SCTP
      appendf(out, "sport=%u dport=%u ", t.sport, t.dport);
      break;
    case 47:  // GRE: the keys travel as ports
      appendf(out, "srckey=0x%x dstkey=0x%x ", t.sport, t.dport);
      break;
    case proto::kIcmp:
    case proto::kIcmpv6:
      appendf(out, "type=%u code=%u id=%u ", t.icmpType(), t.icmpCode(), t.sport);
      break;
    default:
      break;
  }
}

namespace {

void appendCounters(std::string& out, const Entry& e, int dir) {
  appendf(out, "packets=%" PRIu64 " bytes=%" PRIu64 " ", e.packets[dir], e.bytes[dir]);
}

// `event` empty: a table line.
std::string format(std::optional<EventType> event, uint32_t mask, const ConnTable& table,
                   uint32_t idx, Nanos now, const FormatOptions& options) {
  const Entry& e = table.entry(idx);
  std::string out;
  out.reserve(256);
  if (event) appendf(out, "%9s ", (std::string("[") + eventTypeName(*event) + "]").c_str());
  appendf(out, "%-8s %u ", e.l3 == L3::kIpv4 ? "ipv4" : "ipv6", static_cast<unsigned>(e.l3));
  appendf(out, "%-8s %u ", l4ProtoName(e.l4), static_cast<unsigned>(e.l4));
  // A destroyed entry carries its timeout only while it had time left (ctnetlink skips zero).
  const int64_t left = remainingSeconds(e, now);
  if (event != EventType::kDestroy || left > 0) appendf(out, "%" PRId64 " ", left);
  const bool protoinfo = event != EventType::kUpdate || (mask & ev::kProtoinfo) != 0;
  if (e.l4 == proto::kTcp && protoinfo) {
    out += tcpStateName(e.tcp.state);
    out += ' ';
  }
  appendTupleText(out, table.tuple(e, Dir::kOriginal));
  if (options.counters) appendCounters(out, e, 0);
  if ((e.status & status::kSeenReply) == 0) out += "[UNREPLIED] ";
  appendTupleText(out, table.tuple(e, Dir::kReply));
  if (options.counters) appendCounters(out, e, 1);
  if (e.status & status::kAssured) out += "[ASSURED] ";
  // Dumps always carry the mark; events only when it is set or changed.
  const uint32_t mark = table.meta(idx).mark;
  if (!event || mark != 0 || (mask & ev::kMark) != 0) appendf(out, "mark=%u ", mark);
  if (e.zone != 0) appendf(out, "zone=%u ", e.zone);
  if (!event) out += "use=1 ";
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

}  // namespace

const char* eventTypeName(EventType type) {
  switch (type) {
    case EventType::kNew:
      return "NEW";
    case EventType::kUpdate:
      return "UPDATE";
    case EventType::kDestroy:
      return "DESTROY";
    case EventType::kRefresh:
      return "REFRESH";
  }
  return "?";
}

const char* l4ProtoName(uint8_t l4) {
  switch (l4) {
    case proto::kTcp:
      return "tcp";
    case proto::kUdp:
      return "udp";
    case proto::kIcmp:
      return "icmp";
    case proto::kIcmpv6:
      return "icmpv6";
    case proto::kUdplite:
      return "udplite";
    case 33:
      return "dccp";
    case 47:
      return "gre";
    case 132:
      return "sctp";
    default:
      return "unknown";
  }
}

std::string formatEntry(const ConnTable& table, uint32_t index, Nanos now,
                        const FormatOptions& options) {
  return format(std::nullopt, 0, table, index, now, options);
}

std::string formatEvent(EventType type, uint32_t mask, const ConnTable& table, uint32_t index,
                        Nanos now, const FormatOptions& options) {
  return format(type, mask, table, index, now, options);
}

void appendTupleJson(std::string& out, const Tuple& t) {
  out += "{\"src\":\"" + formatAddr(t.l3, t.src) + "\",\"dst\":\"" + formatAddr(t.l3, t.dst) + "\"";
  if (t.l4 == proto::kIcmp || t.l4 == proto::kIcmpv6) {
    appendf(out, ",\"type\":%u,\"code\":%u,\"id\":%u", t.icmpType(), t.icmpCode(), t.sport);
  } else if (t.l4 == proto::kTcp || t.l4 == proto::kUdp || t.l4 == proto::kUdplite) {
    appendf(out, ",\"sport\":%u,\"dport\":%u", t.sport, t.dport);
  }
  out += "}";
}

std::string formatEntryJson(const ConnTable& table, uint32_t index, Nanos now, const char* event) {
  const Entry& e = table.entry(index);
  std::string out = "{";
  if (event != nullptr) out += std::string("\"event\":\"") + event + "\",";
  appendf(out, "\"family\":\"%s\",\"proto\":\"%s\",\"protonum\":%u,",
          e.l3 == L3::kIpv4 ? "ipv4" : "ipv6", l4ProtoName(e.l4), static_cast<unsigned>(e.l4));
  appendf(out, "\"timeout\":%" PRId64 ",", remainingSeconds(e, now));
  if (e.l4 == proto::kTcp) appendf(out, "\"state\":\"%s\",", tcpStateName(e.tcp.state));
  out += "\"orig\":";
  appendTupleJson(out, table.tuple(e, Dir::kOriginal));
  out += ",\"reply\":";
  appendTupleJson(out, table.tuple(e, Dir::kReply));
  out += ",\"flags\":[";
  bool first = true;
  auto flag = [&](uint32_t bit, const char* name) {
    if ((e.status & bit) == 0) return;
    if (!first) out += ",";
    out += std::string("\"") + name + "\"";
    first = false;
  };
  flag(status::kSeenReply, "seen_reply");
  flag(status::kAssured, "assured");
  flag(status::kConfirmed, "confirmed");
  flag(status::kSrcNat, "src_nat");
  flag(status::kDstNat, "dst_nat");
  flag(status::kSeqAdjust, "seq_adjust");
  flag(status::kSrcNatDone, "src_nat_done");
  flag(status::kDstNatDone, "dst_nat_done");
  flag(status::kDying, "dying");
  out += "]";
  appendf(out, ",\"mark\":%u,\"zone\":%u", table.meta(index).mark, static_cast<unsigned>(e.zone));
  appendf(out, ",\"counters\":{\"orig\":{\"packets\":%" PRIu64 ",\"bytes\":%" PRIu64 "}",
          e.packets[0], e.bytes[0]);
  appendf(out, ",\"reply\":{\"packets\":%" PRIu64 ",\"bytes\":%" PRIu64 "}}", e.packets[1],
          e.bytes[1]);
  appendf(out, ",\"start_ns\":%" PRId64 "}", table.meta(index).start);
  return out;
}

}  // namespace ctsync::table
