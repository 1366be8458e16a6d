#include "conf/config.hpp"

#include <toml++/toml.h>

#include <algorithm>
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

struct EvictionName {
  std::string_view name;
  table::EvictionPolicy policy;
};
constexpr EvictionName kEvictionNames[] = {
    {"kernel", table::EvictionPolicy::kKernel},
    {"closing-first", table::EvictionPolicy::kClosingFirst},
};

Issue readEviction(const toml::node& node, table::EvictionPolicy& out) {
  const auto* v = node.as_string();
  if (v == nullptr) return "expected a string";
  for (const EvictionName& e : kEvictionNames) {
    if (v->get() == e.name) {
      out = e.policy;
      return std::nullopt;
    }
  }
  std::string what = "expected one of";
  for (const EvictionName& e : kEvictionNames) {
    what += (&e == kEvictionNames ? " \"" : ", \"") + std::string(e.name) + "\"";
  }
  return what + ", got \"" + printable(v->get()) + "\"";
}

// ---------------------------------------------------------------------------------------------
// The schema: one table of known keys per section. To add a section: add its struct to Config,
// write its KeySpec table (and a cross-key check if it has one) and list it in kSections.

// Reads one key's value into the config, or says what is wrong with the value.
using ApplyFn = Issue (*)(const toml::node& value, Config& config);

struct KeySpec {
  std::string_view name;
  ApplyFn apply;
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
    {"eviction", [](const Node& n, Config& c) { return readEviction(n, tbl(c).eviction); }},
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

constexpr SectionSpec kSections[] = {
    {"tracker", kTrackerKeys, checkTracker},
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
