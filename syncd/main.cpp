// ctsyncd: the ctsync daemon (`ctsyncd --config FILE`: kernel conntrack mirrored and
// replicated, roles, control socket, metrics) and its offline `replay` mode.
// clang-format off
#include <utility>  // before asio: Boost 1.74 with GCC 12 in C++20 mode needs it
// clang-format on

#include <signal.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/program_options.hpp>
#include <iostream>

#include "conf/config.hpp"
#include "syncd/control.hpp"
#include "syncd/daemon.hpp"
#include "syncd/log.hpp"
#include "syncd/metrics.hpp"
#include "syncd/replay.hpp"

namespace po = boost::program_options;

namespace {

constexpr const char* kUsage =
    "usage: ctsyncd --config FILE.toml [--check]   run the daemon (--check: validate and exit)\n"
    "       ctsyncd replay FILE.pcap [--events] [--json] [--counters] [--stats] "
    "[--config FILE.toml] [--write OUT.pcap]\n"
    "       ctsyncd --help | --version\n";

int daemonMain(const std::string& configPath, bool checkOnly) {
  const ctsync::conf::ConfigResult loaded = ctsync::conf::loadConfig(configPath);
  if (!loaded) {
    std::cerr << loaded.error().message << "\nctsyncd: configuration rejected, not starting\n";
    return 1;
  }
  const ctsync::conf::Config& config = loaded.value();
  if (checkOnly) {
    std::cout << configPath << ": ok\n";
    return 0;
  }
  ctsync::syncd::initLog(config.log);
  // A peer or ctsyncctl going away must not kill the daemon with SIGPIPE.
  ::signal(SIGPIPE, SIG_IGN);
  boost::asio::io_context io;
  auto created = ctsync::syncd::Daemon::create(io, config);
  if (auto* err = std::get_if<std::string>(&created)) {
    spdlog::error("start_failed config={} reason=\"{}\"", configPath, *err);
    return 1;
  }
  auto daemon = std::move(std::get<std::unique_ptr<ctsync::syncd::Daemon>>(created));
  auto control = ctsync::syncd::ControlServer::open(io, config.control.socket, *daemon);
  if (auto* err = std::get_if<std::string>(&control)) {
    spdlog::error("start_failed control_socket=\"{}\"", *err);
    return 1;
  }
  auto controlServer = std::move(std::get<std::unique_ptr<ctsync::syncd::ControlServer>>(control));
  std::unique_ptr<ctsync::syncd::MetricsServer> metricsServer;
  if (!config.metrics.listen.empty()) {
    auto m = ctsync::syncd::MetricsServer::open(io, config.metrics.listen,
                                                [&daemon] { return daemon->metrics(); });
    if (auto* err = std::get_if<std::string>(&m)) {
      spdlog::error("start_failed metrics=\"{}\"", *err);
      return 1;
    }
    metricsServer = std::move(std::get<std::unique_ptr<ctsync::syncd::MetricsServer>>(m));
    spdlog::info("metrics_listening address={}", config.metrics.listen);
  }
  spdlog::info("control_listening socket={}", config.control.socket);
  boost::asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](const boost::system::error_code& ec, int signo) {
    if (ec) return;
    spdlog::info("signal name={}", signo == SIGTERM ? "SIGTERM" : "SIGINT");
    if (metricsServer) metricsServer->close();
    controlServer->close();
    daemon->shutdown();
    io.stop();
  });
  io.run();
  metricsServer.reset();
  controlServer.reset();
  daemon.reset();
  return 0;
}

int replayMain(int argc, char** argv) {
  ctsync::syncd::ReplayOptions options;
  std::string config, write;
  po::options_description desc("replay options");
  desc.add_options()("help,h", "show this help")("events", po::bool_switch(&options.events),
                                                 "print each event when it happens")(
      "json", po::bool_switch(&options.json), "JSON lines instead of conntrack text")(
      "counters", po::bool_switch(&options.counters), "print packets= and bytes=")(
      "stats", po::bool_switch(&options.stats), "print a summary on stderr")(
      "config", po::value<std::string>(&config), "TOML config ([tracker], [[nat.rule]], [replay])")(
      "write", po::value<std::string>(&write),
      "write the packets as the firewall would send them (rewritten, TTL decremented, "
      "dropped ones left out) to this capture file")(
      "pcap", po::value<std::string>(&options.pcapPath), "capture file");
  po::positional_options_description pos;
  pos.add("pcap", 1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).positional(pos).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "ctsyncd replay: " << e.what() << '\n' << kUsage;
    return 2;
  }
  if (vm.count("help") != 0U) {
    std::cout << kUsage << desc;
    return 0;
  }
  if (options.pcapPath.empty()) {
    std::cerr << "ctsyncd replay: no capture file given\n" << kUsage;
    return 2;
  }
  if (!config.empty()) options.configPath = config;
  if (!write.empty()) options.writePath = write;
  return ctsync::syncd::runReplay(options, std::cout, std::cerr);
}

}  // namespace

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  if (argc >= 2 && std::string(argv[1]) == "replay") return replayMain(argc - 1, argv + 1);
  if (argc >= 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
    std::cout << kUsage;
    return 0;
  }
  if (argc >= 2 && std::string(argv[1]) == "--version") {
    std::cout << "ctsyncd 0.1.0\n";
    return 0;
  }
  if (argc >= 2 && std::string(argv[1]).rfind("--config", 0) == 0) {
    std::string path;
    bool check = false;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--config" && i + 1 < argc) {
        path = argv[++i];
      } else if (a.rfind("--config=", 0) == 0) {
        path = a.substr(9);
      } else if (a == "--check") {
        check = true;
      } else {
        std::cerr << "ctsyncd: unexpected argument '" << a << "'\n" << kUsage;
        return 2;
      }
    }
    if (path.empty()) {
      std::cerr << "ctsyncd: --config needs a file\n" << kUsage;
      return 2;
    }
    return daemonMain(path, check);
  }
  std::cerr << "ctsyncd: expected a command\n" << kUsage;
  return 2;
}
