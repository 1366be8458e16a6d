#pragma once
// The sync-link transport: opaque datagrams (already authenticated, <= 64 KiB) over UDP on one
// or more links in priority order. Each link is IPv4/IPv6 multicast bound to an interface (TTL
// or hop limit 1, loopback off) or unicast to a list of peers. Every link receives all the
// time; sends go to the first healthy link only. A link is unhealthy while its interface is
// not UP and RUNNING (polled with SIOCGIFFLAGS) or for a short hold-down after a send failed
// with a link-level error; when an interface comes back, the link's socket is rebuilt, which
// re-joins its multicast group (the kernel drops memberships when a device goes away).
//
// Everything runs on the caller's io_context, on one thread; nothing here is thread-safe.

// Boost 1.74's Asio under GCC 12 in C++20 mode needs <utility> first.
#include <utility>
// (keeps clang-format from sorting <utility> after Asio)
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace ctsync::replication {

// One link, as configured. Addresses are numeric strings (no DNS); the address family of a
// link is that of its group (multicast) or of its local address and peers (unicast), which
// must agree: a link with IPv4 and IPv6 peers is two links.
struct LinkConfig {
  enum class Kind : uint8_t { kMulticast, kUnicast };
  Kind kind = Kind::kMulticast;
  // Multicast: required; the group is joined and sent to on this interface only.
  // Unicast: optional; when set, the socket is bound to the device (SO_BINDTODEVICE) and the
  // link's health follows the interface's state as for multicast.
  std::string interface;
  // Multicast: the group port, shared by every node (SO_REUSEADDR). Unicast: the local port,
  // and the port of every peer that does not name its own. Never 0.
  uint16_t port = 0;
  std::string group;  // multicast: "239.x.y.z", "ff02::...", "ff12::..."
  // Unicast: the address to bind ("" binds the wildcard of the peers' family).
  std::string localAddress;
  // Unicast: "10.0.0.2", "10.0.0.2:4000", "fd00::2", "[fd00::2]:4000", "fe80::2%eth1". Every
  // datagram goes to every peer, except a peer that is this node itself (our address, our port),
  // so that all nodes can share one peer list.
  std::vector<std::string> peers;
  // Unicast: drop (and count) datagrams whose source address and port is not a peer.
  bool acceptOnlyPeers = true;
  // Socket buffers; SO_RCVBUFFORCE / SO_SNDBUFFORCE when permitted (root), else the plain
  // options, which the kernel caps at net.core.rmem_max / wmem_max.
  size_t rcvbufBytes = size_t{8} << 20;
  size_t sndbufBytes = size_t{4} << 20;
};

struct ChannelOptions {
  // How often interfaces are polled. Zero: never; the owner calls Channel::checkLinks().
  std::chrono::milliseconds probeInterval{200};
  // After a link-level send error, the link stays unhealthy for at least this many polls
  // (checkLinks() calls), then is tried again if its interface is up.
  unsigned hardErrorHoldProbes = 5;
  // Receive buffer size: larger datagrams are dropped and counted as truncated.
  size_t maxDatagramBytes = size_t{64} * 1024;
  // Whether link `index`'s interface is usable. Default: IFF_UP and IFF_RUNNING from
  // SIOCGIFFLAGS, in the network namespace the Channel was opened in. Tests swap it. Only
  // asked for links that name an interface.
  std::function<bool(size_t index, const std::string& interface)> isUp;
  // Called when the link used for sending changes (nullopt: no healthy link), e.g. to log it.
  // Runs inside send() or checkLinks(); it must not destroy the Channel.
  std::function<void(std::optional<size_t> from, std::optional<size_t> to)> onActiveChange;
};

struct LinkStats {
  bool healthy = false;
  bool interfaceUp = false;
  uint64_t datagramsSent = 0;  // one per destination (a unicast link with 3 peers counts 3)
  uint64_t bytesSent = 0;
  uint64_t datagramsReceived = 0;  // delivered to the handler
  uint64_t bytesReceived = 0;
  // Send failures by kind. The first two drop the datagram and leave the link alone (the
  // protocol resends); the next three are link-level and fail the link over; the last is
  // counted only (e.g. EPERM from a firewall rule).
  uint64_t sendWouldBlock = 0;    // EAGAIN: socket buffer full
  uint64_t sendNoBuffers = 0;     // ENOBUFS: device queue full
  uint64_t sendLinkDown = 0;      // ENETDOWN, ENODEV, ENXIO
  uint64_t sendUnreachable = 0;   // ENETUNREACH, EHOSTUNREACH, EHOSTDOWN
  uint64_t sendAddrNotAvail = 0;  // EADDRNOTAVAIL
  uint64_t sendOtherErrors = 0;
  int lastSendErrno = 0;
  uint64_t receiveErrors = 0;
  uint64_t truncated = 0;           // larger than ChannelOptions::maxDatagramBytes
  uint64_t ownSourceDrops = 0;      // from one of our own addresses and our port
  uint64_t foreignSourceDrops = 0;  // unicast, acceptOnlyPeers: not from a peer
  uint64_t timesActivated = 0;      // became the sending link (including at open)
  uint64_t timesDown = 0;           // healthy -> unhealthy
  uint64_t reopens = 0;             // socket rebuilt (group re-joined) after the interface returned
  uint64_t reopenFailures = 0;
  std::string lastReopenError;  // why the last rebuild failed (the link stays down meanwhile)
  size_t rcvbufBytes = 0;       // as the kernel reports them (it doubles what was asked)
  size_t sndbufBytes = 0;
};

struct ChannelStats {
  std::vector<LinkStats> links;      // in configuration order
  std::optional<size_t> activeLink;  // nullopt: no link is healthy
  uint64_t activeChanges = 0;        // the sending link changed (not counting open)
  uint64_t sendsWithoutHealthyLink = 0;
  uint64_t oversizedSends = 0;   // larger than maxDatagramBytes: not sent
  bool lastSendBlocked = false;  // the last send() hit EAGAIN/ENOBUFS: back off
};

class Channel {
 public:
  // The datagram is valid only during the call; `link` is its index in the configuration.
  // The handler may call send() and close(), but must not destroy the Channel.
  using ReceiveHandler = std::function<void(std::span<const uint8_t> datagram, size_t link)>;

  // Validates `links` (at least one), opens and binds every socket, joins the groups and starts
  // receiving and polling on `io`. Errors (bad address, wrong family, not a multicast group,
  // port 0, no peers, unknown interface, a socket call failing such as a port already in use)
  // come back as one message naming the link, e.g. "link 1: interface 'eth9' does not exist".
  // A link whose interface exists but is down is not an error: it starts unhealthy.
  // `io` must outlive the Channel.
  static std::variant<std::unique_ptr<Channel>, std::string> open(boost::asio::io_context& io,
                                                                  std::vector<LinkConfig> links,
                                                                  ReceiveHandler onReceive,
                                                                  ChannelOptions options = {});

  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  // Sends `datagram` on the first healthy link, without blocking: a full socket buffer drops
  // it (counted). On a link-level error the link is marked unhealthy and the datagram is sent
  // on the next healthy link instead. With no healthy link it goes out on link 0 anyway.
  // A no-op after close().
  void send(std::span<const uint8_t> datagram);

  // Polls the interfaces now, rebuilds links whose interface came back and picks the sending
  // link. The probe timer calls it; tests and the daemon (on a netlink link event) may too.
  void checkLinks();

  // Cancels the timer and closes the sockets; pending handlers never run. Idempotent; the
  // destructor calls it.
  void close();

  std::optional<size_t> activeLink() const { return active_; }
  size_t linkCount() const { return links_.size(); }
  ChannelStats stats() const;

 private:
  struct Link;
  enum class SendResult : uint8_t { kSent, kDropped, kLinkFailed };

  Channel(boost::asio::io_context& io, ReceiveHandler onReceive, ChannelOptions options);
  void startReceive(size_t index);
  void drain(size_t index, uint64_t generation);
  SendResult sendOn(size_t index, std::span<const uint8_t> datagram);
  void markFailed(size_t index);
  bool probe(size_t index);
  bool reopen(size_t index);
  void selectActive(bool notify);
  void armProbe();

  ReceiveHandler onReceive_;
  ChannelOptions options_;
  std::vector<std::unique_ptr<Link>> links_;
  boost::asio::ip::udp::socket probeSocket_;  // for SIOCGIFFLAGS / SIOCGIFINDEX
  boost::asio::steady_timer probeTimer_;
  std::vector<uint8_t> buffer_;  // receive buffer shared by all links (one thread)
  std::optional<size_t> active_;
  uint64_t activeChanges_ = 0;
  uint64_t sendsWithoutHealthyLink_ = 0;
  uint64_t oversizedSends_ = 0;
  bool lastSendBlocked_ = false;
  bool closed_ = false;
  // Handlers hold a weak_ptr to this: a handler queued before the Channel was destroyed sees it
  // expired and returns without touching the Channel.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace ctsync::replication
