#include "syncd/flow_format.hpp"

#include <cstdio>
#include <iterator>
#include <string_view>

#include "table/format.hpp"
#include "table/helpers.hpp"
#include "table/tcp.hpp"

namespace ctsync::syncd {
namespace {

using table::status::kAssured;
using table::status::kDstNat;
using table::status::kSeenReply;
using table::status::kSrcNat;

// "    [NEW] ": the event's name as conntrack -E prints it, right-aligned; "" without one.
std::string eventTag(const char* event) {
  if (event == nullptr) return {};
  char buf[64];
  std::snprintf(buf, sizeof buf, "%9s ", (std::string("[") + event + "]").c_str());
  return buf;
}

std::string prefix(const table::Tuple& t, const char* event) {
  char buf[64];
  std::string out = eventTag(event);
  std::snprintf(buf, sizeof buf, "%-8s %u %-8s %u ", t.l3 == table::L3::kIpv4 ? "ipv4" : "ipv6",
                static_cast<unsigned>(t.l3), table::l4ProtoName(t.l4), static_cast<unsigned>(t.l4));
  return out + buf;
}

// State names as libnetfilter_conntrack prints them (the kernel's enum sctp_conntrack and
// enum ct_dccp_states, in order).
const char* sctpStateName(uint8_t s) {
  static const char* const kNames[] = {
      "NONE",          "CLOSED",        "COOKIE_WAIT",       "COOKIE_ECHOED",  "ESTABLISHED",
      "SHUTDOWN_SENT", "SHUTDOWN_RECD", "SHUTDOWN_ACK_SENT", "HEARTBEAT_SENT", "HEARTBEAT_ACKED"};
  return s < std::size(kNames) ? kNames[s] : "UNKNOWN";
}
const char* dccpStateName(uint8_t s) {
  static const char* const kNames[] = {"NONE",    "REQUEST", "RESPOND",  "PARTOPEN", "OPEN",
                                       "CLOSEREQ", "CLOSING", "TIMEWAIT", "IGNORE",   "INVALID"};
  return s < std::size(kNames) ? kNames[s] : "UNKNOWN";
}

// The state word conntrack -L prints after the timeout, or null for protocols without one.
const char* stateWord(const replication::FlowRecord& r) {
  switch (r.key.orig.l4) {
    case table::proto::kTcp:
      return table::tcpStateName(static_cast<table::TcpState>(r.tcpState));
    case 132:
      return sctpStateName(r.sctpState);
    case 33:  // a kernel without the DCCP tracker (Linux 6.16 and later) reports no state
      return r.dccpState != 0 ? dccpStateName(r.dccpState) : nullptr;
    default:
      return nullptr;
  }
}

void trim(std::string& out) {
  while (!out.empty() && out.back() == ' ') out.pop_back();
}

}  // namespace

std::string formatFlow(const replication::FlowRecord& r, uint32_t remainingSec, const char* event) {
  std::string out = prefix(r.key.orig, event);
  out += std::to_string(remainingSec) + " ";
  if (const char* state = stateWord(r)) {
    out += state;
    out += ' ';
  }
  table::appendTupleText(out, r.key.orig);
  if ((r.status & kSeenReply) == 0) out += "[UNREPLIED] ";
  table::appendTupleText(out, r.reply);
  if ((r.status & kAssured) != 0) out += "[ASSURED] ";
  out += "mark=" + std::to_string(r.mark) + " ";
  if (r.key.zone != 0) out += "zone=" + std::to_string(r.key.zone) + " ";
  if (const std::string_view h = table::helperName(r.helper); !h.empty()) {
    out += "helper=";
    out += h;
    out += ' ';
  }
  if (event == nullptr) out += "use=1 ";
  trim(out);
  return out;
}

std::string formatFlowKey(const replication::FlowKey& key, const char* event) {
  std::string out = prefix(key.orig, event);
  table::appendTupleText(out, key.orig);
  if (key.zone != 0) out += "zone=" + std::to_string(key.zone) + " ";
  trim(out);
  return out;
}

std::string formatFlowJson(const replication::FlowRecord& r, uint32_t remainingSec,
                           const char* event) {
  const table::Tuple& t = r.key.orig;
  std::string out = "{";
  if (event != nullptr) out += std::string("\"event\":\"") + event + "\",";
  out += std::string("\"family\":\"") + (t.l3 == table::L3::kIpv4 ? "ipv4" : "ipv6") + "\"";
  out += std::string(",\"proto\":\"") + table::l4ProtoName(t.l4) + "\"";
  out += ",\"protonum\":" + std::to_string(t.l4);
  out += ",\"timeout\":" + std::to_string(remainingSec);
  if (const char* state = stateWord(r)) out += std::string(",\"state\":\"") + state + "\"";
  out += ",\"orig\":";
  table::appendTupleJson(out, t);
  out += ",\"reply\":";
  table::appendTupleJson(out, r.reply);
  out += ",\"flags\":[";
  bool first = true;
  for (const auto& [bit, name] :
       {std::pair{kSeenReply, "seen_reply"}, std::pair{kAssured, "assured"},
        std::pair{kSrcNat, "src_nat"}, std::pair{kDstNat, "dst_nat"}}) {
    if ((r.status & bit) == 0) continue;
    out += first ? "\"" : ",\"";
    out += name;
    out += "\"";
    first = false;
  }
  out += "]";
  out += ",\"mark\":" + std::to_string(r.mark) + ",\"zone\":" + std::to_string(r.key.zone);
  if (const std::string_view h = table::helperName(r.helper); !h.empty()) {
    out += ",\"helper\":\"";
    out += h;
    out += "\"";
  }
  if ((r.status & table::status::kSeqAdjust) != 0) {
    for (int d = 0; d < 2; ++d) {
      const replication::SeqAdjust& a = r.seqAdj[d];
      out += d == 0 ? ",\"seq_adjust_orig\":" : ",\"seq_adjust_reply\":";
      out += "{\"correction_pos\":" + std::to_string(a.correctionPos) +
             ",\"offset_before\":" + std::to_string(a.offsetBefore) +
             ",\"offset_after\":" + std::to_string(a.offsetAfter) + "}";
    }
  }
  out += ",\"owner\":" + std::to_string(r.version.node);
  out += ",\"generation\":" + std::to_string(r.version.generation);
  out += "}";
  return out;
}

namespace {

// "src=A dst=B sport=P dport=Q " with the given prefix on the address keys (conntrack prints
// the mask as mask-src=, the master as master-src=).
void appendExpectTuple(std::string& out, const table::Tuple& t, const char* prefix) {
  out += std::string(prefix) + "src=" + table::formatAddr(t.l3, t.src) + " " + prefix + "dst=" +
         table::formatAddr(t.l3, t.dst) + " ";
  std::string ports;
  table::Tuple onlyPorts = t;
  onlyPorts.src = onlyPorts.dst = {};
  table::appendTupleText(ports, onlyPorts);
  // appendTupleText starts with the addresses: keep what follows them.
  const size_t at = ports.find(' ', ports.find(" dst=") + 1);
  if (at != std::string::npos) out += ports.substr(at + 1);
}

}  // namespace

std::string formatExpect(const replication::ExpectRecord& e, uint32_t remainingSec,
                         const char* event) {
  std::string out = eventTag(event);
  out += std::to_string(remainingSec) + " proto=" + std::to_string(e.key.expected.l4) + " ";
  appendExpectTuple(out, e.key.expected, "");
  appendExpectTuple(out, e.mask, "mask-");
  appendExpectTuple(out, e.master, "master-");
  if (e.key.zone != 0) out += "zone=" + std::to_string(e.key.zone) + " ";
  std::string flags;
  for (const auto& [bit, name] : {std::pair{replication::expectflag::kPermanent, "PERMANENT"},
                                  std::pair{replication::expectflag::kInactive, "INACTIVE"},
                                  std::pair{replication::expectflag::kUserspace, "USERSPACE"}}) {
    if ((e.flags & bit) == 0) continue;
    if (!flags.empty()) flags += ',';
    flags += name;
  }
  if (!flags.empty()) out += flags + " ";
  out += "class=" + std::to_string(e.cls) + " ";
  if (const std::string_view h = table::helperName(e.helper); !h.empty()) {
    out += "helper=";
    out += h;
    out += ' ';
  }
  trim(out);
  return out;
}

std::string formatExpectJson(const replication::ExpectRecord& e, uint32_t remainingSec) {
  const table::Tuple& t = e.key.expected;
  std::string out = "{\"timeout\":" + std::to_string(remainingSec);
  out += std::string(",\"family\":\"") + (t.l3 == table::L3::kIpv4 ? "ipv4" : "ipv6") + "\"";
  out += std::string(",\"proto\":\"") + table::l4ProtoName(t.l4) + "\"";
  out += ",\"expected\":";
  table::appendTupleJson(out, t);
  out += ",\"mask\":";
  table::appendTupleJson(out, e.mask);
  out += ",\"master\":";
  table::appendTupleJson(out, e.master);
  out += ",\"zone\":" + std::to_string(e.key.zone);
  out += ",\"flags\":" + std::to_string(e.flags);
  out += ",\"class\":" + std::to_string(e.cls);
  out += std::string(",\"helper\":\"") + std::string(table::helperName(e.helper)) + "\"";
  out += std::string(",\"fn\":\"") + std::string(table::expectFnName(e.fn)) + "\"";
  if (e.natTuple) {
    out += ",\"nat\":{\"dir\":" + std::to_string(e.natDir) + ",\"src\":\"" +
           table::formatAddr(e.natTuple->l3, e.natTuple->src) +
           "\",\"sport\":" + std::to_string(e.natTuple->sport) + "}";
  }
  out += ",\"owner\":" + std::to_string(e.version.node);
  out += "}";
  return out;
}

}  // namespace ctsync::syncd
