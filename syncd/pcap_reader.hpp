#pragma once
// Reads IP datagrams out of a capture file (libpcap): Ethernet (with VLAN tags), raw IP,
// Linux cooked (SLL and SLL2) and BSD loopback captures. Frames that carry no IP are skipped.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <variant>

#include "table/types.hpp"

struct pcap;

namespace ctsync::syncd {

struct Frame {
  table::Nanos time;  // capture time, nanoseconds since the Unix epoch
  const uint8_t* ip;  // the IP header; valid until the next call to next()
  size_t len;         // captured bytes from the IP header on
};

struct OpenError {
  std::string message;
};

bool supportedLinkType(int linkType);

// Finds the IP datagram inside one link-layer frame. Empty when the frame is not IP (ARP, ...)
// or too short. Pure function, tested without files.
std::optional<std::pair<size_t, size_t>> locateIp(int linkType, const uint8_t* data, size_t len);

class PcapReader {
 public:
  static std::variant<PcapReader, OpenError> open(const std::string& path);
  PcapReader(PcapReader&& other) noexcept;
  PcapReader& operator=(PcapReader&&) = delete;
  ~PcapReader();

  // The next IP datagram, or empty at the end of the file (or on a read error: see error()).
  std::optional<Frame> next();
  const std::string& error() const { return error_; }
  uint64_t skipped() const { return skipped_; }  // frames that carried no IP
  int linkType() const { return linkType_; }

 private:
  PcapReader(pcap* handle, int linkType) : handle_(handle), linkType_(linkType) {}
  pcap* handle_;
  int linkType_;
  uint64_t skipped_ = 0;
  std::string error_;
};

}  // namespace ctsync::syncd
