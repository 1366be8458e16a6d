#include "replication/channel.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstring>
#include <system_error>

namespace ctsync::replication {

namespace asio = boost::asio;
using asio::ip::udp;

namespace {

// Datagrams read per wake-up of one socket before the others get their turn.
constexpr int kMaxReadsPerWake = 64;
constexpr size_t kMaxDatagram = size_t{64} * 1024;

std::string errnoText(int e) {
  return std::error_code(e, std::system_category()).message();
}

std::string quoted(const std::string& s) {
  return "'" + s + "'";
}

bool sameIp(const asio::ip::address& a, const asio::ip::address& b) {
  // Ignores the IPv6 scope id: a link-local source carries one, a configured peer may not.
  if (a.is_v4() && b.is_v4()) return a.to_v4() == b.to_v4();
  if (a.is_v6() && b.is_v6()) return a.to_v6().to_bytes() == b.to_v6().to_bytes();
  return false;
}

bool sameEndpoint(const udp::endpoint& a, const udp::endpoint& b) {
  return a.port() == b.port() && sameIp(a.address(), b.address());
}

std::optional<asio::ip::address> parseAddress(const std::string& s) {
  boost::system::error_code ec;
  auto a = asio::ip::make_address(s, ec);
  if (ec) return std::nullopt;
  return a;
}

// "a.b.c.d", "a.b.c.d:port", "v6", "[v6]:port", each v6 optionally with "%scope".
std::optional<udp::endpoint> parsePeer(const std::string& s, uint16_t defaultPort) {
  std::string host = s;
  std::string port;
  if (!s.empty() && s.front() == '[') {
    size_t close = s.find(']');
    if (close == std::string::npos) return std::nullopt;
    host = s.substr(1, close - 1);
    std::string rest = s.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return std::nullopt;
      port = rest.substr(1);
      if (port.empty()) return std::nullopt;
    }
  } else if (std::count(s.begin(), s.end(), ':') == 1) {
    size_t colon = s.find(':');
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
    if (port.empty()) return std::nullopt;
  }
  auto address = parseAddress(host);
  if (!address) return std::nullopt;
  uint16_t p = defaultPort;
  if (!port.empty()) {
    unsigned value = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (ec != std::errc() || end != port.data() + port.size() || value == 0 || value > 65535) {
      return std::nullopt;
    }
    p = static_cast<uint16_t>(value);
  }
  return udp::endpoint(*address, p);
}

const char* familyName(const asio::ip::address& a) {
  return a.is_v4() ? "IPv4" : "IPv6";
}

udp::endpoint toEndpoint(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) {
    const auto& sin = reinterpret_cast<const sockaddr_in&>(ss);
    return udp::endpoint(asio::ip::address_v4(ntohl(sin.sin_addr.s_addr)), ntohs(sin.sin_port));
  }
  const auto& sin6 = reinterpret_cast<const sockaddr_in6&>(ss);
  asio::ip::address_v6::bytes_type bytes;
  std::memcpy(bytes.data(), &sin6.sin6_addr, bytes.size());
  return udp::endpoint(asio::ip::address_v6(bytes, sin6.sin6_scope_id), ntohs(sin6.sin6_port));
}

ifreq interfaceRequest(const std::string& name) {
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, name.data(), std::min(name.size(), size_t{IFNAMSIZ - 1}));
  return ifr;
}

bool interfaceRunning(int fd, const std::string& name) {
  ifreq ifr = interfaceRequest(name);
  if (::ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) return false;  // ENODEV: gone, hence down
  const auto flags = static_cast<uint16_t>(ifr.ifr_flags);
  return (flags & IFF_UP) != 0 && (flags & IFF_RUNNING) != 0;
}

std::optional<unsigned> interfaceIndex(int fd, const std::string& name) {
  ifreq ifr = interfaceRequest(name);
  if (::ioctl(fd, SIOCGIFINDEX, &ifr) < 0) return std::nullopt;
  return static_cast<unsigned>(ifr.ifr_ifindex);
}

