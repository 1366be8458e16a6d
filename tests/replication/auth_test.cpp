#include "replication/auth.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

namespace ctsync::replication {
namespace {

constexpr uint32_t kCluster = 0xC1A55E5;
constexpr AuthMode kModes[] = {AuthMode::kMac, AuthMode::kAead};

std::array<uint8_t, kKeySize> keyBytes(uint8_t seed) {
  std::array<uint8_t, kKeySize> k{};
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(size_t{seed} * 31 + i * 7 + 1);
  return k;
}

Key testKey(uint8_t seed = 1) {
  return Key::fromBytes(keyBytes(seed));
}

std::vector<uint8_t> payloadOf(size_t size, uint8_t seed = 0) {
  std::vector<uint8_t> p(size);
  for (size_t i = 0; i < size; ++i) p[i] = static_cast<uint8_t>(seed + i * 13);
  return p;
}

EnvelopeHeader hdr(uint64_t seq, uint64_t epoch = 100, uint16_t node = 7,
                   uint32_t cluster = kCluster) {
  return EnvelopeHeader{cluster, node, epoch, seq};
}

const char* modeName(AuthMode m) {
  return m == AuthMode::kMac ? "mac" : "aead";
}

// The test fixture: one sealer and one opener per mode under the same key.
struct Link {
  explicit Link(AuthMode m, uint8_t keySeed = 1)
      : mode(m), sealer(testKey(keySeed), m), opener(testKey(keySeed), kCluster, m) {}
  AuthMode mode;
  Sealer sealer;
  Opener opener;
};

DropReason dropOf(const std::variant<Opened, DropReason>& r) {
  return std::holds_alternative<DropReason>(r) ? std::get<DropReason>(r) : DropReason::kCount;
}

uint64_t drops(const Opener& o, DropReason r) {
  return o.drops()[static_cast<size_t>(r)];
}

// Opens and expects success; returns the result.
Opened mustOpen(Opener& o, std::span<const uint8_t> d) {
  auto r = o.open(d);
  EXPECT_TRUE(std::holds_alternative<Opened>(r)) << "dropped: " << dropReasonName(dropOf(r));
  if (!std::holds_alternative<Opened>(r)) return Opened{};
  return std::get<Opened>(std::move(r));
}

TEST(AuthTest, RoundTripBothModes) {
  for (AuthMode m : kModes) {
    SCOPED_TRACE(modeName(m));
    Link link(m);
    for (size_t size : {size_t{0}, size_t{1}, size_t{48}, size_t{1400}}) {
      const auto payload = payloadOf(size, static_cast<uint8_t>(size));
      const EnvelopeHeader h = hdr(size);
      const auto sealed = link.sealer.seal(h, payload);
      EXPECT_EQ(sealed.size(), payload.size() + Sealer::overhead(m));
      const Opened o = mustOpen(link.opener, sealed);
      EXPECT_EQ(o.header, h);
      EXPECT_EQ(o.payload, payload);
    }
    EXPECT_EQ(link.opener.accepted(), 4u);
  }
}

TEST(AuthTest, OverheadIsFortyBytesInBothModes) {
  EXPECT_EQ(Sealer::overhead(AuthMode::kMac), 40u);
  EXPECT_EQ(Sealer::overhead(AuthMode::kAead), 40u);
}

TEST(AuthTest, SealIntoMatchesSealAndSealingIsDeterministic) {
  for (AuthMode m : kModes) {
    SCOPED_TRACE(modeName(m));
    Link link(m);
    const auto payload = payloadOf(100);
    const auto a = link.sealer.seal(hdr(5), payload);
    std::vector<uint8_t> buf(500, 0xEE);
    const size_t n = link.sealer.sealInto(hdr(5), payload, buf);
    ASSERT_EQ(n, a.size());
    EXPECT_TRUE(std::equal(a.begin(), a.end(), buf.begin()));
    EXPECT_EQ(buf[n], 0xEE);  // nothing written past the datagram
    EXPECT_NE(link.sealer.seal(hdr(6), payload), a);
  }
}

TEST(AuthTest, EveryBitFlipIsRejected) {
  for (AuthMode m : kModes) {
    SCOPED_TRACE(modeName(m));
    Link link(m);
    const auto sealed = link.sealer.seal(hdr(1), payloadOf(200));
    for (size_t byte = 0; byte < sealed.size(); ++byte) {
      for (int b = 0; b < 8; ++b) {
        auto flipped = sealed;
        flipped[byte] ^= static_cast<uint8_t>(1u << b);
        DropReason expected = DropReason::kBadMac;
        if (byte == 0)
          expected = DropReason::kBadVersion;
        else if (byte == 1)
          expected = DropReason::kWrongMode;
        else if (byte >= 2 && byte < 6)
          expected = DropReason::kWrongCluster;
        ASSERT_EQ(dropOf(link.opener.open(flipped)), expected) << "byte " << byte << " bit " << b;
      }
    }
    // None of the forgeries touched the replay window: the genuine datagram is still fresh.
    EXPECT_EQ(link.opener.accepted(), 0u);
    mustOpen(link.opener, sealed);
    EXPECT_EQ(drops(link.opener, DropReason::kBadVersion), 8u);
    EXPECT_EQ(drops(link.opener, DropReason::kWrongMode), 8u);
    EXPECT_EQ(drops(link.opener, DropReason::kWrongCluster), 32u);
    EXPECT_EQ(drops(link.opener, DropReason::kBadMac), (sealed.size() - 6) * 8);
  }
}

TEST(AuthTest, TruncationsAreRejected) {
  for (AuthMode m : kModes) {
    SCOPED_TRACE(modeName(m));
    Link link(m);
    const auto sealed = link.sealer.seal(hdr(1), payloadOf(100));
    for (size_t len = 0; len < sealed.size(); ++len) {
      const DropReason r = dropOf(link.opener.open(std::span(sealed).first(len)));
      ASSERT_EQ(r, len < kHeaderSize + kTagSize ? DropReason::kTooShort : DropReason::kBadMac)
          << "length " << len;
    }
    EXPECT_EQ(drops(link.opener, DropReason::kTooShort), kHeaderSize + kTagSize);
    mustOpen(link.opener, sealed);
  }
}

TEST(AuthTest, OversizedIsRejectedAndTheLargestDatagramPasses) {
  for (AuthMode m : kModes) {
    SCOPED_TRACE(modeName(m));
    Link link(m);
    const auto largest = link.sealer.seal(hdr(1), payloadOf(Sealer::maxPayload(m)));
    EXPECT_EQ(largest.size(), kMaxDatagramSize);
    mustOpen(link.opener, largest);
    std::vector<uint8_t> big(kMaxDatagramSize + 1, 0);
    EXPECT_EQ(dropOf(link.opener.open(big)), DropReason::kOversized);
    EXPECT_EQ(drops(link.opener, DropReason::kOversized), 1u);
  }
}

TEST(AuthTest, WrongKeyIsRejected) {
  for (AuthMode m : kModes) {
    SCOPED_TRACE(modeName(m));
    Sealer other(testKey(2), m);
    Opener opener(testKey(1), kCluster, m);
    EXPECT_EQ(dropOf(opener.open(other.seal(hdr(1), payloadOf(64)))), DropReason::kBadMac);
    EXPECT_EQ(drops(opener, DropReason::kBadMac), 1u);
  }
}

TEST(AuthTest, WrongClusterIsRejected) {
  Link link(AuthMode::kMac);
  EXPECT_EQ(dropOf(link.opener.open(link.sealer.seal(hdr(1, 100, 7, kCluster + 1), {}))),
            DropReason::kWrongCluster);
  EXPECT_EQ(drops(link.opener, DropReason::kWrongCluster), 1u);
}

TEST(AuthTest, ModeMismatchIsRejected) {
  Sealer mac(testKey(), AuthMode::kMac);
  Opener aead(testKey(), kCluster, AuthMode::kAead);
  EXPECT_EQ(dropOf(aead.open(mac.seal(hdr(1), payloadOf(10)))), DropReason::kWrongMode);
  // Forcing the mode byte does not help: the sub-keys differ and the mode is authenticated.
  auto forced = mac.seal(hdr(2), payloadOf(10));
  forced[1] = static_cast<uint8_t>(AuthMode::kAead);
  EXPECT_EQ(dropOf(aead.open(forced)), DropReason::kBadMac);
}

TEST(AuthTest, ReplayOfTheSameDatagramIsRejected) {
  for (AuthMode m : kModes) {
    SCOPED_TRACE(modeName(m));
    Link link(m);
    const auto sealed = link.sealer.seal(hdr(42), payloadOf(30));
    EXPECT_TRUE(mustOpen(link.opener, sealed).newEpoch);
    EXPECT_EQ(dropOf(link.opener.open(sealed)), DropReason::kReplay);
    EXPECT_EQ(dropOf(link.opener.open(sealed)), DropReason::kReplay);
    EXPECT_EQ(drops(link.opener, DropReason::kReplay), 2u);
  }
}

TEST(AuthTest, OutOfOrderWithinTheWindowIsAcceptedOnceEach) {
  Link link(AuthMode::kMac);
  std::vector<uint64_t> order;
  for (uint64_t s = 0; s < 3000; ++s) order.push_back(s);
  // Reverse blocks of 500: every datagram arrives at most 499 behind the newest.
  for (size_t i = 0; i < order.size(); i += 500) {
    std::reverse(order.begin() + static_cast<long>(i), order.begin() + static_cast<long>(i + 500));
  }
  for (uint64_t s : order) {
    const auto d = link.sealer.seal(hdr(s), payloadOf(8));
    EXPECT_FALSE(mustOpen(link.opener, d).newEpoch && s != order.front());
    ASSERT_EQ(dropOf(link.opener.open(d)), DropReason::kReplay) << s;
  }
  EXPECT_EQ(link.opener.accepted(), 3000u);
  EXPECT_EQ(drops(link.opener, DropReason::kReplay), 3000u);
}

TEST(AuthTest, OlderThanTheWindowIsRejected) {
  Link link(AuthMode::kMac);
  const uint64_t top = 5000;
  mustOpen(link.opener, link.sealer.seal(hdr(top), {}));
  // The oldest sequence still inside the window is top - (kWindow - 1).
  mustOpen(link.opener, link.sealer.seal(hdr(top - (Opener::kWindow - 1)), {}));
  EXPECT_EQ(dropOf(link.opener.open(link.sealer.seal(hdr(top - Opener::kWindow), {}))),
            DropReason::kReplay);
  EXPECT_EQ(dropOf(link.opener.open(link.sealer.seal(hdr(0), {}))), DropReason::kReplay);
  // A jump far ahead forgets everything behind the new window.
  mustOpen(link.opener, link.sealer.seal(hdr(top + 10 * Opener::kWindow), {}));
  EXPECT_EQ(dropOf(link.opener.open(link.sealer.seal(hdr(top + 1), {}))), DropReason::kReplay);
}

TEST(AuthTest, SlidingTheWindowForgetsOldSlotsButNotRecentOnes) {
  Link link(AuthMode::kMac);
  mustOpen(link.opener, link.sealer.seal(hdr(10), {}));
  mustOpen(link.opener, link.sealer.seal(hdr(12), {}));
  // Slot of 11 + kWindow is the slot of 11: a fresh sequence there must not look seen, and 12
  // (still inside the window) must still be remembered.
  mustOpen(link.opener, link.sealer.seal(hdr(11 + Opener::kWindow), {}));
  EXPECT_EQ(dropOf(link.opener.open(link.sealer.seal(hdr(12), {}))), DropReason::kReplay);
  mustOpen(link.opener, link.sealer.seal(hdr(13 + Opener::kWindow), {}));
  mustOpen(link.opener, link.sealer.seal(hdr(12 + Opener::kWindow), {}));
}

TEST(AuthTest, NewEpochResetsTheWindowAndIsFlagged) {
  Link link(AuthMode::kAead);
  EXPECT_TRUE(mustOpen(link.opener, link.sealer.seal(hdr(500, 100), {})).newEpoch);
  EXPECT_FALSE(mustOpen(link.opener, link.sealer.seal(hdr(501, 100), {})).newEpoch);
  // The node restarted: its sequence starts over.
  EXPECT_TRUE(mustOpen(link.opener, link.sealer.seal(hdr(0, 101), {})).newEpoch);
  EXPECT_FALSE(mustOpen(link.opener, link.sealer.seal(hdr(1, 101), {})).newEpoch);
  EXPECT_EQ(dropOf(link.opener.open(link.sealer.seal(hdr(1, 101), {}))), DropReason::kReplay);
}

TEST(AuthTest, OlderEpochIsRejectedAsStale) {
  Link link(AuthMode::kMac);
  const auto old = link.sealer.seal(hdr(9, 100), payloadOf(4));
  mustOpen(link.opener, link.sealer.seal(hdr(0, 200), {}));
  EXPECT_EQ(dropOf(link.opener.open(old)), DropReason::kStaleEpoch);
  EXPECT_EQ(drops(link.opener, DropReason::kStaleEpoch), 1u);
}

TEST(AuthTest, NodesHaveIndependentWindows) {
  Link link(AuthMode::kMac);
  mustOpen(link.opener, link.sealer.seal(hdr(5, 100, 1), {}));
  EXPECT_TRUE(mustOpen(link.opener, link.sealer.seal(hdr(5, 100, 2), {})).newEpoch);
  mustOpen(link.opener, link.sealer.seal(hdr(0, 50, 3), {}));  // its own epoch history
  EXPECT_EQ(dropOf(link.opener.open(link.sealer.seal(hdr(5, 100, 1), {}))), DropReason::kReplay);
}

TEST(AuthTest, ForgedDatagramsDoNotChangeReplayState) {
  for (AuthMode m : kModes) {
    SCOPED_TRACE(modeName(m));
    Link link(m);
    Sealer forger(testKey(9), m);
    mustOpen(link.opener, link.sealer.seal(hdr(10, 100), {}));
    // A forger claims a newer epoch, a far-ahead sequence, and new nodes up to the limit.
    EXPECT_EQ(dropOf(link.opener.open(forger.seal(hdr(0, 999), {}))), DropReason::kBadMac);
    EXPECT_EQ(dropOf(link.opener.open(forger.seal(hdr(1u << 20, 100), {}))), DropReason::kBadMac);
    for (size_t n = 1000; n < 1000 + 2 * Opener::kMaxTrackedNodes; ++n) {
      const EnvelopeHeader h = hdr(1, 1, static_cast<uint16_t>(n));
      ASSERT_EQ(dropOf(link.opener.open(forger.seal(h, {}))), DropReason::kBadMac);
    }
    // The genuine stream carries on: same epoch, seq 11 and 9 still fresh, no restart seen.
    EXPECT_FALSE(mustOpen(link.opener, link.sealer.seal(hdr(11, 100), {})).newEpoch);
    EXPECT_FALSE(mustOpen(link.opener, link.sealer.seal(hdr(9, 100), {})).newEpoch);
    // And the node table has all its room left for real peers.
    for (uint16_t n = 0; n < Opener::kMaxTrackedNodes - 1; ++n) {
      if (n == 7) continue;
      ASSERT_TRUE(mustOpen(link.opener, link.sealer.seal(hdr(0, 1, n), {})).newEpoch);
    }
  }
}

TEST(AuthTest, TrackedNodesAreBounded) {
  Link link(AuthMode::kMac);
  for (uint16_t n = 0; n < Opener::kMaxTrackedNodes; ++n) {
    mustOpen(link.opener, link.sealer.seal(hdr(0, 1, n), {}));
  }
  EXPECT_EQ(dropOf(link.opener.open(link.sealer.seal(hdr(0, 1, 60000), {}))),
            DropReason::kNodeLimit);
  EXPECT_EQ(drops(link.opener, DropReason::kNodeLimit), 1u);
  mustOpen(link.opener, link.sealer.seal(hdr(1, 1, 3), {}));  // known nodes still pass
}

TEST(AuthTest, AeadPayloadIsNotReadableInTheCiphertext) {
  const std::string secret = "SNAT 10.0.0.1:443 -> 203.0.113.9:61000 mark=0x2a";
  const std::vector<uint8_t> payload(secret.begin(), secret.end());
  auto contains = [&](const std::vector<uint8_t>& d, size_t len) {
    for (size_t i = 0; i + len <= d.size(); ++i) {
      for (size_t j = 0; j + len <= payload.size(); ++j) {
        if (std::equal(payload.begin() + static_cast<long>(j),
                       payload.begin() + static_cast<long>(j + len),
                       d.begin() + static_cast<long>(i))) {
          return true;
        }
      }
    }
    return false;
  };
  Link mac(AuthMode::kMac);
  Link aead(AuthMode::kAead);
  EXPECT_TRUE(contains(mac.sealer.seal(hdr(1), payload), payload.size()));  // cleartext in MAC mode
  const auto sealed = aead.sealer.seal(hdr(1), payload);
  EXPECT_FALSE(contains(sealed, 4));  // no 4-byte run of the payload survives
  EXPECT_EQ(mustOpen(aead.opener, sealed).payload, payload);
}

TEST(AuthTest, DropReasonsHaveNames) {
  for (size_t i = 0; i < static_cast<size_t>(DropReason::kCount); ++i) {
    EXPECT_STRNE(dropReasonName(static_cast<DropReason>(i)), "unknown") << i;
  }
  EXPECT_STREQ(dropReasonName(DropReason::kBadMac), "bad_mac");
}

// ---- key files ----

// A scratch directory for key files, removed with its files at the end of the test.
class KeyDir {
 public:
  KeyDir() {
    std::string tmpl = ::testing::TempDir() + "ctsync_auth_XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed";
    path_ = tmpl;
  }
  ~KeyDir() {
    for (const auto& f : files_) std::remove(f.c_str());
    ::rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }
  std::string write(const std::string& name, const std::string& content, mode_t mode = 0600) {
    std::string file = path_ + "/" + name;
    std::ofstream(file, std::ios::binary) << content;
    ::chmod(file.c_str(), mode);
    files_.push_back(file);
    return file;
  }

