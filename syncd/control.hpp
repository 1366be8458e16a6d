#pragma once
// The control socket ctsyncctl talks to: a UNIX stream socket, mode 0600, and only peers with
// uid 0 are served (SO_PEERCRED), so only root can promote or flush.
//
// Protocol: the client sends one line, the command and its options separated by spaces
// ("list --replica --json"). The daemon answers "ok LENGTH\n" (the body's size in bytes, so a
// client can tell a complete answer from one cut short) or "error MESSAGE\n", then the body,
// and closes. `events` answers "ok\n" and writes one line per event until the client closes.
// clang-format off
#include <utility>  // before asio: Boost 1.74 with GCC 12 in C++20 mode needs it
// clang-format on

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace ctsync::syncd {

class Daemon;

class ControlServer {
 public:
  // Binds `path` (a stale socket file left by a crash is replaced; one a running daemon
  // listens on is an error) and starts accepting.
  static std::variant<std::unique_ptr<ControlServer>, std::string> open(boost::asio::io_context& io,
                                                                        const std::string& path,
                                                                        Daemon& daemon);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Stops accepting and removes the socket file (clients being answered finish). Idempotent.
  void close();

 private:
  ControlServer(boost::asio::io_context& io, std::string path, Daemon& daemon);
  void accept();

  boost::asio::io_context& io_;
  std::string path_;
  Daemon& daemon_;
  boost::asio::local::stream_protocol::acceptor acceptor_;
  boost::asio::steady_timer retry_;  // after an accept error (out of descriptors): wait, then retry
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  bool closed_ = false;
};

// Runs one command line against the daemon: what the control socket does with a request,
// without the socket. `done` may run later (promote and commit wait for the kernel). `events`
// is not handled here.
struct CommandOutcome {
  bool ok = true;
  std::string body;  // what the client prints (with a final newline when not empty)
};
void runCommand(Daemon& daemon, const std::string& line, std::function<void(CommandOutcome)> done);

// Whether `words` (command, then options) is a command the daemon knows with options it takes;
// the reason when not. ctsyncctl checks before sending (a usage error is not the daemon's).
std::optional<std::string> checkCommand(const std::vector<std::string>& words);

// The commands, for help texts: "status [--json]", ...
extern const char* const kControlUsage;

}  // namespace ctsync::syncd