template <typename T>
std::optional<std::string> setOption(int fd, int level, int name, const T& value,
                                     const char* what) {
  if (::setsockopt(fd, level, name, &value, sizeof value) == 0) return std::nullopt;
  return std::string(what) + ": " + errnoText(errno);
}

// The FORCE variant ignores net.core.[rw]mem_max but needs CAP_NET_ADMIN.
std::optional<std::string> setBuffer(int fd, int forced, int plain, size_t bytes,
                                     const char* what) {
  const int value = static_cast<int>(bytes);
  if (::setsockopt(fd, SOL_SOCKET, forced, &value, sizeof value) == 0) return std::nullopt;
  return setOption(fd, SOL_SOCKET, plain, value, what);
}

size_t getBuffer(int fd, int name) {
  int value = 0;
  socklen_t len = sizeof value;
  if (::getsockopt(fd, SOL_SOCKET, name, &value, &len) < 0) return 0;
  return static_cast<size_t>(value);
}

}  // namespace

struct Channel::Link {
  Link(asio::io_context& io, LinkConfig c) : config(std::move(c)), socket(io) {}

  bool multicast() const { return config.kind == LinkConfig::Kind::kMulticast; }
  bool healthy() const { return socket.is_open() && interfaceUp && holdProbes == 0; }

  std::optional<std::string> parse();
  std::optional<std::string> openSocket(udp::socket& s) const;
  void refreshOwnAddresses();
  bool isOwn(const udp::endpoint& source) const;
  bool isPeer(const udp::endpoint& source) const;

  LinkConfig config;
  bool v6 = false;
  asio::ip::address group;                  // multicast
  asio::ip::address local;                  // unicast: bind address, maybe the wildcard
  std::vector<udp::endpoint> peers;         // unicast, as configured
  std::vector<asio::ip::address> own;       // the host's (or the bound) addresses
  std::vector<udp::endpoint> destinations;  // where send() writes
  unsigned ifindex = 0;
  udp::socket socket;
  uint64_t generation = 0;  // bumped when the socket is rebuilt; stale handlers compare it
  bool interfaceUp = true;
  bool needsReopen = false;  // the interface went down: rebuild the socket when it is back
  unsigned holdProbes = 0;   // polls left in the hold-down after a link-level send error
  LinkStats stats;
};

std::optional<std::string> Channel::Link::parse() {
  const LinkConfig& c = config;
  if (c.port == 0) return "port must not be 0";
  if (c.interface.size() >= IFNAMSIZ) {
    return "interface name " + quoted(c.interface) + " is too long";
  }
  if (c.rcvbufBytes > INT_MAX || c.sndbufBytes > INT_MAX) return "socket buffer size too large";
  if (multicast()) {
    if (c.interface.empty()) return "a multicast link needs an interface";
    if (!c.localAddress.empty() || !c.peers.empty()) {
      return "local address and peers are for unicast links, not multicast";
    }
    auto g = parseAddress(c.group);
    if (!g) return "group " + quoted(c.group) + " is not an IP address";
    if (!g->is_multicast()) return "group " + quoted(c.group) + " is not a multicast address";
    group = *g;
    v6 = g->is_v6();
    return std::nullopt;
  }
  if (!c.group.empty()) return "group is for multicast links, not unicast";
  if (c.peers.empty()) return "a unicast link needs at least one peer";
  std::optional<asio::ip::address> bindAddress;
  if (!c.localAddress.empty()) {
    bindAddress = parseAddress(c.localAddress);
    if (!bindAddress) return "local address " + quoted(c.localAddress) + " is not an IP address";
    if (bindAddress->is_multicast()) {
      return "local address " + quoted(c.localAddress) + " is a multicast address";
    }
  }
  for (const std::string& text : c.peers) {
    auto peer = parsePeer(text, c.port);
    if (!peer) return "peer " + quoted(text) + " is not an address, address:port or [address]:port";
    const asio::ip::address& a = peer->address();
    if (a.is_multicast()) return "peer " + quoted(text) + " is multicast: use a multicast link";
    if (a.is_unspecified()) return "peer " + quoted(text) + " is the unspecified address";
    if (bindAddress && a.is_v4() != bindAddress->is_v4()) {
      return "peer " + quoted(text) + " is " + familyName(a) + " but local address " +
             quoted(c.localAddress) + " is " + familyName(*bindAddress) +
             " (use one link per address family)";
    }
    if (!peers.empty() && a.is_v4() != peers.front().address().is_v4()) {
      return "peer " + quoted(text) + " is " + familyName(a) + " but peer " +
             quoted(c.peers.front()) + " is " + familyName(peers.front().address()) +
             " (use one link per address family)";
    }
    peers.push_back(*peer);
  }
  v6 = peers.front().address().is_v6();
  if (bindAddress) {
    local = *bindAddress;
  } else if (v6) {
    local = asio::ip::address_v6::any();
  } else {
    local = asio::ip::address_v4::any();
  }
  return std::nullopt;
}