 private:
  std::string path_;
  std::vector<std::string> files_;
};

std::string hexOf(std::span<const uint8_t> b) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (uint8_t c : b) s += {d[c >> 4], d[c & 15]};
  return s;
}

// Two keys are the same if what one seals the other opens.
bool sameKey(const Key& a, const Key& b) {
  Sealer s(a, AuthMode::kMac);
  Opener o(b, kCluster, AuthMode::kMac);
  return std::holds_alternative<Opened>(o.open(s.seal(hdr(1), payloadOf(16))));
}

TEST(AuthTest, KeyFileMissingIsAnError) {
  KeyDir dir;
  auto r = Key::fromFile(dir.path() + "/nope");
  ASSERT_TRUE(std::holds_alternative<std::string>(r));
  EXPECT_NE(std::get<std::string>(r).find("nope"), std::string::npos);
  EXPECT_NE(std::get<std::string>(r).find("No such file"), std::string::npos);
}

TEST(AuthTest, KeyFileBinaryAndHexFormsLoadTheSameKey) {
  KeyDir dir;
  const auto bytes = keyBytes(3);
  const std::string bin(bytes.begin(), bytes.end());
  std::string hex = hexOf(bytes);
  std::string upper = hex;
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);

  const Key expected = Key::fromBytes(bytes);
  for (const auto& [name, content] : std::vector<std::pair<std::string, std::string>>{
           {"bin", bin}, {"hex", hex}, {"hexnl", hex + "\n"}, {"hexcrlf", "  " + upper + "\r\n"}}) {
    SCOPED_TRACE(name);
    auto r = Key::fromFile(dir.write(name, content));
    ASSERT_TRUE(std::holds_alternative<Key::Loaded>(r)) << std::get<std::string>(r);
    const auto& loaded = std::get<Key::Loaded>(r);
    EXPECT_FALSE(loaded.worldReadable);
    EXPECT_TRUE(sameKey(loaded.key, expected));
  }
  EXPECT_FALSE(sameKey(expected, testKey(4)));
}

