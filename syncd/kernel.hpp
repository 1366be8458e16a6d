#pragma once
// The kernel's conntrack table over netlink (libnetfilter_conntrack for messages, libmnl for
// batched sends): a source that mirrors it (one dump, then NEW/UPDATE/DESTROY events) and a
// sink that writes replica flows into it (many messages per send).
//
// Both work in the network namespace of the thread that opens them. Everything runs on the
// caller's io_context thread; nothing here is thread-safe.
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

struct nf_conntrack;  // libnetfilter_conntrack
struct nlmsghdr;      // linux/netlink.h

namespace ctsync::syncd {

using replication::FlowKey;
using replication::FlowRecord;

// ---- conversion (pure: no socket, testable without a kernel) --------------------------------

// The record of a kernel entry: tuples, zone, status, TCP state/flags/scale, timeout, mark,
// labels, helper (ftp/tftp), master tuple. `version` is left zero (the engine stamps it).
// Empty for entries that cannot be carried (not IPv4/IPv6, no tuples).
// For ICMP the reply's id is derived from the original's (the library has no getter for it):
// use the overload below when the message is at hand.
std::optional<FlowRecord> fromKernel(const nf_conntrack* ct);
// The same, with `msg` (the ctnetlink message `ct` was parsed from) read for what the library
// does not expose: the reply tuple's ICMP id (CTA_TUPLE_REPLY/CTA_TUPLE_PROTO/CTA_PROTO_ICMP_ID),
// which NAT (masquerade) may have remapped.
std::optional<FlowRecord> fromKernel(const nf_conntrack* ct, const nlmsghdr* msg);

// Fills `ct` (fresh from nfct_new) to create `r` in a kernel with the given timeout:
// original and reply tuples, zone, timeout, mark, labels, master tuple, TCP state and window
// scale, TCP "be liberal" flags in both directions (netlink carries no window data), and NAT:
// SRC_NAT → SNAT to the reply tuple's destination (address and, for TCP/UDP, port); DST_NAT →
// DNAT to the reply tuple's source. The reply tuple sent is the inverse of the original: the
// kernel's NAT setup turns it into r.reply (it sets SRC_NAT/DST_NAT only when NAT changes the
// tuple). ICMP: a reply id other than the original's also means SNAT (to the reply's
// destination, the same address if only the id changed) unless DNAT applies; the id itself is
// pinned by KernelSink in the message (a NAT proto range min = max = the id, as the kernel's ICMP
// NAT uses it), since libnetfilter_conntrack builds NAT ports for TCP and UDP only.
// Status: SEEN_REPLY and ASSURED (the rest the kernel sets; an update of a related flow
// also says EXPECTED, which the kernel insists on). Labels only if any bit is set.
// `forUpdate`: only what the kernel lets an existing entry change (no NAT, no master, no helper,
// no tuples other than the original).
void toKernel(const FlowRecord& r, uint32_t timeoutSec, nf_conntrack* ct, bool forUpdate);

// The original tuple of `ct` (ATTR_ORIG_*), for objects that hold one tuple only (an
// expectation's master, expected tuple, mask); empty when not IPv4/IPv6.
std::optional<table::Tuple> origTupleFromKernel(const nf_conntrack* ct);
// Sets the original tuple and zone of `ct`: what a delete, a GET or an expectation's tuples need.
void keyToKernel(const FlowKey& key, nf_conntrack* ct);
// "tcp 10.0.0.1:1234 -> 10.0.0.2:80" (and " zone N"), for logs and errors.
std::string describeFlow(const FlowKey& key);

// ---- filters ([kernel] protocols, ignore_addresses, tcp_states) ------------------------------

class KernelFilter {
 public:
  // Errors: a CIDR that does not parse (the config checked them already; this is a guard).
  static std::variant<KernelFilter, std::string> make(const conf::KernelSettings& settings);
  // Protocol in the list (or the list empty), neither address of either tuple inside an
  // ignored prefix, TCP state in the list (or the list empty; non-TCP flows pass).
  bool accepts(const FlowRecord& r) const;
  // The part of accepts() that never changes over a flow's life (protocol, addresses): what
  // decides whether a DESTROY is passed on, since a flow's final TCP state says nothing about
  // whether it was synced.
  bool acceptsIdentity(const FlowRecord& r) const;

