#pragma once
// Prometheus metrics over HTTP (Boost.Beast): GET /metrics answers the daemon's counters and
// gauges in the text exposition format; anything else is 404. Off unless [metrics] listen is set.
// clang-format off
#include <utility>  // before asio: Boost 1.74 with GCC 12 in C++20 mode needs it
// clang-format on

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "syncd/daemon.hpp"

namespace ctsync::syncd {

// The text exposition format of `metrics`: HELP and TYPE once per name, then each sample.
std::string prometheusText(const std::vector<Metric>& metrics);

class MetricsServer {
 public:
  using Source = std::function<std::vector<Metric>()>;
  // `listen`: "ADDR:PORT" or "[V6]:PORT", numeric. Errors name the address.
  static std::variant<std::unique_ptr<MetricsServer>, std::string> open(boost::asio::io_context& io,
                                                                        const std::string& listen,
                                                                        Source source);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  void close();
  uint16_t port() const;  // the bound port (useful with port 0 in tests)

 private:
  MetricsServer(boost::asio::io_context& io, Source source);
  void accept();

  boost::asio::ip::tcp::acceptor acceptor_;
  boost::asio::steady_timer retry_;  // after an accept error (out of descriptors)
  Source source_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace ctsync::syncd