// A fresh socket for this link, fully set up: options, bind, group membership.
std::optional<std::string> Channel::Link::openSocket(udp::socket& s) const {
  boost::system::error_code ec;
  s.open(v6 ? udp::v6() : udp::v4(), ec);
  if (ec) return "socket: " + ec.message();
  const int fd = s.native_handle();
  const int one = 1;
  const int zero = 0;
  std::optional<std::string> err;
  if (v6 && (err = setOption(fd, IPPROTO_IPV6, IPV6_V6ONLY, one, "IPV6_V6ONLY"))) return err;
  // Several processes (or sockets) share the group port on one host. Unicast ports are not
  // shared: a second daemon on the same port would silently steal half the datagrams.
  if (multicast() && (err = setOption(fd, SOL_SOCKET, SO_REUSEADDR, one, "SO_REUSEADDR"))) {
    return err;
  }
  if (!config.interface.empty() &&
      ::setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, config.interface.c_str(),
                   static_cast<socklen_t>(config.interface.size() + 1)) < 0 &&
      errno != EPERM) {
    // Without CAP_NET_RAW, IP_MULTICAST_ALL=0 below still keeps other interfaces' traffic out.
    return "SO_BINDTODEVICE " + quoted(config.interface) + ": " + errnoText(errno);
  }
  if ((err = setBuffer(fd, SO_RCVBUFFORCE, SO_RCVBUF, config.rcvbufBytes, "SO_RCVBUF")) ||
      (err = setBuffer(fd, SO_SNDBUFFORCE, SO_SNDBUF, config.sndbufBytes, "SO_SNDBUF"))) {
    return err;
  }
  udp::endpoint bindTo;
  if (multicast() && !v6) {
    ip_mreqn mreq{};
    mreq.imr_ifindex = static_cast<int>(ifindex);
    const int ttl = 1;
    if ((err = setOption(fd, IPPROTO_IP, IP_MULTICAST_TTL, ttl, "IP_MULTICAST_TTL")) ||
        (err = setOption(fd, IPPROTO_IP, IP_MULTICAST_LOOP, zero, "IP_MULTICAST_LOOP")) ||
        // Only groups this socket joined, on the interface it joined them on.
        (err = setOption(fd, IPPROTO_IP, IP_MULTICAST_ALL, zero, "IP_MULTICAST_ALL")) ||
        (err = setOption(fd, IPPROTO_IP, IP_MULTICAST_IF, mreq, "IP_MULTICAST_IF"))) {
      return err;
    }
    bindTo = udp::endpoint(group, config.port);  // only datagrams to the group
  } else if (multicast()) {
    const int hops = 1;
    const int index = static_cast<int>(ifindex);
    if ((err = setOption(fd, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, hops, "IPV6_MULTICAST_HOPS")) ||
        (err = setOption(fd, IPPROTO_IPV6, IPV6_MULTICAST_LOOP, zero, "IPV6_MULTICAST_LOOP")) ||
        (err = setOption(fd, IPPROTO_IPV6, IPV6_MULTICAST_ALL, zero, "IPV6_MULTICAST_ALL")) ||
        (err = setOption(fd, IPPROTO_IPV6, IPV6_MULTICAST_IF, index, "IPV6_MULTICAST_IF"))) {
      return err;
    }
    // The scope id matters for link-scope groups (ff02::) and is ignored for the others.
    bindTo = udp::endpoint(asio::ip::address_v6(group.to_v6().to_bytes(), ifindex), config.port);
  } else {
    bindTo = udp::endpoint(local, config.port);
  }
  s.bind(bindTo, ec);
  if (ec) {
    return "bind " + bindTo.address().to_string() + " port " + std::to_string(config.port) + ": " +
           ec.message();
  }
  if (multicast() && !v6) {
    ip_mreqn mreq{};
    mreq.imr_multiaddr.s_addr = htonl(group.to_v4().to_uint());
    mreq.imr_ifindex = static_cast<int>(ifindex);
    if ((err = setOption(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, mreq, "IP_ADD_MEMBERSHIP"))) return err;
  } else if (multicast()) {
    ipv6_mreq mreq{};
    const auto bytes = group.to_v6().to_bytes();
    std::memcpy(&mreq.ipv6mr_multiaddr, bytes.data(), bytes.size());
    mreq.ipv6mr_interface = ifindex;
    if ((err = setOption(fd, IPPROTO_IPV6, IPV6_JOIN_GROUP, mreq, "IPV6_JOIN_GROUP"))) return err;
  }
  s.non_blocking(true, ec);
  if (ec) return "non-blocking mode: " + ec.message();
  return std::nullopt;
}

