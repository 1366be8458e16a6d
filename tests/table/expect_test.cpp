// The tracker's expectation table against the rules of Linux's nf_conntrack_expect.c.
#include "table/expect.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include "tests/support/tuples.hpp"

namespace ctsync::table {
namespace {

using testing::tuple;

Addr v4(uint32_t a) {
  return Addr::v4(a);
}

Addr v6(const char* text) {
  Addr a;
  ::inet_pton(AF_INET6, text, a.bytes.data());
  return a;
}

constexpr Nanos kT0 = 1'000 * kSecond;

// An FTP PORT expectation: the server (any source port) to the client's data port.
Expectation ftp(uint32_t master, uint32_t client, uint16_t port, Nanos expires = kT0 + 300 * kSecond) {
  Expectation e;
  e.tuple = tuple(L3::kIpv4, proto::kTcp, v4(0xc0000a0a), v4(client), 0, port);
  e.mask = tuple(L3::kIpv4, proto::kTcp, v4(0xffffffff), v4(0xffffffff), 0, 0xffff);
  e.master = master;
  e.helper = 1;
  e.expires = expires;
  return e;
}

Tuple dataSyn(uint32_t client, uint16_t port, uint16_t sport = 20) {
  return tuple(L3::kIpv4, proto::kTcp, v4(0xc0000a0a), v4(client), sport, port);
}

TEST(ExpectTable, MatchesUnderItsMaskAndIsUsedOnce) {
  ExpectTable t;
  EXPECT_EQ(t.insert(ftp(7, 0x0a000001, 50000), 1, kT0), ExpectInsert::kInserted);
  EXPECT_EQ(t.size(), 1u);
  // Another destination port, another client, another zone: no match.
  EXPECT_FALSE(t.take(dataSyn(0x0a000001, 50001), 0, kT0));
  EXPECT_FALSE(t.take(dataSyn(0x0a000002, 50000), 0, kT0));
  EXPECT_FALSE(t.take(dataSyn(0x0a000001, 50000), 3, kT0));
  // Any source port of the server matches (the mask clears it); the expectation is used up.
  const auto got = t.take(dataSyn(0x0a000001, 50000, 40123), 0, kT0);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->master, 7u);
  EXPECT_EQ(t.size(), 0u);
  EXPECT_FALSE(t.take(dataSyn(0x0a000001, 50000, 40124), 0, kT0));
}

TEST(ExpectTable, PermanentStaysAndInactiveNeverMatches) {
  ExpectTable t;
  Expectation p = ftp(1, 0x0a000001, 50000);
  p.flags = 1;  // PERMANENT
  Expectation i = ftp(2, 0x0a000002, 50000);
  i.flags = 2;  // INACTIVE
  ASSERT_EQ(t.insert(p, 0, kT0), ExpectInsert::kInserted);
  ASSERT_EQ(t.insert(i, 0, kT0), ExpectInsert::kInserted);
  EXPECT_TRUE(t.take(dataSyn(0x0a000001, 50000), 0, kT0));
  EXPECT_TRUE(t.take(dataSyn(0x0a000001, 50000), 0, kT0));
  EXPECT_FALSE(t.take(dataSyn(0x0a000002, 50000), 0, kT0));
  EXPECT_EQ(t.size(), 2u);
}

TEST(ExpectTable, SameConnectionAgainReplacesForItsMasterAndClashesForAnother) {
  ExpectTable t;
  ASSERT_EQ(t.insert(ftp(1, 0x0a000001, 50000), 0, kT0), ExpectInsert::kInserted);
  EXPECT_EQ(t.insert(ftp(1, 0x0a000001, 50000, kT0 + 500 * kSecond), 0, kT0),
            ExpectInsert::kReplaced);
  EXPECT_EQ(t.size(), 1u);
  EXPECT_EQ(t.insert(ftp(2, 0x0a000001, 50000), 0, kT0), ExpectInsert::kClash);
  // An overlapping pattern of another master: a TFTP-style expectation (any source address and
  // port) for the same destination clashes with the FTP one.
  Expectation wide = ftp(3, 0x0a000001, 50000);
  wide.mask.src = Addr{};
  EXPECT_EQ(t.insert(wide, 0, kT0), ExpectInsert::kClash);
  EXPECT_EQ(t.size(), 1u);
  // The replacement kept the new timeout.
  t.forEach([](const Expectation& e) { EXPECT_EQ(e.expires, kT0 + 500 * kSecond); });
}

TEST(ExpectTable, PerMasterLimitEvictsTheOldest) {
  ExpectTable t;
  // FTP's policy: one expectation per master; a second PORT evicts the first.
  ASSERT_EQ(t.insert(ftp(1, 0x0a000001, 50000), 1, kT0), ExpectInsert::kInserted);
  EXPECT_EQ(t.insert(ftp(1, 0x0a000001, 50001), 1, kT0), ExpectInsert::kEvicted);
  EXPECT_EQ(t.countOf(1), 1u);
  EXPECT_FALSE(t.take(dataSyn(0x0a000001, 50000), 0, kT0));
  EXPECT_TRUE(t.take(dataSyn(0x0a000001, 50001), 0, kT0));
  // With a limit of 3 the fourth evicts the first of the three.
  for (uint16_t p = 0; p < 3; ++p) {
    ASSERT_NE(t.insert(ftp(2, 0x0a000002, static_cast<uint16_t>(51000 + p)), 3, kT0),
              ExpectInsert::kFull);
  }
  EXPECT_EQ(t.insert(ftp(2, 0x0a000002, 51003), 3, kT0), ExpectInsert::kEvicted);
  EXPECT_FALSE(t.take(dataSyn(0x0a000002, 51000), 0, kT0));
  EXPECT_TRUE(t.take(dataSyn(0x0a000002, 51001), 0, kT0));
  // Another master's are untouched.
  EXPECT_EQ(t.countOf(1), 0u);
}

TEST(ExpectTable, TotalLimitRefuses) {
  ExpectTable t(3);
  for (uint32_t m = 1; m <= 3; ++m) {
    ASSERT_EQ(t.insert(ftp(m, 0x0a000000 + m, 50000), 1, kT0), ExpectInsert::kInserted);
  }
  EXPECT_EQ(t.insert(ftp(4, 0x0a000004, 50000), 1, kT0), ExpectInsert::kFull);
  EXPECT_EQ(t.size(), 3u);
  // A master's own replacement still fits (it frees its slot first).
  EXPECT_EQ(t.insert(ftp(3, 0x0a000003, 50000), 1, kT0), ExpectInsert::kReplaced);
}

TEST(ExpectTable, EndsWithItsMasterAndOnItsTimeout) {
  ExpectTable t;
  ASSERT_EQ(t.insert(ftp(1, 0x0a000001, 50000), 0, kT0), ExpectInsert::kInserted);
  ASSERT_EQ(t.insert(ftp(1, 0x0a000001, 50001), 0, kT0), ExpectInsert::kInserted);
  ASSERT_EQ(t.insert(ftp(2, 0x0a000002, 50000, kT0 + 10 * kSecond), 0, kT0),
            ExpectInsert::kInserted);
  EXPECT_EQ(t.removeMaster(1), 2u);
  EXPECT_EQ(t.countOf(1), 0u);
  EXPECT_EQ(t.size(), 1u);
  EXPECT_EQ(t.expire(kT0 + 9 * kSecond), 0u);
  // Past its timeout it no longer matches, even before expire() runs.
  EXPECT_FALSE(t.take(dataSyn(0x0a000002, 50000), 0, kT0 + 10 * kSecond));
  EXPECT_EQ(t.size(), 0u);
  ASSERT_EQ(t.insert(ftp(3, 0x0a000003, 50000, kT0 + 5 * kSecond), 0, kT0),
            ExpectInsert::kInserted);
  EXPECT_EQ(t.expire(kT0 + 5 * kSecond), 1u);
  EXPECT_EQ(t.size(), 0u);
}

TEST(ExpectTable, TftpExpectsAnySourcePortAndIpv6) {
  ExpectTable t;
  // TFTP: the reply comes from any port of the server, to the client's port.
  Expectation e;
  e.tuple = tuple(L3::kIpv6, proto::kUdp, v6("2001:db8::69"), v6("fd00::10"), 0,
                  40000);
  e.mask = tuple(L3::kIpv6, proto::kUdp, v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
                 v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), 0, 0xffff);
  e.master = 9;
  e.helper = 2;
  e.expires = kT0 + kSecond;
  ASSERT_EQ(t.insert(e, 1, kT0), ExpectInsert::kInserted);
  const Tuple reply = tuple(L3::kIpv6, proto::kUdp, v6("2001:db8::69"),
                            v6("fd00::10"), 33333, 40000);
  EXPECT_FALSE(t.take(tuple(L3::kIpv6, proto::kTcp, reply.src, reply.dst, 33333, 40000), 0, kT0));
  ASSERT_TRUE(t.take(reply, 0, kT0));
}

}  // namespace
}  // namespace ctsync::table
