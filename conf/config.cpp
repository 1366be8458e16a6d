#include "conf/config.hpp"

#include <arpa/inet.h>
#include <toml++/toml.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "table/helpers.hpp"

namespace ctsync::conf {
namespace {

// Config files are small; the cap keeps a mistaken path (/dev/zero, a log file) from eating memory.
constexpr size_t kMaxFileBytes = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Problems, collected with their position and sorted before they are reported.

struct Problem {
  uint32_t line;
  uint32_t column;
  std::string text;
};

// Keys can be quoted strings holding anything; keep each reported problem on one line.
std::string printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (ch == '\n') {
      out += "\\n";
    } else if (ch == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out;
}

class Problems {
 public:
  void add(const toml::source_region& where, std::string text) {
    problems_.push_back({where.begin.line, where.begin.column, std::move(text)});
  }
  // A problem with one key's value: "key 'section.key': what".
  void addForKey(const toml::source_region& where, std::string_view dottedKey,
                 std::string_view what) {
    add(where, "key '" + printable(dottedKey) + "': " + std::string(what));
  }
  bool empty() const { return problems_.empty(); }
  size_t size() const { return problems_.size(); }

  ConfigError toError(std::string_view sourceName) {
    std::stable_sort(problems_.begin(), problems_.end(), [](const Problem& a, const Problem& b) {
      return std::tie(a.line, a.column) < std::tie(b.line, b.column);
    });
    std::string message;
    for (const Problem& p : problems_) {
      if (!message.empty()) message += '\n';
      message += printable(sourceName) + ":" + std::to_string(p.line) + ":" +
                 std::to_string(p.column) + ": " + p.text;
    }
    return ConfigError{std::move(message)};
  }

 private:
  std::vector<Problem> problems_;
};

// ---------------------------------------------------------------------------------------------
// Value readers: each checks the TOML type and range, stores the value, or says what is wrong.

using Issue = std::optional<std::string>;

std::string rangeText(int64_t value, int64_t min, int64_t max, std::string_view unit) {
  std::string s = std::to_string(value) + " is out of range " + std::to_string(min) + ".." +
                  std::to_string(max);
  if (!unit.empty()) s += " (" + std::string(unit) + ")";
  return s;
}

Issue readBool(const toml::node& node, bool& out) {
  const auto* v = node.as_boolean();
  if (v == nullptr) return "expected a boolean";
  out = v->get();
  return std::nullopt;
}

Issue readInteger(const toml::node& node, int64_t min, int64_t max, std::string_view unit,
                  int64_t& out) {
  const auto* v = node.as_integer();
  if (v == nullptr) return "expected an integer";
  int64_t value = v->get();
  if (value < min || value > max) return rangeText(value, min, max, unit);
  out = value;
  return std::nullopt;
}

// An integer stored into a narrower field; [min, max] must fit in T.
template <typename T>
Issue readNumber(const toml::node& node, int64_t min, int64_t max, T& out) {
  int64_t value = 0;
  if (Issue issue = readInteger(node, min, max, "", value)) return issue;
  out = static_cast<T>(value);
  return std::nullopt;
}

Issue readPercent(const toml::node& node, uint8_t& out) {
  return readNumber(node, 0, 100, out);
}

// The kernel keeps timeouts in jiffies and takes them from sysctl as int milliseconds at most;
// 2^31 / 1000 seconds (~24.8 days) is the largest value every kernel accepts.
constexpr int64_t kMaxTimeoutSeconds = (int64_t{1} << 31) / 1000;

Issue readSeconds(const toml::node& node, int64_t min, table::Nanos& out) {
  int64_t value = 0;
  if (Issue issue = readInteger(node, min, kMaxTimeoutSeconds, "seconds", value)) return issue;
  out = table::seconds(value);
  return std::nullopt;
}

Issue readTimeout(const toml::node& node, table::Nanos& out) {
  return readSeconds(node, 1, out);
}

template <typename T>
struct Named {
  std::string_view name;
  T value;
};

// A string that must be one of `names`.
template <typename T, size_t N>
Issue readEnum(const toml::node& node, const Named<T> (&names)[N], T& out) {
  const auto* v = node.as_string();
  if (v == nullptr) return "expected a string";
  for (const Named<T>& e : names) {
    if (v->get() == e.name) {
      out = e.value;
      return std::nullopt;
    }
  }
  std::string what = "expected one of";
  for (size_t i = 0; i < N; ++i)
    what += (i == 0 ? " \"" : ", \"") + std::string(names[i].name) + "\"";
  return what + ", got \"" + printable(v->get()) + "\"";
}

constexpr Named<table::EvictionPolicy> kEvictionNames[] = {
    {"kernel", table::EvictionPolicy::kKernel},
    {"closing-first", table::EvictionPolicy::kClosingFirst},
};

Issue readString(const toml::node& node, size_t maxLength, std::string& out) {
  const auto* v = node.as_string();
  if (v == nullptr) return "expected a string";
  if (v->get().size() > maxLength) {
    return "longer than " + std::to_string(maxLength) + " characters";
  }
  out = v->get();
  return std::nullopt;
}

// Calls item(element) for each element of an array; the first problem names its index.
template <typename F>
Issue readList(const toml::node& node, F&& item) {
  const auto* array = node.as_array();
  if (array == nullptr) return "expected an array";
  for (size_t i = 0; i < array->size(); ++i) {
    if (Issue issue = item(*array->get(i)))
      return "element " + std::to_string(i + 1) + ": " + *issue;
  }
  return std::nullopt;
}

// ---- addresses (numeric only: a config that resolves names at start-up fails at failover) ----

enum class Family : uint8_t { kNone, kV4, kV6 };

Family familyOf(std::string_view text, std::array<uint8_t, 16>* bytes = nullptr) {
  std::array<uint8_t, 16> b{};
  const std::string s(text);
  if (inet_pton(AF_INET, s.c_str(), b.data()) == 1) {
    if (bytes) *bytes = b;
    return Family::kV4;
  }
  // A zone ("%eth0") is allowed on link-local IPv6 addresses.
  const std::string addr = s.substr(0, s.find('%'));
  if (inet_pton(AF_INET6, addr.c_str(), b.data()) == 1) {
    if (bytes) *bytes = b;
    return Family::kV6;
  }
  return Family::kNone;
}

Issue checkInterfaceName(std::string_view name) {
  if (name.empty() || name.size() > 15) return "an interface name has 1 to 15 characters";
  for (char c : name) {
    if (c == '/' || c == ':' || c <= ' ' || c == 0x7f) return "not a valid interface name";
  }
  return std::nullopt;
}

Issue readInterface(const toml::node& node, std::string& out) {
  std::string name;
  if (Issue issue = readString(node, 64, name)) return issue;
  if (Issue issue = checkInterfaceName(name)) return issue;
  out = std::move(name);
  return std::nullopt;
}

Issue readAddress(const toml::node& node, std::string& out) {
  std::string text;
  if (Issue issue = readString(node, 64, text)) return issue;
  if (familyOf(text) == Family::kNone)
    return "\"" + printable(text) + "\" is not an IPv4 or IPv6 address";
  out = std::move(text);
  return std::nullopt;
}

// "ADDR", "ADDR:PORT", "[V6ADDR]:PORT": the address and the port (0 when absent).
Issue splitPeer(std::string_view text, std::string& address, uint32_t& port) {
  port = 0;
  std::string_view addr = text;
  std::string_view portText;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) return "missing ']'";
    addr = text.substr(1, close - 1);
    if (close + 1 < text.size()) {
      if (text[close + 1] != ':') return "expected ':' after ']'";
      portText = text.substr(close + 2);
    }
  } else if (std::count(text.begin(), text.end(), ':') == 1) {  // IPv4 with a port
    const size_t colon = text.find(':');
    addr = text.substr(0, colon);
    portText = text.substr(colon + 1);
  }
  if (familyOf(addr) == Family::kNone)
    return "\"" + printable(addr) + "\" is not an IPv4 or IPv6 address";
  if (!portText.empty() || (text.size() > 0 && text.back() == ':')) {
    if (portText.empty() || portText.size() > 5 ||
        !std::all_of(portText.begin(), portText.end(),
                     [](char c) { return c >= '0' && c <= '9'; })) {
      return "\"" + printable(portText) + "\" is not a port";
    }
    port = static_cast<uint32_t>(std::stoul(std::string(portText)));
    if (port < 1 || port > 65535)
      return "port " + std::to_string(port) + " is out of range 1..65535";
  }
  address = std::string(addr);
  return std::nullopt;
}

