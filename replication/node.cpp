#include "replication/node.hpp"

#include <time.h>

#include <boost/asio/post.hpp>

namespace ctsync::replication {
namespace {

Nanos readClock(clockid_t id) {
  timespec ts{};
  clock_gettime(id, &ts);
  return static_cast<Nanos>(ts.tv_sec) * table::kSecond + ts.tv_nsec;
}

}  // namespace

Nanos Node::monotonicNow() {
  return readClock(CLOCK_MONOTONIC);
}

Nanos Node::wallClockOffset() {
  return readClock(CLOCK_REALTIME) - readClock(CLOCK_MONOTONIC);
}

Node::Node(boost::asio::io_context& io) : io_(io), timer_(io) {}

Node::~Node() {
  close();
  *alive_ = false;
}

std::variant<std::unique_ptr<Node>, std::string> Node::open(boost::asio::io_context& io,
                                                            const EngineSettings& settings,
                                                            const Key& key,
                                                            std::vector<LinkConfig> links,
                                                            ChannelOptions options) {
  std::unique_ptr<Node> node(new Node(io));
  Node* self = node.get();
  auto channel = Channel::open(
      io, std::move(links),
      [self](std::span<const uint8_t> datagram, size_t) { self->onDatagram(datagram); },
      std::move(options));
  if (auto* error = std::get_if<std::string>(&channel)) return *error;
  node->channel_ = std::move(std::get<std::unique_ptr<Channel>>(channel));
  node->engine_ = std::make_unique<Engine>(
      settings, key,
      [self](std::span<const uint8_t> datagram) {
        if (!self->closed_) self->channel_->send(datagram);
      },
      monotonicNow());
  node->kick();
  return node;
}

void Node::upsert(const FlowRecord& flow) {
  engine_->upsert(flow, monotonicNow());
  schedule();
}

void Node::remove(const FlowKey& key) {
  engine_->remove(key, monotonicNow());
  schedule();
}

void Node::onDatagram(std::span<const uint8_t> datagram) {
  engine_->receive(datagram, monotonicNow());
  schedule();
}

// One kick for a burst of datagrams or changes: acks and flushes go out once per burst.
void Node::schedule() {
  if (kickPosted_ || closed_) return;
  kickPosted_ = true;
  boost::asio::post(io_, [this, alive = alive_] {
    if (!*alive) return;
    kickPosted_ = false;
    kick();
  });
}

void Node::kick() {
  if (closed_) return;
  engine_->poll(monotonicNow());
  arm();
}

void Node::arm() {
  const Nanos wake = engine_->nextWakeup();
  const Nanos now = monotonicNow();
  if (wake <= now) {
    schedule();
    return;
  }
  timer_.expires_after(std::chrono::nanoseconds(wake - now));
  timer_.async_wait([this, alive = alive_](const boost::system::error_code& ec) {
    if (ec || !*alive) return;
    kick();
  });
}

void Node::close() {
  if (closed_) return;
  if (engine_) engine_->poll(monotonicNow());
  closed_ = true;
  timer_.cancel();
  if (channel_) channel_->close();
}

}  // namespace ctsync::replication
