#pragma once
// `ctsyncd replay FILE.pcap`: every packet of a capture through the tracker (with the
// config's NAT rules) at its capture time; events as they happen, then the table as it stands
// at the last packet's time. With a write path, the packets as the firewall would send them.
#include <cstdint>
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
  // Where to write every packet as the firewall would send it (rewritten by NAT, TTL or hop
  // limit decremented, reassembled datagrams whole; dropped ones left out).
  std::optional<std::string> writePath;
};

// A router's forwarding step on the IP datagram at `ip`: TTL or hop limit down by one, the
// IPv4 header checksum updated as the kernel's ip_decrease_ttl does it. False (and the
// datagram unchanged) when it had run out: a router drops it.
bool forwardHop(uint8_t* ip);

// Returns the process exit status: 0 on success, 2 when the capture or the config cannot be
// used (one line on `err` says why).
int runReplay(const ReplayOptions& options, std::ostream& out, std::ostream& err);

}  // namespace ctsync::syncd