// A numeric address of either family, without a zone: a zone names a link, which a rule or a
// replayed packet does not have.
Issue parseAddress(std::string_view text, table::IpAddress& out) {
  std::array<uint8_t, 16> b{};
  // inet_pton would stop at a NUL, which a TOML string may hold ("\u0000").
  const Family f = text.find('\0') == std::string_view::npos ? familyOf(text, &b) : Family::kNone;
  if (f == Family::kNone) return "\"" + printable(text) + "\" is not an IPv4 or IPv6 address";
  if (const size_t zone = text.find('%'); zone != std::string_view::npos) {
    return "\"" + printable(text) + "\": a zone suffix (\"" + printable(text.substr(zone)) +
           "\") is not allowed here";
  }
  out.l3 = f == Family::kV4 ? table::L3::kIpv4 : table::L3::kIpv6;
  out.addr.bytes = b;
  return std::nullopt;
}

// "ADDR/LENGTH" or "ADDR" (all of the address: /32 or /128).
Issue parsePrefix(std::string_view text, table::Prefix& out) {
  const size_t slash = text.find('/');
  table::IpAddress a;
  if (Issue issue = parseAddress(text.substr(0, slash), a)) return issue;
  const int max = a.l3 == table::L3::kIpv4 ? 32 : 128;
  int length = max;
  if (slash != std::string_view::npos) {
    const std::string bits(text.substr(slash + 1));
    if (bits.empty() || bits.size() > 3 ||
        !std::all_of(bits.begin(), bits.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
        std::stoi(bits) > max) {
      return "\"/" + printable(bits) + "\" is not a prefix length 0.." + std::to_string(max);
    }
    length = std::stoi(bits);
  }
  out = table::Prefix{a.l3, a.addr, static_cast<uint8_t>(length)};
  return std::nullopt;
}

Issue readCidr(const toml::node& node, std::string& out) {
  std::string text;
  if (Issue issue = readString(node, 64, text)) return issue;
  table::Prefix prefix;
  if (Issue issue = parsePrefix(text, prefix)) return issue;
  out = std::move(text);
  return std::nullopt;
}

Issue readPrefix(const toml::node& node, table::Prefix& out) {
  std::string text;
  if (Issue issue = readString(node, 64, text)) return issue;
  return parsePrefix(text, out);
}

Issue readIpAddress(const toml::node& node, table::IpAddress& out) {
  std::string text;
  if (Issue issue = readString(node, 64, text)) return issue;
  return parseAddress(text, out);
}

// Calls read(table, "section.key[N]") for each table of an array of tables ([[section.key]]).
template <typename F>
void forEachTable(const toml::node& value, std::string_view dottedKey, std::string_view what,
                  Problems& problems, F&& read) {
  const auto* array = value.as_array();
  if (array == nullptr || !array->is_array_of_tables()) {
    problems.addForKey(value.source(), dottedKey,
                       "expected tables: write each " + std::string(what) + " as a [[" +
                           std::string(dottedKey) + "]] section");
    return;
  }
  for (size_t i = 0; i < array->size(); ++i) {
    read(*array->get(i)->as_table(), std::string(dottedKey) + "[" + std::to_string(i + 1) + "]");
  }
}

// One key of a table in an array of tables, read into that table's struct T.
template <typename T>
struct TableKey {
  std::string_view name;
  Issue (*apply)(const toml::node& value, T& out);
};

// Reads every key of `t` (named "prefix.key" in problems) into `out`; false if any was bad.
template <typename T, size_t N>
bool readTableKeys(const toml::table& t, const std::string& prefix, const TableKey<T> (&keys)[N],
                   T& out, Problems& problems) {
  bool ok = true;
  for (auto&& [key, node] : t) {
    const std::string_view name = key.str();
    const auto known = std::find_if(std::begin(keys), std::end(keys),
                                    [&](const TableKey<T>& k) { return k.name == name; });
    if (known == std::end(keys)) {
      problems.add(key.source(),
                   "unknown key '" + printable(prefix + "." + std::string(name)) + "'");
      ok = false;
    } else if (Issue issue = known->apply(node, out)) {
      problems.addForKey(node.source(), prefix + "." + std::string(name), *issue);
      ok = false;
    }
  }
  return ok;
}

// ---------------------------------------------------------------------------------------------
// The schema: one table of known keys per section. To add a section: add its struct to Config,
// write its KeySpec table (and a cross-key check if it has one) and list it in kSections.

// Reads one key's value into the config, or says what is wrong with the value.
using ApplyFn = Issue (*)(const toml::node& value, Config& config);

// A key whose value holds keys of its own (an array of tables): reports its own problems.
using NestedFn = void (*)(const toml::node& value, std::string_view dottedKey, Config& config,
                          Problems& problems);

struct KeySpec {
  std::string_view name;
  ApplyFn apply;
  NestedFn nested = nullptr;  // instead of apply
};

// A rule spanning several keys of a section, checked once all of them were read.
struct CrossIssue {
  std::string_view key;  // reported at this key's value (at the section if the key is absent)
  std::string what;
};
using CheckFn = std::optional<CrossIssue> (*)(const Config& config);

struct SectionSpec {
  std::string_view name;
  std::span<const KeySpec> keys;
  CheckFn check;  // may be null
};

using Node = toml::node;
constexpr int64_t kMaxBuckets = int64_t{1} << 28;
constexpr int64_t kMaxEntries = int64_t{1} << 30;
table::ProtocolSettings& proto(Config& c) {
  return c.tracker.protocols;
}
table::TcpSettings& tcp(Config& c) {
  return c.tracker.protocols.tcp;
}
table::TableSettings& tbl(Config& c) {
  return c.tracker.table;
}

constexpr KeySpec kTrackerKeys[] = {
    {"tcp_loose", [](const Node& n, Config& c) { return readBool(n, tcp(c).loose); }},
    {"tcp_be_liberal", [](const Node& n, Config& c) { return readBool(n, tcp(c).beLiberal); }},
    {"tcp_ignore_invalid_rst",
     [](const Node& n, Config& c) { return readBool(n, tcp(c).ignoreInvalidRst); }},
    {"tcp_max_retrans",
     [](const Node& n, Config& c) { return readNumber(n, 0, 255, tcp(c).maxRetransCount); }},
    {"checksum", [](const Node& n, Config& c) { return readBool(n, proto(c).verifyChecksums); }},
    // The kernel has no sysctl of its own for SYN_SENT2 and uses the SYN_SENT timeout for it.
    {"tcp_timeout_syn_sent",
     [](const Node& n, Config& c) {
       Issue issue = readTimeout(n, tcp(c).synSent);
       tcp(c).synSent2 = tcp(c).synSent;
       return issue;
     }},
    {"tcp_timeout_syn_recv",
     [](const Node& n, Config& c) { return readTimeout(n, tcp(c).synRecv); }},
    {"tcp_timeout_established",
     [](const Node& n, Config& c) { return readTimeout(n, tcp(c).established); }},
    {"tcp_timeout_fin_wait",
     [](const Node& n, Config& c) { return readTimeout(n, tcp(c).finWait); }},
    {"tcp_timeout_close_wait",
     [](const Node& n, Config& c) { return readTimeout(n, tcp(c).closeWait); }},
    {"tcp_timeout_last_ack",
     [](const Node& n, Config& c) { return readTimeout(n, tcp(c).lastAck); }},
    {"tcp_timeout_time_wait",
     [](const Node& n, Config& c) { return readTimeout(n, tcp(c).timeWait); }},
    {"tcp_timeout_close", [](const Node& n, Config& c) { return readTimeout(n, tcp(c).close); }},
    {"tcp_timeout_max_retrans",
     [](const Node& n, Config& c) { return readTimeout(n, tcp(c).maxRetrans); }},
    {"tcp_timeout_unacknowledged",
     [](const Node& n, Config& c) { return readTimeout(n, tcp(c).unacknowledged); }},
    {"udp_timeout",
     [](const Node& n, Config& c) { return readTimeout(n, proto(c).udp.unreplied); }},
    {"udp_timeout_stream",
     [](const Node& n, Config& c) { return readTimeout(n, proto(c).udp.stream); }},
    {"icmp_timeout", [](const Node& n, Config& c) { return readTimeout(n, proto(c).icmp.icmp); }},
    {"icmpv6_timeout",
     [](const Node& n, Config& c) { return readTimeout(n, proto(c).icmp.icmpv6); }},
    {"generic_timeout",
     [](const Node& n, Config& c) { return readTimeout(n, proto(c).generic.timeout); }},
    {"buckets",
     [](const Node& n, Config& c) { return readNumber(n, 1, kMaxBuckets, tbl(c).buckets); }},
    {"max",
     [](const Node& n, Config& c) { return readNumber(n, 1, kMaxEntries, tbl(c).maxEntries); }},
    {"eviction",
     [](const Node& n, Config& c) { return readEnum(n, kEvictionNames, tbl(c).eviction); }},
    {"min_lifetime",
     [](const Node& n, Config& c) { return readSeconds(n, 0, tbl(c).minLifetime); }},
    {"adaptive_start",
     [](const Node& n, Config& c) { return readPercent(n, tbl(c).adaptiveStart); }},
    {"adaptive_end", [](const Node& n, Config& c) { return readPercent(n, tbl(c).adaptiveEnd); }},
    {"refresh_percent",
     [](const Node& n, Config& c) { return readPercent(n, tbl(c).refreshPercent); }},
};

std::optional<CrossIssue> checkTracker(const Config& c) {
  const table::TableSettings& t = c.tracker.table;
  if ((t.adaptiveStart != 0 || t.adaptiveEnd != 0) && t.adaptiveStart >= t.adaptiveEnd) {
    return CrossIssue{"adaptive_end", "adaptive_start (" + std::to_string(t.adaptiveStart) +
                                          ") must be below adaptive_end (" +
                                          std::to_string(t.adaptiveEnd) +
                                          "); set both to 0 to turn "
                                          "adaptive timeouts off"};
  }
  return std::nullopt;
}

// ---- [node] --------------------------------------------------------------------------------

constexpr Named<NodeSettings::Role> kRoleNames[] = {
    {"backup", NodeSettings::Role::kBackup},
    {"active", NodeSettings::Role::kActive},
};

constexpr KeySpec kNodeKeys[] = {
    {"id", [](const Node& n, Config& c) { return readNumber(n, 1, 65535, c.node.id); }},
    {"cluster_id",
     [](const Node& n, Config& c) { return readNumber(n, 0, 0xffffffffLL, c.node.clusterId); }},
    {"role", [](const Node& n, Config& c) { return readEnum(n, kRoleNames, c.node.role); }},
};

// ---- [sync] and [[sync.link]] ------------------------------------------------------------------

Issue readMillis(const toml::node& node, int64_t min, int64_t max, table::Nanos& out) {
  int64_t value = 0;
  if (Issue issue = readInteger(node, min, max, "milliseconds", value)) return issue;
  out = value * table::kMillisecond;
  return std::nullopt;
}

constexpr Named<LinkSettings::Kind> kLinkKinds[] = {
    {"multicast", LinkSettings::Kind::kMulticast},
    {"unicast", LinkSettings::Kind::kUnicast},
};
constexpr int64_t kMinSocketBuffer = 64 << 10;
constexpr int64_t kMaxSocketBuffer = int64_t{1} << 30;

constexpr TableKey<LinkSettings> kLinkKeys[] = {
    {"kind", [](const Node& n, LinkSettings& l) { return readEnum(n, kLinkKinds, l.kind); }},
    {"interface", [](const Node& n, LinkSettings& l) { return readInterface(n, l.interface); }},
    {"group", [](const Node& n, LinkSettings& l) { return readAddress(n, l.group); }},
    {"port", [](const Node& n, LinkSettings& l) { return readNumber(n, 1, 65535, l.port); }},
    {"local_address",
     [](const Node& n, LinkSettings& l) { return readAddress(n, l.localAddress); }},
    {"peers",
     [](const Node& n, LinkSettings& l) {
       std::vector<std::string> peers;
       Issue issue = readList(n, [&](const toml::node& e) -> Issue {
         std::string text, address;
         uint32_t port = 0;
         if (Issue i = readString(e, 80, text)) return i;
         if (Issue i = splitPeer(text, address, port)) return i;
         peers.push_back(std::move(text));
         return std::nullopt;
       });
       if (!issue) l.peers = std::move(peers);
       return issue;
     }},
    {"rcvbuf",
     [](const Node& n, LinkSettings& l) {
       return readNumber(n, kMinSocketBuffer, kMaxSocketBuffer, l.rcvbufBytes);
     }},
    {"sndbuf",
     [](const Node& n, LinkSettings& l) {
       return readNumber(n, kMinSocketBuffer, kMaxSocketBuffer, l.sndbufBytes);
     }},
};

bool isMulticast(std::string_view address) {
  std::array<uint8_t, 16> b{};
  switch (familyOf(address, &b)) {
    case Family::kV4:
      return (b[0] & 0xf0) == 0xe0;
    case Family::kV6:
      return b[0] == 0xff;
    case Family::kNone:
      break;
  }
  return false;
}

// What a link needs as a whole, once its keys were read.
Issue checkLink(const LinkSettings& l) {
  if (l.kind == LinkSettings::Kind::kMulticast) {
    if (l.interface.empty()) return "a multicast link needs 'interface'";
    if (l.group.empty()) return "a multicast link needs 'group'";
    if (!isMulticast(l.group))
      return "group \"" + printable(l.group) + "\" is not a multicast address";
    if (!l.peers.empty()) return "'peers' is for unicast links";
    return std::nullopt;
  }
  if (l.peers.empty()) return "a unicast link needs 'peers'";
  if (!l.group.empty()) return "'group' is for multicast links";
  Family family = l.localAddress.empty() ? Family::kNone : familyOf(l.localAddress);
  for (const std::string& p : l.peers) {
    std::string address;
    uint32_t port = 0;
    splitPeer(p, address, port);
    const Family f = familyOf(address);
    if (family == Family::kNone) family = f;
    if (f != family)
      return "peer \"" + printable(p) + "\" is of another address family (one family per link)";
  }
  return std::nullopt;
}

void readLinks(const toml::node& value, std::string_view dottedKey, Config& config,
               Problems& problems) {
  forEachTable(value, dottedKey, "link", problems,
               [&](const toml::table& t, const std::string& prefix) {
                 LinkSettings link;
                 if (readTableKeys(t, prefix, kLinkKeys, link, problems)) {
                   if (Issue issue = checkLink(link)) {
                     problems.addForKey(t.source(), prefix, *issue);
                     return;
                   }
                 }
                 config.sync.links.push_back(std::move(link));
               });
}

constexpr KeySpec kSyncKeys[] = {
    {"link", nullptr, readLinks},
    {"key_file", [](const Node& n, Config& c) { return readString(n, 4096, c.sync.keyFile); }},
    {"encrypt", [](const Node& n, Config& c) { return readBool(n, c.sync.encrypt); }},
    // 576 is the smallest IPv4 MTU every host must take; 65535 a UDP datagram's limit.
    {"mtu", [](const Node& n, Config& c) { return readNumber(n, 576, 65535, c.sync.mtu); }},
    {"alive_interval_ms",
     [](const Node& n, Config& c) { return readMillis(n, 10, 60'000, c.sync.aliveInterval); }},
    {"peer_timeout_ms",
     [](const Node& n, Config& c) { return readMillis(n, 100, 600'000, c.sync.peerTimeout); }},
    {"digest_interval_ms",
     [](const Node& n, Config& c) { return readMillis(n, 0, 3'600'000, c.sync.digestInterval); }},
    {"tombstone_seconds",
     [](const Node& n, Config& c) { return readSeconds(n, 1, c.sync.tombstoneTime); }},
    {"resend_log_flows",
     [](const Node& n, Config& c) {
       return readNumber(n, 1024, int64_t{1} << 26, c.sync.resendLogFlows);
     }},
    {"pace_bytes_per_second",
     [](const Node& n, Config& c) {
       return readNumber(n, 0, int64_t{1} << 40, c.sync.paceBytesPerSecond);
     }},
};

std::optional<CrossIssue> checkSync(const Config& c) {
  if (c.sync.peerTimeout <= 2 * c.sync.aliveInterval) {
    return CrossIssue{"peer_timeout_ms",
                      "must be more than twice alive_interval_ms, or one lost Alive takes a "
                      "healthy peer for gone"};
  }
  return std::nullopt;
}

// ---- [source], [kernel] ---------------------------------------------------------------------

constexpr Named<SourceSettings::Kind> kSourceKinds[] = {
    {"kernel", SourceSettings::Kind::kKernel},
};
constexpr KeySpec kSourceKeys[] = {
    {"kind", [](const Node& n, Config& c) { return readEnum(n, kSourceKinds, c.source.kind); }},
};

constexpr Named<KernelSettings::Commit> kCommitModes[] = {
    {"on-promote", KernelSettings::Commit::kOnPromote},
    {"continuous", KernelSettings::Commit::kContinuous},
};
constexpr Named<uint8_t> kProtocolNames[] = {
    {"tcp", 6},     {"udp", 17},   {"udplite", 136}, {"icmp", 1},
    {"icmpv6", 58}, {"sctp", 132}, {"dccp", 33},     {"gre", 47},
};
constexpr Named<uint8_t> kTcpStateNames[] = {
    {"syn_sent", 1}, {"syn_recv", 2},  {"established", 3}, {"fin_wait", 4},  {"close_wait", 5},
    {"last_ack", 6}, {"time_wait", 7}, {"close", 8},       {"syn_sent2", 9},
};

template <size_t N>
Issue readNameList(const toml::node& node, const Named<uint8_t> (&names)[N],
                   std::vector<uint8_t>& out) {
  std::vector<uint8_t> values;
  Issue issue = readList(node, [&](const toml::node& e) -> Issue {
    uint8_t v = 0;
    if (Issue i = readEnum(e, names, v)) return i;
    if (std::find(values.begin(), values.end(), v) == values.end()) values.push_back(v);
    return std::nullopt;
  });
  if (!issue) out = std::move(values);
  return issue;
}

// Every helper of the kernel, as `expect_helpers` names them (table/helpers.hpp).
constexpr Named<uint8_t> kHelperNames[] = {
    {"ftp", 1},        {"tftp", 2},  {"sip", 3},         {"RAS", 4},         {"Q.931", 5},
    {"H.245", 6},      {"irc", 7},   {"pptp", 8},        {"amanda", 9},      {"sane", 10},
    {"snmp", 11},      {"snmp_trap", 12}, {"netbios-ns", 13},
};

constexpr bool helperNamesAreTheTables() {
  for (const Named<uint8_t>& h : kHelperNames) {
    if (table::helperName(h.value) != h.name) return false;
  }
  return std::size(kHelperNames) + 1 == table::kHelperCount;
}
static_assert(helperNamesAreTheTables(), "kHelperNames must list table/helpers.hpp's names");

constexpr KeySpec kKernelKeys[] = {
    {"expectations", [](const Node& n, Config& c) { return readBool(n, c.kernel.expectations); }},
    {"expect_helpers",
     [](const Node& n, Config& c) { return readNameList(n, kHelperNames, c.kernel.expectHelpers); }},
    {"commit", [](const Node& n, Config& c) { return readEnum(n, kCommitModes, c.kernel.commit); }},
    {"netlink_rcvbuf",
     [](const Node& n, Config& c) {
       return readNumber(n, kMinSocketBuffer, kMaxSocketBuffer, c.kernel.netlinkRcvbufBytes);
     }},
    {"netlink_sndbuf",
     [](const Node& n, Config& c) {
       return readNumber(n, kMinSocketBuffer, kMaxSocketBuffer, c.kernel.netlinkSndbufBytes);
     }},
    {"commit_batch",
     [](const Node& n, Config& c) { return readNumber(n, 1, 65536, c.kernel.commitBatch); }},
    {"commit_threads",
     [](const Node& n, Config& c) { return readNumber(n, 1, 16, c.kernel.commitThreads); }},
    {"protocols",
     [](const Node& n, Config& c) { return readNameList(n, kProtocolNames, c.kernel.protocols); }},
    {"tcp_states",
     [](const Node& n, Config& c) { return readNameList(n, kTcpStateNames, c.kernel.tcpStates); }},
    {"ignore_addresses",
     [](const Node& n, Config& c) {
       std::vector<std::string> cidrs;
       Issue issue = readList(n, [&](const toml::node& e) -> Issue {
         std::string cidr;
         if (Issue i = readCidr(e, cidr)) return i;
         cidrs.push_back(std::move(cidr));
         return std::nullopt;
       });
       if (!issue) c.kernel.ignoreAddresses = std::move(cidrs);
       return issue;
     }},
};

// ---- [[nat.rule]] ---------------------------------------------------------------------------

constexpr Named<table::NatType> kNatTypes[] = {
    {"snat", table::NatType::kSnat},
    {"dnat", table::NatType::kDnat},
    {"masquerade", table::NatType::kMasquerade},
    {"redirect", table::NatType::kRedirect},
};
constexpr Named<table::L3> kFamilies[] = {
    {"ipv4", table::L3::kIpv4},
    {"ipv6", table::L3::kIpv6},
};
constexpr Named<uint8_t> kNatFlagNames[] = {
    {"persistent", table::natflag::kPersistent},
    {"random", table::natflag::kRandom},
    {"fully-random", table::natflag::kFullyRandom},
};

std::string_view protocolName(uint8_t number) {
  for (const Named<uint8_t>& p : kProtocolNames) {
    if (p.value == number) return p.name;
  }
  return "?";
}

bool allDigits(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// "N" or "N-M" (a string) or N (an integer): ports min..65535, the first not above the last.
Issue readPortRange(const toml::node& node, int64_t min, table::PortRange& out) {
  auto check = [&](int64_t port) -> Issue {
    if (port < min || port > 65535)
      return "port " + std::to_string(port) + " is out of range " + std::to_string(min) + "..65535";
    return std::nullopt;
  };
  if (const auto* integer = node.as_integer()) {
    if (Issue issue = check(integer->get())) return issue;
    const auto port = static_cast<uint16_t>(integer->get());
    out = table::PortRange{port, port};
    return std::nullopt;
  }
  if (!node.is_string()) return "expected a port: an integer, or a string \"PORT\" or \"MIN-MAX\"";
  std::string text;
  if (Issue issue = readString(node, 32, text)) return issue;
  const size_t dash = text.find('-');
  const std::string low = text.substr(0, dash);
  const std::string high = dash == std::string::npos ? low : text.substr(dash + 1);
  // Up to nine digits, so that a big number is reported as out of range, yet stoll cannot throw.
  for (const std::string& part : {low, high}) {
    if (part.empty() || part.size() > 9 || !allDigits(part))
      return "\"" + printable(text) + "\" is not a port or a port range \"MIN-MAX\"";
  }
  const int64_t first = std::stoll(low);
  const int64_t last = std::stoll(high);
  if (Issue issue = check(first)) return issue;
  if (Issue issue = check(last)) return issue;
  if (first > last) {
    return "\"" + printable(text) + "\" is not a range: " + std::to_string(first) + " is above " +
           std::to_string(last);
  }
  out = table::PortRange{static_cast<uint16_t>(first), static_cast<uint16_t>(last)};
  return std::nullopt;
}

// "A" or "A-B": numeric addresses of one family, A not above B.
Issue readAddrRange(const toml::node& node, table::AddrRange& out) {
  std::string text;
  if (Issue issue = readString(node, 100, text)) return issue;
  const size_t dash = text.find('-');  // neither family writes a '-' in an address
  const std::string low = text.substr(0, dash);
  const std::string high = dash == std::string::npos ? low : text.substr(dash + 1);
  table::IpAddress first, last;
  if (Issue issue = parseAddress(low, first)) return issue;
  if (Issue issue = parseAddress(high, last)) return issue;
  if (first.l3 != last.l3) return "\"" + printable(text) + "\" mixes IPv4 and IPv6";
  // Addresses are big-endian bytes, so the byte arrays compare as the numbers do.
  if (first.addr.bytes > last.addr.bytes) {
    return "\"" + printable(text) + "\" is not a range: " + low + " is above " + high;
  }
  out = table::AddrRange{first.l3, first.addr, last.addr};
  return std::nullopt;
}

// An interface name, or a prefix of names followed by one '*' ("eth*"); "*" alone is any.
Issue readInterfacePattern(const toml::node& node, std::string& out) {
  std::string pattern;
  if (Issue issue = readString(node, 64, pattern)) return issue;
  std::string_view name = pattern;
  if (!name.empty() && name.back() == '*') name.remove_suffix(1);
  if (!name.empty() || pattern.empty()) {
    if (Issue issue = checkInterfaceName(name)) return issue;
  }
  out = std::move(pattern);
  return std::nullopt;
}

// A rule as read, before the checks across its keys.
struct RuleDraft {
  table::NatRule rule;
  bool hasType = false;  // `type` is required; rule.type has a default
};

constexpr TableKey<RuleDraft> kNatRuleKeys[] = {
    {"type",
     [](const Node& n, RuleDraft& d) -> Issue {
       if (Issue issue = readEnum(n, kNatTypes, d.rule.type)) return issue;
       d.hasType = true;
       return std::nullopt;
     }},
    {"family",
     [](const Node& n, RuleDraft& d) -> Issue {
       table::L3 family = table::L3::kIpv4;
       if (Issue issue = readEnum(n, kFamilies, family)) return issue;
       d.rule.family = family;
       return std::nullopt;
     }},
    {"protocol",
     [](const Node& n, RuleDraft& d) -> Issue {
       uint8_t protocol = 0;
       if (Issue issue = readEnum(n, kProtocolNames, protocol)) return issue;
       d.rule.protocol = protocol;
       return std::nullopt;
     }},
    {"source",
     [](const Node& n, RuleDraft& d) -> Issue {
       table::Prefix prefix;
       if (Issue issue = readPrefix(n, prefix)) return issue;
       d.rule.source = prefix;
       return std::nullopt;
     }},
    {"destination",
     [](const Node& n, RuleDraft& d) -> Issue {
       table::Prefix prefix;
       if (Issue issue = readPrefix(n, prefix)) return issue;
       d.rule.destination = prefix;
       return std::nullopt;
     }},
    {"sport",
     [](const Node& n, RuleDraft& d) -> Issue {
       table::PortRange ports;
       if (Issue issue = readPortRange(n, 0, ports)) return issue;
       d.rule.sport = ports;
       return std::nullopt;
     }},
    {"dport",
     [](const Node& n, RuleDraft& d) -> Issue {
       table::PortRange ports;
       if (Issue issue = readPortRange(n, 0, ports)) return issue;
       d.rule.dport = ports;
       return std::nullopt;
     }},
    {"in_interface",
     [](const Node& n, RuleDraft& d) { return readInterfacePattern(n, d.rule.inInterface); }},
    {"out_interface",
     [](const Node& n, RuleDraft& d) { return readInterfacePattern(n, d.rule.outInterface); }},
    {"zone",
     [](const Node& n, RuleDraft& d) -> Issue {
       uint16_t zone = 0;
       if (Issue issue = readNumber(n, 0, 65535, zone)) return issue;
       d.rule.zone = zone;
       return std::nullopt;
     }},
    {"to_address",
     [](const Node& n, RuleDraft& d) -> Issue {
       table::AddrRange range;
       if (Issue issue = readAddrRange(n, range)) return issue;
       d.rule.toAddress = range;
       return std::nullopt;
     }},
    // A translation to port 0 is meaningless.
    {"to_port",
     [](const Node& n, RuleDraft& d) -> Issue {
       table::PortRange ports;
       if (Issue issue = readPortRange(n, 1, ports)) return issue;
       d.rule.toPort = ports;
       return std::nullopt;
     }},
    {"flags",
     [](const Node& n, RuleDraft& d) -> Issue {
       uint8_t flags = 0;
       Issue issue = readList(n, [&](const toml::node& e) -> Issue {
         uint8_t flag = 0;
         if (Issue i = readEnum(e, kNatFlagNames, flag)) return i;
         flags |= flag;
         return std::nullopt;
       });
       if (!issue) d.rule.flags = flags;
       return issue;
     }},
};

std::string familyText(table::L3 l3) {
  return l3 == table::L3::kIpv4 ? "IPv4" : "IPv6";
}

// The checks across the keys of one rule, once every key was read; fills in rule.family when
// an address or the protocol pins it. Each problem is reported at its key (or at the rule).
void checkNatRule(RuleDraft& draft, const toml::table& t, const std::string& prefix,
                  Problems& problems) {
  table::NatRule& rule = draft.rule;
  auto report = [&](std::string_view key, const std::string& what) {
    const toml::node* at = key.empty() ? nullptr : t.get(key);
    if (at == nullptr) {
      problems.addForKey(t.source(), prefix, what);
    } else {
      problems.addForKey(at->source(), prefix + "." + std::string(key), what);
    }
  };

  if (!draft.hasType) {
    report("", "a rule needs 'type': \"snat\", \"dnat\", \"masquerade\" or \"redirect\"");
  } else {
    const std::string type = table::natTypeName(rule.type);
    switch (rule.type) {
      case table::NatType::kSnat:
      case table::NatType::kDnat:
        if (!rule.toAddress) report("", "a " + type + " rule needs 'to_address'");
        break;
      case table::NatType::kMasquerade:
        if (rule.toAddress) {
          report("to_address",
                 "a masquerade rule takes the output interface's address; leave 'to_address' out "
                 "(or use snat)");
        }
        break;
      case table::NatType::kRedirect:
        if (rule.toAddress) {
          report("to_address",
                 "a redirect rule takes the input interface's address; leave 'to_address' out "
                 "(or use dnat)");
        }
        break;
    }
    if ((rule.type == table::NatType::kDnat || rule.type == table::NatType::kRedirect) &&
        !rule.outInterface.empty()) {
      report("out_interface", "a " + type +
                                  " rule is decided before routing (as at prerouting), when the "
                                  "output interface is not known yet");
    }
  }

  // As nft: "transport protocol mapping is only valid after transport protocol match".
  for (std::string_view key : {"sport", "dport", "to_port"}) {
    if (t.get(key) == nullptr) continue;
    if (!rule.protocol) {
      report(key, "needs 'protocol' set to one with ports: tcp, udp, udplite, sctp or dccp");
    } else if (!table::hasPorts(*rule.protocol)) {
      report(key, "protocol \"" + std::string(protocolName(*rule.protocol)) +
                      "\" has no ports; only tcp, udp, udplite, sctp and dccp have");
    }
  }

  // One address family per rule. The keys that name one agree with the first of them in the
  // file; the protocol (icmp, icmpv6) comes last, so a conflict with it is reported at it.
  struct Pin {
    std::string_view key;
    table::L3 l3;
    const toml::node* node;
  };
  std::vector<Pin> pins;
  if (rule.family) pins.push_back({"family", *rule.family, t.get("family")});
  if (rule.source) pins.push_back({"source", rule.source->l3, t.get("source")});
  if (rule.destination) pins.push_back({"destination", rule.destination->l3, t.get("destination")});
  if (rule.toAddress) pins.push_back({"to_address", rule.toAddress->l3, t.get("to_address")});
  std::stable_sort(pins.begin(), pins.end(), [](const Pin& a, const Pin& b) {
    const toml::source_position& pa = a.node->source().begin;
    const toml::source_position& pb = b.node->source().begin;
    return std::tie(pa.line, pa.column) < std::tie(pb.line, pb.column);
  });
  if (rule.protocol == table::proto::kIcmp || rule.protocol == table::proto::kIcmpv6) {
    pins.push_back({"protocol",
                    *rule.protocol == table::proto::kIcmp ? table::L3::kIpv4 : table::L3::kIpv6,
                    t.get("protocol")});
  }
  auto says = [&](const Pin& p) -> std::string {  // what a key says about the family
    if (p.key == "family")
      return "\"" + std::string(p.l3 == table::L3::kIpv4 ? "ipv4" : "ipv6") + "\"";
    if (p.key == "protocol")
      return "\"" + std::string(protocolName(*rule.protocol)) + "\" is for " + familyText(p.l3);
    return "an " + familyText(p.l3) + " address";
  };
  for (size_t i = 1; i < pins.size(); ++i) {
    const Pin& first = pins.front();
    if (pins[i].l3 == first.l3) continue;
    const std::string firstSays =
        first.key == "family" ? "is " + says(first) : "is " + familyText(first.l3);
    report(pins[i].key, says(pins[i]) + ", but '" + std::string(first.key) + "' " + firstSays +
                            " (one address family per rule)");
  }
  if (!pins.empty()) rule.family = pins.front().l3;
}

void readNatRules(const toml::node& value, std::string_view dottedKey, Config& config,
                  Problems& problems) {
  forEachTable(value, dottedKey, "rule", problems,
               [&](const toml::table& t, const std::string& prefix) {
                 RuleDraft draft;
                 // Checks across keys over half-read values would only add noise.
                 if (readTableKeys(t, prefix, kNatRuleKeys, draft, problems)) {
                   checkNatRule(draft, t, prefix, problems);
                 }
                 config.tracker.nat.rules.push_back(std::move(draft.rule));
               });
}

constexpr KeySpec kNatKeys[] = {
    {"rule", nullptr, readNatRules},
};

// ---- [replay] -------------------------------------------------------------------------------

// One interface's name: replay hands it with each packet, so a pattern makes no sense here.
Issue readReplayInterface(const toml::node& node, std::string& out) {
  std::string name;
  if (Issue issue = readInterface(node, name)) return issue;
  if (name.find('*') != std::string::npos)
    return "\"" + printable(name) + "\" is a pattern; this names one interface";
  out = std::move(name);
  return std::nullopt;
}

Issue readAddressList(const toml::node& node, std::vector<table::IpAddress>& out) {
  std::vector<table::IpAddress> addresses;
  Issue issue = readList(node, [&](const toml::node& e) -> Issue {
    table::IpAddress a;
    if (Issue i = readIpAddress(e, a)) return i;
    addresses.push_back(a);
    return std::nullopt;
  });
  if (!issue) out = std::move(addresses);
  return issue;
}

constexpr KeySpec kReplayKeys[] = {
    {"inside",
     [](const Node& n, Config& c) {
       std::vector<table::Prefix> prefixes;
       Issue issue = readList(n, [&](const toml::node& e) -> Issue {
         table::Prefix p;
         if (Issue i = readPrefix(e, p)) return i;
         prefixes.push_back(p);
         return std::nullopt;
       });
       if (!issue) c.replay.inside = std::move(prefixes);
       return issue;
     }},
    {"in_interface",
     [](const Node& n, Config& c) { return readReplayInterface(n, c.replay.inInterface); }},
    {"out_interface",
     [](const Node& n, Config& c) { return readReplayInterface(n, c.replay.outInterface); }},
    {"out_addresses",
     [](const Node& n, Config& c) { return readAddressList(n, c.replay.outAddresses); }},
    {"in_addresses",
     [](const Node& n, Config& c) { return readAddressList(n, c.replay.inAddresses); }},
    {"drop_invalid", [](const Node& n, Config& c) { return readBool(n, c.replay.dropInvalid); }},
};

std::optional<CrossIssue> checkReplay(const Config& c) {
  if (c.replay.inInterface != c.replay.outInterface) return std::nullopt;
  // Reported at the key that was changed from its default (out_interface if both were).
  if (c.replay.outInterface != ReplaySettings{}.outInterface) {
    return CrossIssue{"out_interface", "must differ from in_interface (both \"" +
                                           printable(c.replay.outInterface) + "\")"};
  }
  return CrossIssue{"in_interface", "must differ from out_interface (both \"" +
                                        printable(c.replay.inInterface) + "\")"};
}

// ---- [control], [metrics], [log] --------------------------------------------------------------

constexpr KeySpec kControlKeys[] = {
    {"socket",
     [](const Node& n, Config& c) -> Issue {
       std::string path;
       // sockaddr_un holds 108 bytes with the terminating zero.
       if (Issue issue = readString(n, 107, path)) return issue;
       if (path.empty() || path.front() != '/') return "expected an absolute path";
       c.control.socket = std::move(path);
       return std::nullopt;
     }},
};

constexpr KeySpec kMetricsKeys[] = {
    {"listen",
     [](const Node& n, Config& c) -> Issue {
       std::string text, address;
       uint32_t port = 0;
       if (Issue issue = readString(n, 80, text)) return issue;
       if (text.empty()) {
         c.metrics.listen.clear();
         return std::nullopt;
       }
       if (Issue issue = splitPeer(text, address, port)) return issue;
       if (port == 0) return "expected ADDRESS:PORT (\"[ADDRESS]:PORT\" for IPv6)";
       c.metrics.listen = std::move(text);
       return std::nullopt;
     }},
};

constexpr Named<LogSettings::Level> kLogLevels[] = {
    {"error", LogSettings::Level::kError},
    {"warning", LogSettings::Level::kWarning},
    {"info", LogSettings::Level::kInfo},
    {"debug", LogSettings::Level::kDebug},
};
constexpr Named<LogSettings::Target> kLogTargets[] = {
    {"stderr", LogSettings::Target::kStderr},
    {"syslog", LogSettings::Target::kSyslog},
};
constexpr KeySpec kLogKeys[] = {
    {"level", [](const Node& n, Config& c) { return readEnum(n, kLogLevels, c.log.level); }},
    {"target", [](const Node& n, Config& c) { return readEnum(n, kLogTargets, c.log.target); }},
};

constexpr SectionSpec kSections[] = {
    {"node", kNodeKeys, nullptr},
    {"sync", kSyncKeys, checkSync},
    {"source", kSourceKeys, nullptr},
    {"kernel", kKernelKeys, nullptr},
    {"tracker", kTrackerKeys, checkTracker},
    {"nat", kNatKeys, nullptr},
    {"replay", kReplayKeys, checkReplay},
    {"control", kControlKeys, nullptr},
    {"metrics", kMetricsKeys, nullptr},
    {"log", kLogKeys, nullptr},
};

// ---------------------------------------------------------------------------------------------
// The walk over the parsed document.

void readSection(const SectionSpec& spec, const toml::table& section, Config& config,
                 Problems& problems) {
  bool allRead = true;
  for (auto&& [key, node] : section) {
    std::string_view name = key.str();  // lambdas cannot capture structured bindings in clang 15
    std::string dotted = std::string(spec.name) + "." + std::string(name);
    auto known = std::find_if(spec.keys.begin(), spec.keys.end(),
                              [&](const KeySpec& k) { return k.name == name; });
    if (known == spec.keys.end()) {
      problems.add(key.source(), "unknown key '" + printable(dotted) + "'");
      allRead = false;
    } else if (known->nested != nullptr) {
      const size_t before = problems.size();
      known->nested(node, dotted, config, problems);
      allRead = allRead && problems.size() == before;
    } else if (Issue issue = known->apply(node, config)) {
      problems.addForKey(node.source(), dotted, *issue);
      allRead = false;
    }
  }
  // A cross-key rule over half-read values would only add noise to the real problem.
  if (!allRead || spec.check == nullptr) return;
  if (std::optional<CrossIssue> issue = spec.check(config)) {
    const toml::node* at = section.get(issue->key);
    problems.addForKey(at != nullptr ? at->source() : section.source(),
                       std::string(spec.name) + "." + std::string(issue->key), issue->what);
  }
}

ConfigResult readDocument(const toml::table& root, std::string_view sourceName) {
  Config config;
  Problems problems;
  for (auto&& [key, node] : root) {
    std::string_view name = key.str();
    const auto* spec = std::find_if(std::begin(kSections), std::end(kSections),
                                    [&](const SectionSpec& s) { return s.name == name; });
    if (spec == std::end(kSections)) {
      problems.add(key.source(),
                   std::string(node.is_table() ? "unknown section '" : "unknown key '") +
                       printable(name) + "'");
    } else if (const toml::table* section = node.as_table()) {
      readSection(*spec, *section, config, problems);
    } else {
      problems.addForKey(node.source(), name, "expected a table");
    }
  }
  if (!problems.empty()) return problems.toError(sourceName);
  return config;
}

}  // namespace

ConfigResult parseConfig(std::string_view text, std::string_view sourceName) {
  try {
    toml::table root = toml::parse(text, sourceName);
    return readDocument(root, sourceName);
  } catch (const toml::parse_error& e) {
    Problems problems;
    problems.add(e.source(), printable(e.description()));
    return problems.toError(sourceName);
  } catch (const std::exception& e) {  // bad_alloc and the like: still an error value
    return ConfigError{printable(sourceName) + ": cannot parse config: " + e.what()};
  }
}

ConfigResult loadConfig(const std::string& path) {
  auto fail = [&](int err) {
    return ConfigError{printable(path) + ": cannot read config file: " + std::strerror(err)};
  };
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"),
                                                       &std::fclose);
  if (!file) return fail(errno);

  std::string text;
  char buf[16384];
  while (true) {
    errno = 0;
    size_t n = std::fread(buf, 1, sizeof buf, file.get());
    int readErrno = errno;  // captured before anything else can change it
    text.append(buf, n);
    if (text.size() > kMaxFileBytes) {
      return ConfigError{printable(path) + ": cannot read config file: larger than " +
                         std::to_string(kMaxFileBytes) + " bytes"};
    }
    if (n < sizeof buf) {
      if (std::ferror(file.get()) != 0) return fail(readErrno != 0 ? readErrno : EIO);
      break;
    }
  }
  return parseConfig(text, path);
}

}  // namespace ctsync::conf
