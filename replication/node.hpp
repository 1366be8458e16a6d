#pragma once
// A sync engine on real sockets: Engine (the protocol, no I/O) + Channel (UDP links) + a timer,
// all on one Boost.Asio io_context the caller owns and runs. Everything here is called from
// that io_context's thread.
// clang-format off
#include <utility>  // before asio: Boost 1.74 with GCC 12 in C++20 mode needs it
// clang-format on

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "replication/channel.hpp"
#include "replication/engine.hpp"

namespace ctsync::replication {

class Node {
 public:
  // Opens the links and starts the engine. Errors (a link that cannot be opened) come back as
  // the Channel's message.
  static std::variant<std::unique_ptr<Node>, std::string> open(boost::asio::io_context& io,
                                                               const EngineSettings& settings,
                                                               const Key& key,
                                                               std::vector<LinkConfig> links,
                                                               ChannelOptions options = {});
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // CLOCK_MONOTONIC in nanoseconds: the engine's time base.
  static Nanos monotonicNow();
  // Wall clock minus monotonic clock, for EngineSettings::wallClockOffset.
  static Nanos wallClockOffset();

  // Local flow changes. Batched: the engine sends them within its flush delay.
  void upsert(const FlowRecord& flow);
  void remove(const FlowKey& key);

  Engine& engine() { return *engine_; }
  const Engine& engine() const { return *engine_; }
  Channel& channel() { return *channel_; }

  // Runs the engine's timers and sends what is due now; then re-arms the timer. Called by the
  // receive path and the timer; callers that changed the engine directly call it too.
  void kick();
  // Sends what is due, then closes the sockets and stops the timer. Idempotent.
  void close();

 private:
  Node(boost::asio::io_context& io);
  void onDatagram(std::span<const uint8_t> datagram);
  void schedule();
  void arm();

  boost::asio::io_context& io_;
  boost::asio::steady_timer timer_;
  std::unique_ptr<Channel> channel_;
  std::unique_ptr<Engine> engine_;
  bool kickPosted_ = false;
  bool closed_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace ctsync::replication
