#include "syncd/pcap_reader.hpp"

#include <pcap/pcap.h>

namespace ctsync::syncd {
namespace {

uint16_t be16(const uint8_t* p) {
  return static_cast<uint16_t>((p[0] << 8) | p[1]);
}

bool isIpEthertype(uint16_t type) {
  return type == 0x0800 || type == 0x86dd;
}

// Skips 802.1Q / 802.1ad tags; returns the offset of the payload or empty.
std::optional<size_t> afterEthertype(const uint8_t* data, size_t len, size_t typeOffset) {
  size_t off = typeOffset;
  for (int tags = 0; tags < 4; ++tags) {
    if (off + 2 > len) return std::nullopt;
    const uint16_t type = be16(data + off);
    if (type == 0x8100 || type == 0x88a8) {
      off += 4;
      continue;
    }
    if (!isIpEthertype(type)) return std::nullopt;
    return off + 2;
  }
  return std::nullopt;
}

}  // namespace

namespace {

// Where the IP header starts in a frame of this link type (for SLL2: where the protocol is
// too); empty for link types we do not read.
struct Layout {
  size_t typeOffset;  // offset of the EtherType-style protocol field, or kNoType
  size_t ipOffset;    // for link types without such a field
};
constexpr size_t kNoType = ~size_t{0};

std::optional<Layout> layoutOf(int linkType) {
  switch (linkType) {
    case DLT_EN10MB:
      return Layout{12, 0};
    case DLT_RAW:
    case 14:   // DLT_RAW on OpenBSD
    case 228:  // LINKTYPE_IPV4
    case 229:  // LINKTYPE_IPV6
      return Layout{kNoType, 0};
    case DLT_LINUX_SLL:  // 16-byte header, protocol at 14
      return Layout{14, 0};
    case 276:  // LINKTYPE_LINUX_SLL2: protocol at 0, 20-byte header
      return Layout{kNoType, 20};
    case DLT_NULL:
    case DLT_LOOP:
      return Layout{kNoType, 4};
    default:
      return std::nullopt;
  }
}

}  // namespace

bool supportedLinkType(int linkType) { return layoutOf(linkType).has_value(); }

std::optional<std::pair<size_t, size_t>> locateIp(int linkType, const uint8_t* data, size_t len) {
  const auto layout = layoutOf(linkType);
  if (!layout) return std::nullopt;
  std::optional<size_t> off;
  if (layout->typeOffset != kNoType) {
    off = afterEthertype(data, len, layout->typeOffset);
  } else if (linkType == 276) {
    if (len >= 20 && isIpEthertype(be16(data))) off = layout->ipOffset;
  } else {
    off = layout->ipOffset;
  }
  if (!off || *off >= len) return std::nullopt;
  const uint8_t version = data[*off] >> 4;
  if (version != 4 && version != 6) return std::nullopt;
  return std::make_pair(*off, len - *off);
}

std::variant<PcapReader, OpenError> PcapReader::open(const std::string& path) {
  char errbuf[PCAP_ERRBUF_SIZE] = {};
  pcap_t* h =
      pcap_open_offline_with_tstamp_precision(path.c_str(), PCAP_TSTAMP_PRECISION_NANO, errbuf);
  if (h == nullptr) return OpenError{path + ": " + errbuf};
  const int lt = pcap_datalink(h);
  if (!supportedLinkType(lt)) {
    const char* name = pcap_datalink_val_to_name(lt);
    pcap_close(h);
    return OpenError{path + ": unsupported link type " + std::to_string(lt) + " (" +
                     (name != nullptr ? name : "unknown") +
                     "); use Ethernet, raw IP or Linux cooked captures"};
  }
  return PcapReader(h, lt);
}

PcapReader::PcapReader(PcapReader&& other) noexcept
    : handle_(other.handle_),
      linkType_(other.linkType_),
      skipped_(other.skipped_),
      error_(std::move(other.error_)) {
  other.handle_ = nullptr;
}

PcapReader::~PcapReader() {
  if (handle_ != nullptr) pcap_close(handle_);
}

std::optional<Frame> PcapReader::next() {
  for (;;) {
    pcap_pkthdr* hdr = nullptr;
    const u_char* data = nullptr;
    const int rc = pcap_next_ex(handle_, &hdr, &data);
    if (rc == PCAP_ERROR_BREAK) return std::nullopt;
    if (rc != 1) {
      error_ = pcap_geterr(handle_);
      return std::nullopt;
    }
    const auto where = locateIp(linkType_, data, hdr->caplen);
    if (!where) {
      ++skipped_;
      continue;
    }
    const table::Nanos t =
        static_cast<table::Nanos>(hdr->ts.tv_sec) * table::kSecond + hdr->ts.tv_usec;
    return Frame{t, data + where->first, where->second};
  }
}

}  // namespace ctsync::syncd