// Our own addresses decide which sources are ourselves and which peers to skip; they are
// read again whenever the socket is rebuilt, as addresses come and go with the interface.
// Every address of the host counts, not only the link's: the kernel may pick the source of a
// datagram from another interface (a multicast sent on lo goes out from eth0's address).
void Channel::Link::refreshOwnAddresses() {
  own.clear();
  if (!multicast() && !local.is_unspecified()) {
    own.push_back(local);
  } else if (ifaddrs* list = nullptr; ::getifaddrs(&list) == 0) {
    const int family = v6 ? AF_INET6 : AF_INET;
    for (ifaddrs* ifa = list; ifa != nullptr; ifa = ifa->ifa_next) {
      if (ifa->ifa_addr == nullptr || ifa->ifa_addr->sa_family != family) continue;
      sockaddr_storage ss{};
      std::memcpy(&ss, ifa->ifa_addr, v6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in));
      own.push_back(toEndpoint(ss).address());
    }
    ::freeifaddrs(list);
  }
  destinations.clear();
  if (multicast()) {
    asio::ip::address to = group;
    if (v6) to = asio::ip::address_v6(group.to_v6().to_bytes(), ifindex);
    destinations.emplace_back(to, config.port);
  } else {
    for (const udp::endpoint& peer : peers) {
      if (!isOwn(peer)) destinations.push_back(peer);
    }
  }
}

bool Channel::Link::isOwn(const udp::endpoint& source) const {
  if (source.port() != config.port) return false;
  return std::any_of(own.begin(), own.end(),
                     [&](const asio::ip::address& a) { return sameIp(a, source.address()); });
}

bool Channel::Link::isPeer(const udp::endpoint& source) const {
  return std::any_of(peers.begin(), peers.end(),
                     [&](const udp::endpoint& p) { return sameEndpoint(p, source); });
}

