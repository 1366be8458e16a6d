#pragma once
// The kernel's expectations over netlink (ctnetlink's expectation subsystem,
// NFNL_SUBSYS_CTNETLINK_EXP, through libnetfilter_conntrack's nfexp API): a source that mirrors
// them (a dump, then NEW and DESTROY events) and a sink that creates them in a kernel whose
// masters are already there. What conntrackd's ExpectationSync does.
//
// Facts about ctnetlink (Linux 6.x, nf_conntrack_netlink.c) this relies on:
// - A create needs the master in the kernel (looked up by CTA_EXPECT_MASTER in CTA_EXPECT_ZONE:
//   ENOENT otherwise) with a helper attached (EOPNOTSUPP otherwise: commit masters with theirs).
// - A create ignores CTA_EXPECT_TIMEOUT: the timer starts at the helper's policy timeout (FTP
//   5 minutes). An update of an existing expectation (no NLM_F_EXCL) sets the timer from it. So a
//   commit sends a create, then an update with the remaining time.
// - CTA_EXPECT_FN names the function the RELATED flow is set up with ("nat-follow-master" for
//   NATed FTP); an unknown name is EINVAL. CTA_EXPECT_NAT carries the address and port the
//   helper saved and their direction.
// - A DELETE without CTA_EXPECT_TUPLE flushes every expectation: deletes always carry one.
// - Expectations end by DESTROY events (used, timed out, removed with the master); there are no
//   updates.
// clang-format off
#include <utility>  // before asio: Boost 1.74 with GCC 12 in C++20 mode needs it
// clang-format on

#include <boost/asio/io_context.hpp>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "conf/config.hpp"
#include "replication/records.hpp"

struct nf_expect;  // libnetfilter_conntrack
struct nlmsghdr;   // linux/netlink.h

namespace ctsync::syncd {

using replication::ExpectKey;
using replication::ExpectRecord;

// ---- conversion (pure) ----------------------------------------------------------------------

// The record of a kernel expectation; empty when it cannot be carried (no master, expected
// tuple or mask, not IPv4/IPv6) or when its helper is not one of the kernel's own.
// Class, NAT and expectation function are left out: libnetfilter_conntrack 1.0.9 does not parse
// them; the overload with the message (the one `exp` was parsed from) reads them there.
std::optional<ExpectRecord> expectFromKernel(const nf_expect* exp);
std::optional<ExpectRecord> expectFromKernel(const nf_expect* exp, const nlmsghdr* msg);
// Fills `exp` (fresh from nfexp_new) to create `e` with the given remaining lifetime: tuples,
// mask, zone, timeout, flags, helper. The overload with a message header also builds the
// message and appends what the library cannot (class, NAT, expectation function).
void expectToKernel(const ExpectRecord& e, uint32_t timeoutSec, nf_expect* exp);
void expectToKernel(const ExpectRecord& e, uint32_t timeoutSec, nf_expect* exp, nlmsghdr* nlh);

// ---- source ---------------------------------------------------------------------------------

struct KernelExpectCounters {
  uint64_t newEvents = 0;
  uint64_t destroyEvents = 0;
  uint64_t filtered = 0;    // of a helper not in [kernel] expect_helpers
  uint64_t unparsable = 0;  // expectations expectFromKernel could not carry
  uint64_t overruns = 0;    // ENOBUFS on the event socket: a dump follows
  uint64_t dumps = 0;
  uint64_t dumped = 0;  // expectations reported by those dumps
};

class KernelExpectSource {
 public:
  struct Callbacks {
    std::function<void(const ExpectRecord&)> upsert;  // NEW event, or one of a dump
    std::function<void(const ExpectKey&)> remove;     // DESTROY event
    // A dump runs between these: an expectation the owner holds that upsert() did not report
    // in between is gone from the kernel.
    std::function<void()> dumpBegin;
    std::function<void()> dumpEnd;
  };

  static std::variant<std::unique_ptr<KernelExpectSource>, std::string> open(
      boost::asio::io_context& io, const conf::KernelSettings& settings, Callbacks callbacks);
  ~KernelExpectSource();
  KernelExpectSource(const KernelExpectSource&) = delete;
  KernelExpectSource& operator=(const KernelExpectSource&) = delete;

  // Joins the event groups, then dumps (expectations are few: the dump runs at once, on the
  // caller's thread, before start() returns). Idempotent.
  void start();
  // Leaves the event groups and ignores what the socket still holds.
  void stop();
  bool running() const;
  // Dumps again (an operator's resync, or after the flows were dumped again).
  void resync();
  const KernelExpectCounters& counters() const;

 private:
  struct Impl;
  explicit KernelExpectSource(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// ---- sink -----------------------------------------------------------------------------------

struct ExpectCommitResult {
  size_t created = 0;  // new, or already there (its timer then set)
  size_t deleted = 0;
  size_t absent = 0;    // deletes the kernel had nothing for (not an error)
  size_t noMaster = 0;  // of failed: the master is not in the kernel (ENOENT)
  size_t failed = 0;
  std::vector<std::string> errors;  // the first few failures: "EXPECTED: strerror"
};

struct KernelExpectSinkCounters {
  uint64_t commits = 0;
  uint64_t created = 0;
  uint64_t deleted = 0;
  uint64_t failed = 0;
};

class KernelExpectSink {
 public:
  static std::variant<std::unique_ptr<KernelExpectSink>, std::string> open(
      const conf::KernelSettings& settings);
  ~KernelExpectSink();
  KernelExpectSink(const KernelExpectSink&) = delete;
  KernelExpectSink& operator=(const KernelExpectSink&) = delete;

  // Deletes `deletes`, then creates `upserts` (each with its record's timeoutSec, which the
  // caller ages; at least 1), blocking until the kernel answered every message. Their masters
  // must be committed first. Failures are counted, never fatal.
  ExpectCommitResult commit(std::span<const ExpectRecord> upserts,
                            std::span<const ExpectKey> deletes = {});
  const KernelExpectSinkCounters& counters() const;

 private:
  struct Impl;
  explicit KernelExpectSink(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// "tcp 10.0.0.1:0 -> 192.0.2.1:40001" for an expected tuple.
std::string describeExpect(const ExpectKey& key);

}  // namespace ctsync::syncd
