#pragma once
// The daemon's configuration: a TOML file turned into plain, validated structs.
//
// toml++ stays inside conf/: this header exposes only plain data. The file format (every key,
// its type, range and default) is documented in conf/ctsyncd.example.toml and the README.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "table/settings.hpp"

namespace ctsync::conf {

// [node]: who this node is.
struct NodeSettings {
  uint16_t id = 0;         // 1..65535, unique in the cluster; 0 = not set (the daemon needs it)
  uint32_t clusterId = 0;  // the same on every node of a cluster; datagrams of others are dropped
  enum class Role : uint8_t { kBackup, kActive } role = Role::kBackup;  // at start
};

// [[sync.link]]: one sync link. Addresses are numeric strings, checked for syntax and family.
struct LinkSettings {
  enum class Kind : uint8_t { kMulticast, kUnicast } kind = Kind::kMulticast;
  std::string interface;           // multicast: required; unicast: optional (binds to the device)
  std::string group;               // multicast: an IPv4 (224.0.0.0/4) or IPv6 (ff00::/8) group
  uint16_t port = 3780;            // multicast: the group port; unicast: the local port
  std::string localAddress;        // unicast: address to bind ("" = any of the peers' family)
  std::vector<std::string> peers;  // unicast: "ADDR", "ADDR:PORT", "[V6]:PORT"
  uint32_t rcvbufBytes = 8u << 20;
  uint32_t sndbufBytes = 4u << 20;
};

// [sync]: the replication protocol.
struct SyncSettings {
  std::vector<LinkSettings> links;  // in priority order; the daemon needs at least one
  std::string keyFile;              // 32 raw bytes or 64 hex digits; the daemon needs it
  bool encrypt = false;             // AEAD (XChaCha20-Poly1305) instead of a MAC only
  uint32_t mtu = 1500;              // path MTU of the sync links: datagrams fill it
  table::Nanos aliveInterval = table::kMillisecond * 200;
  table::Nanos peerTimeout = table::seconds(2);
  table::Nanos digestInterval = table::seconds(10);  // 0 = no anti-entropy
  table::Nanos tombstoneTime = table::seconds(120);
  uint32_t resendLogFlows = 1u << 18;
  uint64_t paceBytesPerSecond = 64ull << 20;  // 0 = unpaced
};

// [source]: where this node's flows come from.
struct SourceSettings {
  enum class Kind : uint8_t { kKernel } kind = Kind::kKernel;  // "inline", "passive" come later
};

// [kernel]: the kernel conntrack source and sink.
struct KernelSettings {
  enum class Commit : uint8_t { kOnPromote, kContinuous } commit = Commit::kOnPromote;
  uint32_t netlinkRcvbufBytes = 64u << 20;  // event socket; ENOBUFS still triggers a resync
  uint32_t netlinkSndbufBytes = 16u << 20;
  uint32_t commitBatch = 8192;               // messages per netlink send when committing
  uint32_t commitThreads = 1;                // netlink sockets writing a large commit at once
  std::vector<uint8_t> protocols;            // IP protocols to sync; empty = all
  std::vector<std::string> ignoreAddresses;  // CIDRs: flows to or from them are not synced
  std::vector<uint8_t> tcpStates;            // table::TcpState values to sync; empty = all
  // Helpers' expectations (conntrackd's ExpectationSync): mirrored, replicated, committed.
  bool expectations = true;
  std::vector<uint8_t> expectHelpers;  // table::helperCode() values to sync; empty = all
};

struct ControlSettings {
  std::string socket = "/run/ctsyncd.sock";  // UNIX socket, root only
};

struct MetricsSettings {
  std::string listen;  // "ADDR:PORT" for Prometheus over HTTP; "" = off
};

// [replay]: how `ctsyncd replay` places a capture's packets on the firewall, which a capture
// cannot tell: a packet whose source lies in `inside` arrives on `inInterface` and leaves on
// `outInterface`; any other packet the other way. The addresses are what masquerade (on the
// output interface) and redirect (on the input interface) find there.
struct ReplaySettings {
  std::vector<table::Prefix> inside;
  std::string inInterface = "in0";
  std::string outInterface = "out0";
  std::vector<table::IpAddress> outAddresses;  // on outInterface
  std::vector<table::IpAddress> inAddresses;   // on inInterface
  // `--write` leaves out packets the tracker judged INVALID, as `ct state invalid drop` does.
  bool dropInvalid = true;
};

struct LogSettings {
  enum class Level : uint8_t { kError, kWarning, kInfo, kDebug } level = Level::kInfo;
  enum class Target : uint8_t { kStderr, kSyslog } target = Target::kStderr;
};

// Everything a daemon needs to start. A default-constructed Config is what an empty file gives.
struct Config {
  NodeSettings node;               // [node]
  SyncSettings sync;               // [sync], [[sync.link]]
  SourceSettings source;           // [source]
  KernelSettings kernel;           // [kernel]
  table::TrackerSettings tracker;  // [tracker]; tracker.nat from [[nat.rule]]
  ReplaySettings replay;           // [replay]
  ControlSettings control;         // [control]
  MetricsSettings metrics;         // [metrics]
  LogSettings log;                 // [log]
};

// Why a configuration was rejected. `message` holds every problem found, one per line, sorted by
// position, each as "FILE:LINE:COLUMN: key 'section.key': what is wrong" (FILE is the
// `sourceName` given to parseConfig, or the path given to loadConfig). A TOML syntax error stops
// the parse, so it is always reported alone. Positions are 1-based; an unknown key points at the
// key, a wrong type or value points at the value.
struct ConfigError {
  std::string message;
};

// Either a Config or a ConfigError. Calling value() on an error or error() on a success is a bug
// (std::bad_variant_access).
class ConfigResult {
 public:
  ConfigResult(Config config) : v_(std::move(config)) {}     // NOLINT(google-explicit-constructor)
  ConfigResult(ConfigError error) : v_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return std::holds_alternative<Config>(v_); }
  explicit operator bool() const { return ok(); }

  const Config& value() const& { return std::get<Config>(v_); }
  Config&& value() && { return std::get<Config>(std::move(v_)); }
  const ConfigError& error() const { return std::get<ConfigError>(v_); }

 private:
  std::variant<Config, ConfigError> v_;
};

// Reads and parses the file at `path` (at most 1 MiB). A file that cannot be read gives
// "PATH: cannot read config file: <strerror>". Throws nothing but std::bad_alloc.
ConfigResult loadConfig(const std::string& path);

// Parses TOML `text`; `sourceName` only labels error messages. Does no I/O. Never throws.
ConfigResult parseConfig(std::string_view text, std::string_view sourceName);

}  // namespace ctsync::conf
