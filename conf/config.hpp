#pragma once
// The daemon's configuration: a TOML file turned into plain, validated structs.
//
// toml++ stays inside conf/: this header exposes only plain data. The file format (every key,
// its type, range and default) is documented in conf/ctsyncd.example.toml and the README.
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "table/settings.hpp"

namespace ctsync::conf {

// Everything a daemon needs to start. A default-constructed Config is what an empty file gives.
struct Config {
  table::TrackerSettings tracker;  // [tracker]
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
