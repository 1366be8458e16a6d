// ctsyncd: the ctsync daemon. For now it offers the offline `replay` mode; the daemon proper
// (kernel source, replication, control socket) is built on top of the same tracker.
#include <boost/program_options.hpp>
#include <iostream>

#include "syncd/replay.hpp"

namespace po = boost::program_options;

namespace {

constexpr const char* kUsage =
    "usage: ctsyncd replay FILE.pcap [--events] [--json] [--counters] [--stats] "
    "[--config FILE.toml]\n"
    "       ctsyncd --help | --version\n";

int replayMain(int argc, char** argv) {
  ctsync::syncd::ReplayOptions options;
  std::string config;
  po::options_description desc("replay options");
  desc.add_options()("help,h", "show this help")("events", po::bool_switch(&options.events),
                                                 "print each event when it happens")(
      "json", po::bool_switch(&options.json), "JSON lines instead of conntrack text")(
      "counters", po::bool_switch(&options.counters), "print packets= and bytes=")(
      "stats", po::bool_switch(&options.stats), "print a summary on stderr")(
      "config", po::value<std::string>(&config), "TOML config ([tracker] section)")(
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
  std::cerr << "ctsyncd: expected a command\n" << kUsage;
  return 2;
}
