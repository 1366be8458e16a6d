#include "syncd/log.hpp"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <syslog.h>

#include <memory>

namespace ctsync::syncd {

void initLog(const conf::LogSettings& settings) {
  std::shared_ptr<spdlog::logger> logger;
  if (settings.target == conf::LogSettings::Target::kSyslog) {
    logger = std::make_shared<spdlog::logger>(
        "ctsyncd",
        std::make_shared<spdlog::sinks::syslog_sink_mt>("ctsyncd", LOG_PID, LOG_DAEMON, true));
    logger->set_pattern("%l %v");  // syslog adds time and host
  } else {
    logger = std::make_shared<spdlog::logger>("ctsyncd",
                                              std::make_shared<spdlog::sinks::stderr_sink_mt>());
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %l %v");
  }
  switch (settings.level) {
    case conf::LogSettings::Level::kError:
      logger->set_level(spdlog::level::err);
      break;
    case conf::LogSettings::Level::kWarning:
      logger->set_level(spdlog::level::warn);
      break;
    case conf::LogSettings::Level::kInfo:
      logger->set_level(spdlog::level::info);
      break;
    case conf::LogSettings::Level::kDebug:
      logger->set_level(spdlog::level::debug);
      break;
  }
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(std::move(logger));
}

}  // namespace ctsync::syncd
