#pragma once
// NAT mappings with the Linux kernel's semantics (nf_nat_core.c, nf_nat_masquerade.c,
// nf_nat_redirect.c, 6.x): decided once, when an entry is created, by altering its reply
// tuple. DNAT and redirect are decided as at prerouting, SNAT and masquerade as at postrouting
// on the packet after DNAT. The original tuple is kept when it is unique and in range;
// otherwise an existing mapping of the same source is reused (the by-source index), the
// address is chosen by the kernel's hash over the addresses, and the port or ICMP id searched
// from a random offset with the kernel's bounded number of attempts. Packet rewriting is
// apart, in table/rewrite.hpp.
#include <cstdint>
#include <optional>
#include <string_view>

#include "table/conn_table.hpp"
#include "table/nat_rules.hpp"

namespace ctsync::table {

// What the caller knows about a packet that the packet itself does not say.
struct PacketContext {
  std::string_view inInterface;   // where it arrived
  std::string_view outInterface;  // where routing sends it
  uint16_t zone = 0;              // conntrack zone
};

// The caller's view of its interfaces' addresses, asked once per new flow that masquerade or
// redirect translates. Not owned by the tracker; must outlive it.
class InterfaceAddresses {
 public:
  virtual ~InterfaceAddresses() = default;
  // The address masquerade (on the output interface) or redirect (on the input interface)
  // uses on `interface` for family `l3`; empty when it has none (the packet is then dropped,
  // as the kernel drops it).
  virtual std::optional<Addr> addressOf(std::string_view interface, L3 l3) const = 0;
};

struct NatCounters {
  uint64_t srcMapped = 0;       // entries created with status::kSrcNat
  uint64_t dstMapped = 0;       // entries created with status::kDstNat
  uint64_t exhausted = 0;       // new flows dropped: no unique mapping in range
  uint64_t noAddress = 0;       // new flows dropped: masquerade/redirect found no address
  uint64_t searches = 0;        // port/id searches (the original one was taken or random)
  uint64_t attempts = 0;        // tuples tried by those searches
  uint64_t timeWaitReused = 0;  // closing source-NATed TCP entries evicted for a new SYN
};

class Nat {
 public:
  // `addresses` may be null (masquerade and redirect then drop); `seed` drives the random
  // port offsets.
  Nat(NatSettings settings, const InterfaceAddresses* addresses, uint64_t seed);

  // True when some rule applies to family `l3`: its entries then carry the NAT_DONE bits, as
  // in a kernel with NAT hooks for the family.
  bool active(L3 l3) const { return active_[l3 == L3::kIpv4 ? 0 : 1]; }

  // Sets up both translations of entry `index`, which is allocated and tracked but not yet
  // confirmed (as nf_nat_setup_info at prerouting, then at postrouting). Alters the reply
  // tuple and the status bits SRC_NAT/DST_NAT and their _DONE bits. May destroy a closing
  // TCP entry whose mapping it reuses. Returns kNone, or why the flow must not be created
  // (kNatExhausted, kNatNoAddress); the caller then discards the entry.
  InvalidReason setup(ConnTable& table, uint32_t index, const PacketContext& ctx, Nanos now);

  const NatCounters& counters() const { return counters_; }
  const NatSettings& settings() const { return settings_; }

 private:
  enum class Manip : uint8_t { kSrc, kDst };
  // nf_nat_range2, flags as the kernel's NF_NAT_RANGE_*.
  struct Range {
    uint32_t flags = 0;
    Addr minAddr, maxAddr;
    uint16_t minProto = 0, maxProto = 0;
  };

  const NatRule* match(Manip manip, const Tuple& t, const PacketContext& ctx) const;
  std::optional<Range> rangeFor(const NatRule& rule, L3 l3, const PacketContext& ctx,
                                InvalidReason& why) const;
  // A mapping and whether it was seen free of clashes.
  struct Mapped {
    Tuple tuple;
    bool free;
  };
  bool setupManip(ConnTable& table, uint32_t index, const Range& range, Manip manip, Nanos now);
  Mapped uniqueTuple(ConnTable& table, uint32_t index, const Tuple& orig, const Range& range,
                     Manip manip, Nanos now);
  bool used(const ConnTable& table, const Tuple& t, uint16_t zone) const;
  bool usedHarder(ConnTable& table, uint32_t index, const Tuple& t, uint32_t attemptsLeft,
                  Nanos now);
  bool findSourceMapping(const ConnTable& table, const Tuple& orig, uint16_t zone,
                         const Range& range, Tuple& out) const;
  static void bestAddress(Tuple& t, const Range& range, Manip manip, uint16_t zone);
  bool uniquePort(ConnTable& table, uint32_t index, Tuple& t, const Range& range, Manip manip,
                  Nanos now);
  uint16_t random16();
  uint32_t randomStride(uint32_t size);

  NatSettings settings_;
  const InterfaceAddresses* addresses_;
  bool active_[2] = {false, false};
  uint64_t rng_;
  NatCounters counters_;
};

// Bob Jenkins' lookup3 hashword, as the kernel's jhash2(): NAT picks an address in a range
// with it, so the same flows map to the same addresses as in Linux (exposed for tests).
uint32_t jhash2(const uint32_t* words, uint32_t count, uint32_t initval);

}  // namespace ctsync::table
