#pragma once
// The daemon's log: spdlog, to stderr (foreground, systemd's journal) or syslog (daemon
// facility). Lines are "TIME LEVEL event key=value ...": the first word names what happened,
// the rest are fields a log pipeline can split on spaces and '='.
#include <spdlog/spdlog.h>

#include "conf/config.hpp"

namespace ctsync::syncd {

// Replaces spdlog's default logger. Call once at start, before anything logs.
void initLog(const conf::LogSettings& settings);

}  // namespace ctsync::syncd
