#pragma once
// Datagram authentication for the sync link: a pre-shared key, an envelope around each payload
// (MAC, or AEAD encryption), and a replay window per sending node. libsodium stays inside
// auth.cpp. Wire format, network byte order:
//
//   [version u8][mode u8][cluster u32][node u16][epoch u64][seq u64]   24-byte header, cleartext
//   [payload (MAC mode) | ciphertext (AEAD mode)][tag 16 bytes]
//
// Both modes cost kHeaderSize + kTagSize = 40 bytes per datagram.
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

namespace ctsync::replication {

enum class AuthMode : uint8_t { kMac = 0, kAead = 1 };

enum class DropReason : uint8_t {
  kTooShort,      // shorter than header + tag
  kOversized,     // longer than kMaxDatagramSize
  kBadVersion,    // envelope version this build does not speak
  kWrongCluster,  // another cluster on the same link
  kWrongMode,     // MAC datagram to an AEAD receiver or the reverse: peers configured differently
  kBadMac,        // tag does not verify (forged, corrupted, wrong key) or AEAD decryption failed
  kReplay,        // sequence already seen, or older than the replay window
  kStaleEpoch,    // epoch older than the newest seen from that node
  kNodeLimit,     // authentic, but more sending nodes than kMaxTrackedNodes
  kCount
};
const char* dropReasonName(DropReason reason);

struct EnvelopeHeader {
  uint32_t clusterId = 0;
  uint16_t node = 0;
  uint64_t epoch = 0;  // new on every start of the sending node
  uint64_t seq = 0;    // per (node, epoch), never reused
  friend bool operator==(const EnvelopeHeader&, const EnvelopeHeader&) = default;
};

inline constexpr uint8_t kEnvelopeVersion = 1;
inline constexpr size_t kHeaderSize = 24;
inline constexpr size_t kTagSize = 16;
inline constexpr size_t kMaxDatagramSize = 64 * 1024;
inline constexpr size_t kKeySize = 32;

namespace detail {
// Frees (and wipes) memory from sodium_malloc.
struct SecretFree {
  void operator()(uint8_t* p) const noexcept;
};
using SecretPtr = std::unique_ptr<uint8_t[], SecretFree>;
}  // namespace detail

// The cluster's pre-shared master key, in locked, guarded memory that is wiped when the Key is
// destroyed. Move-only. Sealer and Opener derive their own sub-keys, so the Key may be dropped
// once they are built.
class Key {
 public:
  // Either exactly 32 raw bytes, or 64 hex digits (surrounding whitespace allowed). Errors
  // (missing file, any other size) come back as a message naming the path.
  struct Loaded;
  static std::variant<Loaded, std::string> fromFile(const std::string& path);
  static Key fromBytes(std::span<const uint8_t, kKeySize> bytes);

  Key(Key&&) noexcept = default;
  Key& operator=(Key&&) noexcept = default;

 private:
  friend class Sealer;
  friend class Opener;
  explicit Key(detail::SecretPtr bytes) : bytes_(std::move(bytes)) {}
  detail::SecretPtr bytes_;  // kKeySize bytes; null once moved from
};

struct Key::Loaded {
  Key key;
  bool worldReadable;  // the file is readable by anyone: the caller should warn
};

// Wraps payloads into authenticated (or encrypted) datagrams. seal() is const and touches only
// immutable state, so one Sealer may be shared by threads.
class Sealer {
 public:
  Sealer(const Key& key, AuthMode mode);

  static constexpr size_t overhead(AuthMode) { return kHeaderSize + kTagSize; }
  static constexpr size_t maxPayload(AuthMode mode) { return kMaxDatagramSize - overhead(mode); }

  // Precondition (asserted): payload.size() <= maxPayload(mode). In AEAD mode the caller must
  // never seal two different payloads under the same (cluster, node, epoch, seq): the nonce is
  // derived from them. The protocol guarantees it (epoch is new on every start).
  std::vector<uint8_t> seal(const EnvelopeHeader& header, std::span<const uint8_t> payload) const;
  // As seal(), into `out` (size >= payload.size() + overhead); returns the bytes written.
  size_t sealInto(const EnvelopeHeader& header, std::span<const uint8_t> payload,
                  std::span<uint8_t> out) const;

  AuthMode mode() const { return mode_; }

 private:
  AuthMode mode_;
  detail::SecretPtr subkey_;
};

struct Opened {
  EnvelopeHeader header;
  std::vector<uint8_t> payload;
  // First datagram from this node since the Opener was built, or the node restarted (newer
  // epoch): either way the peer's state must be resynced.
  bool newEpoch = false;
};

// Checks datagrams from peers: size, version, cluster, mode, tag, then the replay window per
// (node, epoch). Replay state changes only for datagrams whose tag verified. Not thread-safe:
// owned by the thread that reads the socket.
class Opener {
 public:
  static constexpr uint64_t kWindow = 1024;        // sequence numbers remembered per node
  static constexpr size_t kMaxTrackedNodes = 256;  // bounds replay state

  Opener(const Key& key, uint32_t clusterId, AuthMode accepted);

  // Never throws on any input; every drop is counted in drops().
  std::variant<Opened, DropReason> open(std::span<const uint8_t> datagram);

  using DropCounts = std::array<uint64_t, static_cast<size_t>(DropReason::kCount)>;
  const DropCounts& drops() const { return drops_; }
  uint64_t accepted() const { return accepted_; }

 private:
  struct Window {
    uint64_t epoch = 0;
    uint64_t top = 0;                           // highest sequence accepted in this epoch
    std::array<uint64_t, kWindow / 64> seen{};  // bit (seq % kWindow) for seq in (top-kWindow, top]
  };
  std::variant<Opened, DropReason> check(std::span<const uint8_t> datagram);

  uint32_t clusterId_;
  AuthMode mode_;
  detail::SecretPtr subkey_;
  std::unordered_map<uint16_t, Window> windows_;
  DropCounts drops_{};
  uint64_t accepted_ = 0;
};

}  // namespace ctsync::replication