TEST(AuthTest, KeyFileWrongSizesAreErrors) {
  KeyDir dir;
  const auto bytes = keyBytes(3);
  const std::string hex = hexOf(bytes);
  for (const auto& [name, content] : std::vector<std::pair<std::string, std::string>>{
           {"empty", ""},
           {"short", std::string(bytes.begin(), bytes.end() - 1)},
           {"long", std::string(bytes.begin(), bytes.end()) + "x"},
           {"hex31", hex.substr(0, 62) + "\n"},
           {"hex33", hex + "ab\n"},
           {"hex16", hex.substr(0, 32)},  // 32 bytes of text: a 16-byte key, not a binary one
           {"nothex", hex.substr(0, 63) + "g"},
           {"huge", std::string(100000, 'a')}}) {
    SCOPED_TRACE(name);
    auto r = Key::fromFile(dir.write(name, content));
    ASSERT_TRUE(std::holds_alternative<std::string>(r));
    EXPECT_NE(std::get<std::string>(r).find(name), std::string::npos) << std::get<std::string>(r);
  }
}

TEST(AuthTest, KeyFileWorldReadableIsFlagged) {
  KeyDir dir;
  const auto bytes = keyBytes(5);
  const std::string path = dir.write("open", std::string(bytes.begin(), bytes.end()), 0644);
  auto r = Key::fromFile(path);
  ASSERT_TRUE(std::holds_alternative<Key::Loaded>(r));
  EXPECT_TRUE(std::get<Key::Loaded>(r).worldReadable);
  ::chmod(path.c_str(), 0640);
  r = Key::fromFile(path);
  ASSERT_TRUE(std::holds_alternative<Key::Loaded>(r));
  EXPECT_FALSE(std::get<Key::Loaded>(r).worldReadable);
}