 private:
  struct Prefix {
    table::L3 l3;
    table::Addr addr;
    uint8_t bits;
  };
  std::vector<uint8_t> protocols_;
  std::vector<Prefix> ignored_;
  std::vector<uint8_t> tcpStates_;
};

// ---- source -----------------------------------------------------------------------------

struct KernelSourceCounters {
  uint64_t newEvents = 0;
  uint64_t updateEvents = 0;
  uint64_t destroyEvents = 0;
  uint64_t filtered = 0;          // events and dumped flows the filter rejected
  uint64_t echoesSuppressed = 0;  // events of our own commits (see expectEcho)
  uint64_t unparsable = 0;        // entries fromKernel could not carry
  uint64_t overruns = 0;          // ENOBUFS on the event socket
  uint64_t dumps = 0;             // full dumps (start + one per overrun + requested)
  uint64_t dumpedFlows = 0;       // flows reported by those dumps
  uint64_t refreshed = 0;         // entries read back by refresh()
};

class KernelSource {
 public:
  struct Callbacks {
    std::function<void(const FlowRecord&)> upsert;  // NEW or UPDATE, or a flow of a dump
    std::function<void(const FlowKey&)> remove;     // DESTROY
    // A full dump runs between these two calls: a flow the owner holds that was not reported
    // by upsert() in between is gone from the kernel.
    std::function<void()> dumpBegin;
    std::function<void()> dumpEnd;
    // Optional. A flow of a dump that the filter rejects only for its TCP state (protocol and
    // addresses pass): it exists in the kernel, so an owner that synced it before (while its state
    // passed) should count it as seen and keep it; whether to keep syncing it is the owner's call.
    // Called between dumpBegin and dumpEnd, instead of upsert. (Events of such a flow are dropped,
    // its DESTROY is passed on.)
    std::function<void(const FlowKey&)> present;
  };

  // Opens the event socket (NEW|UPDATE|DESTROY groups while running, rcvbuf from settings with
  // SO_RCVBUFFORCE, NETLINK_NO_ENOBUFS off so overruns are seen) and a dump socket. Sets
  // net.netfilter.nf_conntrack_events from 2 (the default) to 1: with 2 an entry created while no
  // ctnetlink listener exists never reports an event, not even its DESTROY. Error if it is 0.
  static std::variant<std::unique_ptr<KernelSource>, std::string> open(
      boost::asio::io_context& io, const conf::KernelSettings& settings, KernelFilter filter,
      Callbacks callbacks);
  ~KernelSource();
  KernelSource(const KernelSource&) = delete;
  KernelSource& operator=(const KernelSource&) = delete;

  // Starts reading events, then dumps the table. The dump is incremental: start() sends the
  // request and calls dumpBegin; the flows (upsert/present) and dumpEnd follow from the
  // io_context, a slice (at most ~2000 messages or ~5 ms) per handler, so that other handlers run
  // in between. Events that arrive during the dump stay in the event socket and are delivered
  // after dumpEnd (an overrun meanwhile means another dump). Idempotent.
  void start();
  // Stops delivering events (leaves the event groups, so that commits meanwhile cost the kernel no
  // events; drains and ignores what the socket holds). start() again dumps.
  // Takes effect at once, from a callback or not: a dump under way is abandoned: no more flows
  // and no dumpEnd for it (its rest is read off the socket and thrown away; a start() meanwhile
  // dumps again once that is done).
  // A dump asked for while one runs or from a callback (start(), resync()) runs after it.
  void stop();
  bool running() const;
  // Dumps the table again (an operator's resync), after the dump under way if there is one (at
  // most one more is queued). Nothing while stopped.
  void resync();
  // Whether a dump is under way (dumpBegin called, dumpEnd not yet).
  bool dumping() const;
  // Reads `key`'s entry now (a GET) and reports it through upsert, as an event would: for the
  // changes the kernel sends no event for. A helper's sequence adjustment is one: nf_ct_seqadj_set
  // caches no event, so an FTP control flow whose PORT NAT rewrote to another length would
  // otherwise carry its new offsets only at its next event or the next refresh dump. Nothing
  // while stopped, while a dump runs (it reports the entry) or from inside a callback.
  void refresh(const FlowKey& key);

