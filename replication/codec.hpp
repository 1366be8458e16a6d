#pragma once
// Records <-> datagram bytes (replication/wire.capnp, Cap'n Proto packed). No I/O, no Cap'n
// Proto types in this header. Authentication is a separate layer around these bytes.
#include <cstddef>
#include <cstdint>
#include <span>
#include <variant>
#include <vector>

#include "replication/records.hpp"

namespace ctsync::replication {

// Written by this build; see wire.capnp for the major/minor rule.
inline constexpr uint16_t kProtocolVersion = 3;  // 0.3: flow.extra, expectations
// Largest datagram decode() accepts (a UDP payload cannot be larger).
inline constexpr size_t kMaxDatagramBytes = 64 * 1024;
// Smallest maxBytes a DatagramBuilder takes: any single record but a very long Nack fits in it.
inline constexpr size_t kMinDatagramBytes = 400;

// Fills one datagram up to `maxBytes` (the path MTU minus IP/UDP and auth overhead).
// Sizes are exact, not estimated: a record is accepted only if the packed datagram holding it
// is proven to stay within maxBytes whatever header finish() is given. Not thread-safe; cheap
// to keep one per sending context.
class DatagramBuilder {
 public:
  // kMinDatagramBytes <= maxBytes <= kMaxDatagramBytes (asserted).
  explicit DatagramBuilder(size_t maxBytes);

  // Appends a copy of `r`. Returns false, adding nothing, when it does not fit in the space
  // left; finish() and add it to the next datagram. If it does not fit in an *empty* builder
  // it never will at this maxBytes (only a Nack or Covered with hundreds of ranges can get
  // there): the caller must split it (fewer ranges per record) or drop and count it, not retry
  // forever.
  bool add(const Record& r);

  size_t size() const { return records_.size(); }  // records held
  bool empty() const { return records_.empty(); }

  // The packed datagram, <= maxBytes, with the records in the order added; resets the builder.
  std::vector<uint8_t> finish(const Header& h);

 private:
  size_t maxBytes_;
  std::vector<Record> records_;
  // Records carry their version relative to the first versioned record (see wire.capnp).
  bool haveBase_ = false;
  uint64_t hlcBase_ = 0;
  uint16_t nodeBase_ = 0;
  size_t chunkSum_ = 0;            // sum of the records' standalone packed sizes (upper bounds)
  size_t unpackedWords_ = 0;       // sizes the encoding arena so that the message is one segment
  std::vector<uint64_t> scratch_;  // zeroed arena for encoding one record
  // While no record has out-of-line parts (the usual case): the datagram's words, records
  // encoded once by add(); finish() packs them without encoding again.
  bool allFlat_ = true;
  std::vector<uint64_t> flat_;
};

enum class DecodeError : uint8_t {
  kTruncated,       // empty, or the bytes end inside a word, run or segment
  kMalformed,       // not a well-formed Cap'n Proto message of our schema
  kTooLarge,        // over kMaxDatagramBytes, or unpacks/expands beyond the reader limits
  kUnknownVersion,  // a protocol major version this build does not speak
  kBadRecord,       // well-formed, but a value out of range (address family, TCP state, ...)
};
const char* decodeErrorName(DecodeError e);

struct Decoded {
  Header header;
  std::vector<Record> records;
};

// Never throws, never crashes, on any input: the bytes come from the network and are untrusted
// even after authentication (a buggy peer). Reader limits bound the work and memory per call.
// Records of kinds unknown to this build are skipped when the datagram's minor version is
// newer than ours.
std::variant<Decoded, DecodeError> decode(std::span<const uint8_t> bytes);

}  // namespace ctsync::replication
