#include "syncd/pcap_writer.hpp"

#include <pcap/pcap.h>

#include <cerrno>
#include <cstring>

namespace ctsync::syncd {

std::variant<PcapWriter, std::string> PcapWriter::create(const std::string& path) {
  pcap_t* dead = pcap_open_dead(DLT_RAW, 65535);
  if (dead == nullptr) return path + ": cannot set up a capture writer";
  pcap_dumper_t* dumper = pcap_dump_open(dead, path.c_str());
  if (dumper == nullptr) {
    std::string why = path + ": " + pcap_geterr(dead);
    pcap_close(dead);
    return why;
  }
  return PcapWriter(dead, dumper, path);
}

PcapWriter::PcapWriter(PcapWriter&& other) noexcept
    : dead_(other.dead_),
      dumper_(other.dumper_),
      path_(std::move(other.path_)),
      written_(other.written_) {
  other.dead_ = nullptr;
  other.dumper_ = nullptr;
}

PcapWriter::~PcapWriter() {
  close();
}

void PcapWriter::write(const uint8_t* ip, size_t len, table::Nanos time) {
  if (dumper_ == nullptr) return;
  pcap_pkthdr h{};
  h.ts.tv_sec = static_cast<time_t>(time / table::kSecond);
  h.ts.tv_usec = static_cast<suseconds_t>((time % table::kSecond) / 1000);
  h.caplen = h.len = static_cast<bpf_u_int32>(len);
  pcap_dump(reinterpret_cast<u_char*>(dumper_), &h, ip);
  ++written_;
}

std::string PcapWriter::close() {
  std::string error;
  if (dumper_ != nullptr) {
    if (pcap_dump_flush(dumper_) != 0) error = path_ + ": " + std::strerror(errno);
    pcap_dump_close(dumper_);
    dumper_ = nullptr;
  }
  if (dead_ != nullptr) {
    pcap_close(dead_);
    dead_ = nullptr;
  }
  return error;
}

}  // namespace ctsync::syncd
