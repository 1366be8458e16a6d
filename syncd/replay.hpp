#pragma once
// `ctsyncd replay FILE.pcap`: every packet of a capture through the tracker at its capture
// time; events as they happen, then the table as it stands at the last packet's time.
#include <iosfwd>
#include <optional>
#include <string>

namespace ctsync::syncd {

struct ReplayOptions {
  std::string pcapPath;
  std::optional<std::string> configPath;
  bool events = false;    // print each event when it happens
  bool json = false;      // JSON lines instead of conntrack-tools text
  bool counters = false;  // packets=/bytes= in text output (as with nf_conntrack_acct=1)
  bool stats = false;     // a summary of packets, invalid reasons and table counters on `err`
};

// Returns the process exit status: 0 on success, 2 when the capture or the config cannot be
// used (one line on `err` says why).
int runReplay(const ReplayOptions& options, std::ostream& out, std::ostream& err);

}  // namespace ctsync::syncd
