#include "syncd/netlink.hpp"

#include <libmnl/libmnl.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include <linux/netfilter/nfnetlink.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

namespace ctsync::syncd::netlink {

void NfctDeleter::operator()(nf_conntrack* ct) const {
  nfct_destroy(ct);
}
void NfexpDeleter::operator()(nf_expect* exp) const {
  nfexp_destroy(exp);
}
void MnlDeleter::operator()(mnl_socket* s) const {
  mnl_socket_close(s);
}

std::string errnoText(int err) {
  return std::strerror(err);
}

int family(table::L3 l3) {
  return l3 == table::L3::kIpv4 ? AF_INET : AF_INET6;
}

nlmsghdr* putHeader(void* buf, uint8_t subsys, uint8_t msgType, uint16_t flags, uint32_t seq,
                    uint8_t family) {
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = static_cast<uint16_t>((subsys << 8) | msgType);
  nlh->nlmsg_flags = static_cast<uint16_t>(NLM_F_REQUEST | flags);
  nlh->nlmsg_seq = seq;
  auto* nfh = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfh->nfgen_family = family;
  nfh->version = NFNETLINK_V0;
  nfh->res_id = 0;
  return nlh;
}

void setBuffer(int fd, int forceOpt, int plainOpt, uint32_t bytes) {
  const int v = static_cast<int>(std::min<uint32_t>(bytes, INT32_MAX / 2));
  if (::setsockopt(fd, SOL_SOCKET, forceOpt, &v, sizeof v) != 0) {
    ::setsockopt(fd, SOL_SOCKET, plainOpt, &v, sizeof v);
  }
}

std::variant<MnlPtr, std::string> open(unsigned groups, const char* what) {
  MnlPtr nl(mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC));
  if (!nl) return std::string(what) + ": netlink socket: " + errnoText(errno);
  if (mnl_socket_bind(nl.get(), groups, MNL_SOCKET_AUTOPID) < 0) {
    return std::string(what) + ": netlink bind: " + errnoText(errno);
  }
  // Errors and acks carry only the header of the request, not all of it back.
  const int one = 1;
  ::setsockopt(mnl_socket_get_fd(nl.get()), SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
  return nl;
}

}  // namespace ctsync::syncd::netlink