std::variant<std::unique_ptr<Channel>, std::string> Channel::open(asio::io_context& io,
                                                                  std::vector<LinkConfig> links,
                                                                  ReceiveHandler onReceive,
                                                                  ChannelOptions options) {
  if (links.empty()) return std::string("no sync link configured");
  if (options.maxDatagramBytes == 0 || options.maxDatagramBytes > kMaxDatagram) {
    return "maximum datagram size must be 1.." + std::to_string(kMaxDatagram) + " bytes";
  }
  std::unique_ptr<Channel> ch(new Channel(io, std::move(onReceive), std::move(options)));
  boost::system::error_code ec;
  ch->probeSocket_.open(udp::v4(), ec);
  if (ec) ch->probeSocket_.open(udp::v6(), ec);
  if (ec) return "cannot open a socket: " + ec.message();

  for (size_t i = 0; i < links.size(); ++i) {
    const std::string where = "link " + std::to_string(i) + ": ";
    auto link = std::make_unique<Link>(io, std::move(links[i]));
    if (auto err = link->parse()) return where + *err;
    if (!link->config.interface.empty()) {
      auto index = interfaceIndex(ch->probeSocket_.native_handle(), link->config.interface);
      if (!index) return where + "interface " + quoted(link->config.interface) + " does not exist";
      link->ifindex = *index;
    }
    ch->links_.push_back(std::move(link));
    Link& l = *ch->links_.back();
    l.interfaceUp = l.config.interface.empty() || ch->probe(i);
    if (auto err = l.openSocket(l.socket)) {
      // A down interface may refuse some of the set-up: that is the link being down, not a
      // bad configuration. checkLinks() tries again once it is up.
      if (l.interfaceUp) return where + *err;
      l.socket.close(ec);
      l.needsReopen = true;
      l.stats.lastReopenError = *err;
    }
    l.refreshOwnAddresses();
    l.stats.rcvbufBytes = l.socket.is_open() ? getBuffer(l.socket.native_handle(), SO_RCVBUF) : 0;
    l.stats.sndbufBytes = l.socket.is_open() ? getBuffer(l.socket.native_handle(), SO_SNDBUF) : 0;
  }
  for (size_t i = 0; i < ch->links_.size(); ++i) {
    if (ch->links_[i]->socket.is_open()) ch->startReceive(i);
  }
  ch->selectActive(false);
  ch->armProbe();
  return ch;
}

Channel::Channel(asio::io_context& io, ReceiveHandler onReceive, ChannelOptions options)
    : onReceive_(std::move(onReceive)),
      options_(std::move(options)),
      probeSocket_(io),
      probeTimer_(io),
      buffer_(options_.maxDatagramBytes) {}

// NOLINTNEXTLINE(bugprone-exception-escape): cancelling a timer throws only on a broken reactor.
Channel::~Channel() {
  close();
}

void Channel::close() {
  if (closed_) return;
  closed_ = true;
  boost::system::error_code ec;
  probeTimer_.cancel();
  for (auto& link : links_) link->socket.close(ec);
  probeSocket_.close(ec);
  active_.reset();
}

bool Channel::probe(size_t index) {
  const std::string& name = links_[index]->config.interface;
  if (options_.isUp) return options_.isUp(index, name);
  return interfaceRunning(probeSocket_.native_handle(), name);
}

void Channel::startReceive(size_t index) {
  Link& link = *links_[index];
  link.socket.async_wait(udp::socket::wait_read, [this, index, generation = link.generation,
                                                  alive = std::weak_ptr<bool>(alive_)](
                                                     const boost::system::error_code& ec) {
    if (alive.expired() || ec == asio::error::operation_aborted || closed_) return;
    Link& l = *links_[index];
    if (l.generation != generation) return;  // the socket was rebuilt since
    if (ec) {
      ++l.stats.receiveErrors;
    } else {
      drain(index, generation);
      // The handler may have closed (or, against the contract, destroyed) the Channel.
      if (alive.expired() || closed_ || l.generation != generation) return;
    }
    startReceive(index);
  });
}

