#pragma once
// The netlink plumbing the kernel source and sink share, flows and expectations alike: owned
// libmnl sockets and libnetfilter_conntrack objects, request headers, socket buffers.
#include <cstdint>
#include <memory>
#include <string>
#include <variant>

#include "table/tuple.hpp"

struct mnl_socket;     // libmnl
struct nf_conntrack;   // libnetfilter_conntrack
struct nf_expect;      // libnetfilter_conntrack
struct nlmsghdr;       // linux/netlink.h

namespace ctsync::syncd::netlink {

struct NfctDeleter {
  void operator()(nf_conntrack* ct) const;
};
using NfctPtr = std::unique_ptr<nf_conntrack, NfctDeleter>;

struct NfexpDeleter {
  void operator()(nf_expect* exp) const;
};
using NfexpPtr = std::unique_ptr<nf_expect, NfexpDeleter>;

struct MnlDeleter {
  void operator()(mnl_socket* s) const;
};
using MnlPtr = std::unique_ptr<mnl_socket, MnlDeleter>;

std::string errnoText(int err);

// AF_INET or AF_INET6: the nfgen_family of a request about a tuple of `l3`.
int family(table::L3 l3);

// A request header (nlmsghdr + nfgenmsg) at `buf` for subsystem `subsys`
// (NFNL_SUBSYS_CTNETLINK or NFNL_SUBSYS_CTNETLINK_EXP).
nlmsghdr* putHeader(void* buf, uint8_t subsys, uint8_t msgType, uint16_t flags, uint32_t seq,
                    uint8_t family);

// Buffers with FORCE (we are root in the daemon), falling back to the capped plain option.
void setBuffer(int fd, int forceOpt, int plainOpt, uint32_t bytes);

// A NETLINK_NETFILTER socket bound to `groups` (a bit mask of groups 1..32), with
// NETLINK_CAP_ACK. Errors name `what`.
std::variant<MnlPtr, std::string> open(unsigned groups, const char* what);

}  // namespace ctsync::syncd::netlink
