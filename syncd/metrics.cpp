#include "syncd/metrics.hpp"

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdio>
#include <set>

namespace ctsync::syncd {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

std::string prometheusText(const std::vector<Metric>& metrics) {
  std::string out;
  std::set<std::string> described;
  char value[64];
  for (const Metric& m : metrics) {
    if (described.insert(m.name).second) {
      out += "# HELP " + m.name + " " + m.help + "\n";
      out += "# TYPE " + m.name + (m.counter ? " counter\n" : " gauge\n");
    }
    out += m.name;
    if (!m.labels.empty()) out += "{" + m.labels + "}";
    std::snprintf(value, sizeof value, " %.17g\n", m.value);
    out += value;
  }
  return out;
}

namespace {

class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(tcp::socket socket, MetricsServer::Source source)
      : socket_(std::move(socket)), deadline_(socket_.get_executor()), source_(std::move(source)) {}

  void start() {
    // A scraper gets 10 s for its request and our answer; an idle connection is closed.
    deadline_.expires_after(std::chrono::seconds(10));
    deadline_.async_wait([weak = std::weak_ptr<HttpSession>(shared_from_this())](
                             const boost::system::error_code& ec) {
      if (auto self = weak.lock(); self && !ec) {
        boost::system::error_code ignored;
        self->socket_.close(ignored);
      }
    });
    http::async_read(socket_, buffer_, request_,
                     [self = shared_from_this()](const boost::system::error_code& ec, size_t) {
                       if (!ec) self->respond();
                     });
  }

 private:
  void respond() {
    response_.version(request_.version());
    response_.keep_alive(false);
    if (request_.method() != http::verb::get && request_.method() != http::verb::head) {
      response_.result(http::status::method_not_allowed);
      response_.body() = "GET /metrics\n";
    } else if (request_.target() != "/metrics") {
      response_.result(http::status::not_found);
      response_.body() = "ctsyncd serves /metrics only\n";
    } else {
      response_.result(http::status::ok);
      response_.set(http::field::content_type, "text/plain; version=0.0.4");
      response_.body() = prometheusText(source_());
    }
    response_.prepare_payload();
    http::async_write(socket_, response_,
                      [self = shared_from_this()](const boost::system::error_code&, size_t) {
                        boost::system::error_code ignored;
                        self->socket_.shutdown(tcp::socket::shutdown_both, ignored);
                        self->deadline_.cancel();
                      });
  }

  tcp::socket socket_;
  asio::steady_timer deadline_;
  MetricsServer::Source source_;
  boost::beast::flat_buffer buffer_{8192};
  http::request<http::string_body> request_;
  http::response<http::string_body> response_;
};

}  // namespace

MetricsServer::MetricsServer(asio::io_context& io, Source source)
    : acceptor_(io), retry_(io), source_(std::move(source)) {}

MetricsServer::~MetricsServer() {
  *alive_ = false;
  close();
}

std::variant<std::unique_ptr<MetricsServer>, std::string> MetricsServer::open(
    asio::io_context& io, const std::string& listen, Source source) {
  std::string host = listen;
  std::string portText;
  if (!host.empty() && host.front() == '[') {
    const size_t close = host.find("]:");
    if (close == std::string::npos) return "metrics listen '" + listen + "': expected [ADDR]:PORT";
    portText = host.substr(close + 2);
    host = host.substr(1, close - 1);
  } else {
    const size_t colon = host.rfind(':');
    if (colon == std::string::npos) return "metrics listen '" + listen + "': expected ADDR:PORT";
    portText = host.substr(colon + 1);
    host.resize(colon);
  }
  boost::system::error_code ec;
  const auto addr = asio::ip::make_address(host, ec);
  if (ec) return "metrics listen '" + listen + "': '" + host + "' is not an address";
  unsigned long port = 0;
  try {
    port = std::stoul(portText);
  } catch (...) {
    port = 65536;
  }
  if (port > 65535) return "metrics listen '" + listen + "': bad port";
  std::unique_ptr<MetricsServer> s(new MetricsServer(io, std::move(source)));
  const tcp::endpoint ep(addr, static_cast<uint16_t>(port));
  s->acceptor_.open(ep.protocol(), ec);
  if (!ec) s->acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) s->acceptor_.bind(ep, ec);
  if (!ec) s->acceptor_.listen(16, ec);
  if (ec) return "metrics listen '" + listen + "': " + ec.message();
  s->accept();
  return s;
}

void MetricsServer::accept() {
  acceptor_.async_accept(
      [this, alive = alive_](const boost::system::error_code& ec, tcp::socket socket) {
        if (!*alive || !acceptor_.is_open()) return;
        if (ec) {  // e.g. EMFILE: do not spin, try again shortly
          retry_.expires_after(std::chrono::milliseconds(100));
          retry_.async_wait([this, alive](const boost::system::error_code& e) {
            if (!e && *alive && acceptor_.is_open()) accept();
          });
          return;
        }
        std::make_shared<HttpSession>(std::move(socket), source_)->start();
        accept();
      });
}

void MetricsServer::close() {
  retry_.cancel();
  boost::system::error_code ignored;
  acceptor_.close(ignored);
}

uint16_t MetricsServer::port() const {
  boost::system::error_code ec;
  const auto ep = acceptor_.local_endpoint(ec);
  return ec ? 0 : ep.port();
}

}  // namespace ctsync::syncd