  // The next NEW/UPDATE event for r.key whose status bits (those a commit carries: EXPECTED,
  // SEEN_REPLY, ASSURED, SRC_NAT, DST_NAT), TCP state, mark and reply tuple equal r's is our own
  // commit coming back: it is dropped (once) and counted. Expectations older than ~5 s are
  // forgotten.
  void expectEcho(const FlowRecord& r);

  const KernelSourceCounters& counters() const;

 private:
  struct Impl;
  explicit KernelSource(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// ---- sink -------------------------------------------------------------------------------

struct CommitResult {
  size_t created = 0;
  // Of `created`: a stale kernel entry was in the way and was deleted first: the same original
  // tuple with another reply tuple (another NAT mapping, which an update cannot change), or
  // another entry holding the record's reply tuple (the create's EEXIST while no entry has the
  // original tuple; also an update's ENOENT).
  size_t replaced = 0;
  size_t updated = 0;  // EEXIST on create, then changed in place
  size_t deleted = 0;
  size_t absent = 0;  // deletes of flows the kernel did not have (not an error)
  size_t failed = 0;
  double seconds = 0;               // wall time of the whole commit
  std::vector<std::string> errors;  // the first few failures: "TUPLE: strerror"
};

struct KernelSinkCounters {
  uint64_t commits = 0;
  uint64_t created = 0;
  uint64_t replaced = 0;  // of created (see CommitResult)
  uint64_t updated = 0;
  uint64_t deleted = 0;
  uint64_t failed = 0;
  uint64_t batches = 0;  // netlink sends
};

class KernelSink {
 public:
  static std::variant<std::unique_ptr<KernelSink>, std::string> open(
      const conf::KernelSettings& settings);
  ~KernelSink();
  KernelSink(const KernelSink&) = delete;
  KernelSink& operator=(const KernelSink&) = delete;

  // Writes `upserts` into the kernel and removes `deletes`, blocking until the kernel answered
  // every message. Each flow's timeout is its record's timeoutSec (the caller ages it; at least
  // 1). Flows without a master go first, then related flows (their master must exist). Sends
  // settings.commitBatch messages per send; a create that finds the flow (EEXIST) is checked with
  // a GET: the same reply tuple -> sent again as an update; another reply tuple (another NAT
  // mapping) -> the entry is deleted and the flow created again; no entry with that original
  // tuple (another entry holds the reply tuple) -> the holder of the reply tuple is deleted and
  // the flow created again (both counted created and replaced; at most twice per flow, then it
  // is left to the update). Failures are counted, never fatal. Retried once without the offending
  // part (and then counted as created/updated): a create whose helper the kernel lacks for that
  // protocol (EOPNOTSUPP), an update whose status would clear ASSURED/SEEN_REPLY (EBUSY; the
  // kernel keeps its bits), an update with labels on an entry that has no room for them
  // (ENOSPC: nothing in the namespace uses labels; a create drops them silently). Deletes run
  // first. Uses a second thread internally to build the next batch while the kernel works.
  CommitResult commit(std::span<const FlowRecord> upserts, std::span<const FlowKey> deletes = {});
  // Removes every entry of the kernel table (ctsyncctl flush --kernel). Returns how many.
  size_t flushKernel();

  const KernelSinkCounters& counters() const;

 private:
  struct Impl;
  explicit KernelSink(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ctsync::syncd