void Channel::drain(size_t index, uint64_t generation) {
  Link& link = *links_[index];
  const int fd = link.socket.native_handle();
  const std::weak_ptr<bool> alive = alive_;
  for (int i = 0; i < kMaxReadsPerWake; ++i) {
    sockaddr_storage from{};
    iovec iov{buffer_.data(), buffer_.size()};
    msghdr msg{};
    msg.msg_name = &from;
    msg.msg_namelen = sizeof from;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) ++link.stats.receiveErrors;
      return;
    }
    if ((msg.msg_flags & MSG_TRUNC) != 0) {
      ++link.stats.truncated;
      continue;
    }
    const udp::endpoint source = toEndpoint(from);
    if (link.isOwn(source)) {
      ++link.stats.ownSourceDrops;
      continue;
    }
    if (!link.multicast() && link.config.acceptOnlyPeers && !link.isPeer(source)) {
      ++link.stats.foreignSourceDrops;
      continue;
    }
    ++link.stats.datagramsReceived;
    link.stats.bytesReceived += static_cast<uint64_t>(n);
    onReceive_(std::span<const uint8_t>(buffer_.data(), static_cast<size_t>(n)), index);
    if (alive.expired() || closed_ || link.generation != generation) return;
  }
}

Channel::SendResult Channel::sendOn(size_t index, std::span<const uint8_t> datagram) {
  Link& link = *links_[index];
  if (!link.socket.is_open()) return SendResult::kLinkFailed;
  LinkStats& st = link.stats;
  bool linkFailed = !link.destinations.empty();  // every destination failed link-level
  bool dropped = false;
  for (const udp::endpoint& to : link.destinations) {
    const ssize_t n = ::sendto(link.socket.native_handle(), datagram.data(), datagram.size(),
                               MSG_DONTWAIT | MSG_NOSIGNAL, to.data(), to.size());
    if (n >= 0) {
      ++st.datagramsSent;
      st.bytesSent += static_cast<uint64_t>(n);
      linkFailed = false;
      continue;
    }
    const int e = errno;
    st.lastSendErrno = e;
    switch (e) {
      case EAGAIN:
#if EWOULDBLOCK != EAGAIN
      case EWOULDBLOCK:
#endif
        ++st.sendWouldBlock;
        dropped = true;
        linkFailed = false;
        break;
      case ENOBUFS:
        ++st.sendNoBuffers;
        dropped = true;
        linkFailed = false;
        break;
      case ENETDOWN:
      case ENODEV:
      case ENXIO:
        ++st.sendLinkDown;
        break;
      case ENETUNREACH:
      case EHOSTUNREACH:
      case EHOSTDOWN:
        ++st.sendUnreachable;
        break;
      case EADDRNOTAVAIL:
        ++st.sendAddrNotAvail;
        break;
      default:
        ++st.sendOtherErrors;
        linkFailed = false;
        break;
    }
  }
  if (linkFailed) return SendResult::kLinkFailed;
  return dropped ? SendResult::kDropped : SendResult::kSent;
}

void Channel::send(std::span<const uint8_t> datagram) {
  if (closed_) return;
  lastSendBlocked_ = false;
  if (datagram.size() > options_.maxDatagramBytes) {
    ++oversizedSends_;
    return;
  }
  if (!active_) {
    ++sendsWithoutHealthyLink_;
    if (sendOn(0, datagram) == SendResult::kDropped) lastSendBlocked_ = true;
    return;
  }
  // Later links are only tried if the earlier ones fail link-level during this very send, so
  // a datagram is not lost to the moment of failover.
  for (size_t i = *active_; i < links_.size(); ++i) {
    if (!links_[i]->healthy()) continue;
    const SendResult r = sendOn(i, datagram);
    if (r == SendResult::kDropped) lastSendBlocked_ = true;
    if (r != SendResult::kLinkFailed) return;
    markFailed(i);
    if (closed_) return;  // the active-change callback closed the Channel
  }
}

