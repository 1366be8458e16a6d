// libFuzzer target for the datagram decoder: any input must decode to a value or an error,
// never crash; whatever decodes must survive encode -> decode unchanged.
//
// Build and run (see the report in tests/replication/ for CI):
//   capnp compile -oc++:/tmp/capnp-gen --src-prefix=replication replication/wire.capnp
//   clang++-14 -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -I. -isystem /tmp/capnp-gen \
//     /tmp/capnp-gen/wire.capnp.c++ replication/codec.cpp table/tuple.cpp table/types.cpp \
//     tests/replication/codec_fuzz.cpp -lcapnp -lkj -o /tmp/codec_fuzz
//   /tmp/codec_fuzz -max_total_time=30 -max_len=4096 /tmp/corpus tests/replication/fuzz_corpus
#include <cstdint>
#include <cstdlib>
#include <span>
#include <variant>
#include <vector>

#include "replication/codec.hpp"

namespace {

using ctsync::replication::DatagramBuilder;
using ctsync::replication::decode;
using ctsync::replication::Decoded;
using ctsync::replication::kMaxDatagramBytes;
using ctsync::replication::Nack;
using ctsync::replication::Record;

[[noreturn]] void fail() {
  std::abort();
}

bool hasRanges(const ctsync::replication::Record& r) {
  return std::holds_alternative<Nack>(r) || std::holds_alternative<ctsync::replication::Covered>(r);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto first = decode(std::span<const uint8_t>(data, size));
  const auto* decoded = std::get_if<Decoded>(&first);
  if (decoded == nullptr) return 0;

  // Re-encode, over several datagrams if our canonical form is larger than the input's.
  std::vector<std::vector<uint8_t>> datagrams;
  DatagramBuilder builder(kMaxDatagramBytes);
  for (const Record& r : decoded->records) {
    if (builder.add(r)) continue;
    if (builder.empty()) {
      // Only a Nack or Covered can be too large for any datagram (and the input proved it is
      // not for its own encoding, which may be smaller than ours); nothing else may be refused.
      if (!hasRanges(r)) fail();
      return 0;
    }
    datagrams.push_back(builder.finish(decoded->header));
    if (!builder.add(r)) {
      if (!hasRanges(r)) fail();
      return 0;
    }
  }
  datagrams.push_back(builder.finish(decoded->header));

  std::vector<Record> again;
  for (const auto& d : datagrams) {
    if (d.size() > kMaxDatagramBytes) fail();
    auto second = decode(d);
    const auto* redecoded = std::get_if<Decoded>(&second);
    if (redecoded == nullptr) fail();
    if (!(redecoded->header == decoded->header)) fail();
    again.insert(again.end(), redecoded->records.begin(), redecoded->records.end());
  }
  if (again != decoded->records) fail();
  return 0;
}