TEST(AuthTest, KeyFileDirectoryIsAnError) {
  KeyDir dir;
  EXPECT_TRUE(std::holds_alternative<std::string>(Key::fromFile(dir.path())));
}

// ---- cost ----

// Prints the cost of sealing and opening a full datagram; asserts nothing about time (this runs
// under sanitizers and on shared machines). tests/bench holds the real benchmark.
TEST(AuthTest, PrintsSealAndOpenCost) {
  constexpr int kN = 4000;
  using Clock = std::chrono::steady_clock;
  auto nsPer = [](auto d) { return std::chrono::duration<double, std::nano>(d).count() / kN; };
  for (AuthMode m : kModes) {
    Link link(m);
    const auto payload = payloadOf(1400 - Sealer::overhead(m));
    std::vector<std::vector<uint8_t>> sealed(kN);
    for (int i = 0; i < kN; ++i)
      sealed[i] = link.sealer.seal(hdr(static_cast<uint64_t>(i)), payload);
    // Sealing into one reused send buffer, as the channel does.
    std::vector<uint8_t> buf(kMaxDatagramSize);
    const auto t0 = Clock::now();
    for (int i = 0; i < kN; ++i) link.sealer.sealInto(hdr(static_cast<uint64_t>(i)), payload, buf);
    const auto t1 = Clock::now();
    for (int i = 0; i < kN; ++i) {
      ASSERT_TRUE(std::holds_alternative<Opened>(link.opener.open(sealed[i])));
    }
    const auto t2 = Clock::now();
    std::printf("[ auth cost ] %-4s 1400-byte datagram: seal %.0f ns, open %.0f ns\n", modeName(m),
                nsPer(t1 - t0), nsPer(t2 - t1));
  }
}

}  // namespace
}  // namespace ctsync::replication
