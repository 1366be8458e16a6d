#pragma once
// Writes IP datagrams to a capture file (libpcap, link type LINKTYPE_RAW: no link header, so
// both families mix and any tool reads it).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <variant>

#include "table/types.hpp"

struct pcap;
struct pcap_dumper;

namespace ctsync::syncd {

class PcapWriter {
 public:
  // The file is created (or truncated); the error names the path and the reason.
  static std::variant<PcapWriter, std::string> create(const std::string& path);
  PcapWriter(PcapWriter&& other) noexcept;
  PcapWriter& operator=(PcapWriter&&) = delete;
  ~PcapWriter();

  // Appends one datagram stamped `time` (ns since the Unix epoch; written in microseconds).
  void write(const uint8_t* ip, size_t len, table::Nanos time);
  // Flushes and closes; the first write or close error, or "" when all went to disk.
  std::string close();
  uint64_t written() const { return written_; }

 private:
  PcapWriter(pcap* dead, pcap_dumper* dumper, std::string path)
      : dead_(dead), dumper_(dumper), path_(std::move(path)) {}
  pcap* dead_;
  pcap_dumper* dumper_;
  std::string path_;
  uint64_t written_ = 0;
};

}  // namespace ctsync::syncd
