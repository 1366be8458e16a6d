#pragma once
// Every knob of the tracker, with the kernel's defaults (sysctl net.netfilter.nf_conntrack_*).
#include <cstdint>

#include "table/nat_rules.hpp"
#include "table/types.hpp"

namespace ctsync::table {

struct TcpSettings {
  Nanos synSent = seconds(120);
  Nanos synRecv = seconds(60);
  Nanos established = seconds(432000);
  Nanos finWait = seconds(120);
  Nanos closeWait = seconds(60);
  Nanos lastAck = seconds(30);
  Nanos timeWait = seconds(120);
  Nanos close = seconds(10);
  Nanos synSent2 = seconds(120);
  Nanos maxRetrans = seconds(300);      // timeout_max_retrans
  Nanos unacknowledged = seconds(300);  // timeout_unacknowledged
  bool loose = true;                    // nf_conntrack_tcp_loose: pick up mid-stream flows
  bool beLiberal = false;               // nf_conntrack_tcp_be_liberal: no window checks
  bool ignoreInvalidRst = false;        // nf_conntrack_tcp_ignore_invalid_rst
  uint8_t maxRetransCount = 3;          // nf_conntrack_tcp_max_retrans
};

struct UdpSettings {
  Nanos unreplied = seconds(30);  // nf_conntrack_udp_timeout
  Nanos stream = seconds(120);    // nf_conntrack_udp_timeout_stream
};

struct IcmpSettings {
  Nanos icmp = seconds(30);
  Nanos icmpv6 = seconds(30);
};

struct GenericSettings {
  Nanos timeout = seconds(600);
};

struct ProtocolSettings {
  TcpSettings tcp;
  UdpSettings udp;
  IcmpSettings icmp;
  GenericSettings generic;
  bool verifyChecksums = true;  // nf_conntrack_checksum
};

}  // namespace ctsync::table

namespace ctsync::table {

// What to throw out when the table is full and a new flow arrives.
enum class EvictionPolicy : uint8_t {
  // The kernel's early_drop: look at up to 8 buckets (hash-index lines of ten slots) from the
  // new tuple's and delete every non-assured entry of the first one that has any; if none,
  // refuse the new flow.
  kKernel,
  // Closing TCP flows (FIN_WAIT .. CLOSE) first, from 4 index lines from the new tuple's, then
  // non-assured flows older than `minLifetime`; assured flows that are not closing are never
  // evicted.
  kClosingFirst,
};

struct TableSettings {
  // Slots of the hash index (each entry uses two). The index gets at least this many and at
  // least 2.5 per entry, in lines of ten, rounded up to a power of two.
  uint32_t buckets = 262144;
  uint32_t maxEntries = 262144;  // nf_conntrack_max
  EvictionPolicy eviction = EvictionPolicy::kKernel;
  Nanos minLifetime = 0;  // kClosingFirst: younger entries are never evicted
  // Adaptive timeouts as OpenBSD pf's adaptive.start / adaptive.end: once the table holds more
  // than `adaptiveStart` percent of maxEntries, every new timeout is scaled by
  // (end - fill) / (end - start), reaching zero at `adaptiveEnd` percent. 0 = off.
  uint8_t adaptiveStart = 0;
  uint8_t adaptiveEnd = 0;
  // REFRESH events: an entry's expiry is announced again once it moved more than this share
  // (in percent) of the entry's timeout past what was last announced (checked in ~1.07 s
  // steps). Only later expiries are announced: when a flow dies sooner, its DESTROY tells. Since
  // the announced expiry is always ahead of the moving threshold, a replica that ages entries from
  // the last announcement never expires a flow that is still alive. 0 = no REFRESH events.
  uint8_t refreshPercent = 50;
};

struct TrackerSettings {
  ProtocolSettings protocols;
  TableSettings table;
  NatSettings nat;  // no rules: no NAT (and no NAT status bits on entries)
};

}  // namespace ctsync::table