void Channel::markFailed(size_t index) {
  Link& link = *links_[index];
  if (link.healthy()) ++link.stats.timesDown;
  link.holdProbes = std::max(1U, options_.hardErrorHoldProbes);
  selectActive(true);
}

bool Channel::reopen(size_t index) {
  Link& link = *links_[index];
  boost::system::error_code ec;
  // A device that went away and came back has a new index.
  if (!link.config.interface.empty()) {
    auto ifindex = interfaceIndex(probeSocket_.native_handle(), link.config.interface);
    if (!ifindex) {
      link.stats.lastReopenError = "interface " + quoted(link.config.interface) + " not found";
      return false;
    }
    link.ifindex = *ifindex;
  }
  // Close first: a unicast port is not shared, so the new socket cannot bind beside the old.
  link.socket.close(ec);
  ++link.generation;
  if (auto err = link.openSocket(link.socket)) {
    link.socket.close(ec);
    link.stats.lastReopenError = *err;
    return false;
  }
  link.refreshOwnAddresses();
  link.stats.rcvbufBytes = getBuffer(link.socket.native_handle(), SO_RCVBUF);
  link.stats.sndbufBytes = getBuffer(link.socket.native_handle(), SO_SNDBUF);
  startReceive(index);
  return true;
}

void Channel::checkLinks() {
  if (closed_) return;
  for (size_t i = 0; i < links_.size(); ++i) {
    Link& link = *links_[i];
    const bool wasHealthy = link.healthy();
    if (!link.config.interface.empty()) {
      if (!probe(i)) {
        link.interfaceUp = false;
        link.needsReopen = true;
      } else if (!link.interfaceUp || link.needsReopen || !link.socket.is_open()) {
        // Rebuilding re-joins the group: the kernel forgets memberships on a device that went
        // away, and the socket's device binding and the group's scope id name the old index.
        if (reopen(i)) {
          ++link.stats.reopens;
          link.interfaceUp = true;
          link.needsReopen = false;
        } else {
          ++link.stats.reopenFailures;
        }
      }
    }
    if (link.holdProbes > 0) --link.holdProbes;
    if (wasHealthy && !link.healthy()) ++link.stats.timesDown;
  }
  selectActive(true);
}

void Channel::selectActive(bool notify) {
  std::optional<size_t> next;
  for (size_t i = 0; i < links_.size(); ++i) {
    if (links_[i]->healthy()) {
      next = i;
      break;
    }
  }
  if (next == active_ && notify) return;
  const std::optional<size_t> previous = active_;
  active_ = next;
  if (next) ++links_[*next]->stats.timesActivated;
  if (!notify) return;
  ++activeChanges_;
  if (options_.onActiveChange) options_.onActiveChange(previous, next);
}

void Channel::armProbe() {
  if (closed_ || options_.probeInterval.count() <= 0) return;
  probeTimer_.expires_after(options_.probeInterval);
  probeTimer_.async_wait(
      [this, alive = std::weak_ptr<bool>(alive_)](const boost::system::error_code& ec) {
        if (alive.expired() || ec == asio::error::operation_aborted || closed_) return;
        checkLinks();
        armProbe();
      });
}

ChannelStats Channel::stats() const {
  ChannelStats s;
  s.links.reserve(links_.size());
  for (const auto& link : links_) {
    s.links.push_back(link->stats);
    s.links.back().healthy = !closed_ && link->healthy();
    s.links.back().interfaceUp = link->interfaceUp;
  }
  s.activeLink = active_;
  s.activeChanges = activeChanges_;
  s.sendsWithoutHealthyLink = sendsWithoutHealthyLink_;
  s.oversizedSends = oversizedSends_;
  s.lastSendBlocked = lastSendBlocked_;
  return s;
}

}  // namespace ctsync::replication
