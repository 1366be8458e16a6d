#include "syncd/control.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <sstream>
#include <vector>

#include "syncd/daemon.hpp"

namespace ctsync::syncd {

namespace asio = boost::asio;
using Stream = asio::local::stream_protocol;

const char* const kControlUsage =
    "  status [--json]              role, peers and their lag, table sizes, last commit\n"
    "  list [--replica] [--json]    this node's flows (or the replica: every node's)\n"
    "  list --expect [--replica] [--json]\n"
    "                               expectations, conntrack -L expect format\n"
    "  events [--replica]           live events, conntrack -E format, until interrupted\n"
    "  stats                        every counter, one per line\n"
    "  commit                       write every replica flow into the kernel now\n"
    "  flush                        empty the kernel's conntrack table (not on the active node)\n"
    "  resync                       dump the kernel again and ask every peer for its flows\n"
    "  promote                      become active; returns once the kernel holds the flows\n"
    "  demote [--fault]             become backup (or fault); stop mirroring the kernel\n";

namespace {

constexpr size_t kMaxRequest = 4096;
constexpr size_t kChunkLines = 4096;  // list output goes out in writes of this many lines

std::vector<std::string> split(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

struct CommandSpec {
  const char* name;
  std::initializer_list<const char*> options;
};
constexpr CommandSpec kCommands[] = {
    {"status", {"--json"}},
    {"list", {"--replica", "--internal", "--json", "--expect"}},
    {"events", {"--replica"}},
    {"stats", {}},
    {"commit", {}},
    {"flush", {}},
    {"resync", {}},
    {"promote", {}},
    {"demote", {"--fault"}},
};

bool has(const std::vector<std::string>& words, const char* option) {
  for (size_t i = 1; i < words.size(); ++i) {
    if (words[i] == option) return true;
  }
  return false;
}

std::string withNewline(std::string s) {
  if (!s.empty() && s.back() != '\n') s += '\n';
  return s;
}

std::string formatValue(double v) {
  char buf[64];
  if (v == static_cast<double>(static_cast<int64_t>(v))) {
    std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
  } else {
    std::snprintf(buf, sizeof buf, "%.6g", v);
  }
  return buf;
}

}  // namespace

std::optional<std::string> checkCommand(const std::vector<std::string>& words) {
  if (words.empty()) return "no command given";
  for (const CommandSpec& c : kCommands) {
    if (words[0] != c.name) continue;
    for (size_t i = 1; i < words.size(); ++i) {
      bool known = false;
      for (const char* o : c.options) known = known || words[i] == o;
      if (!known) return "unknown option '" + words[i] + "' for '" + words[0] + "'";
    }
    return std::nullopt;
  }
  return "unknown command '" + words[0] + "'";
}

void runCommand(Daemon& daemon, const std::string& line, std::function<void(CommandOutcome)> done) {
  const std::vector<std::string> words = split(line);
  if (auto error = checkCommand(words)) {
    done({false, *error + "; commands:\n" + kControlUsage});
    return;
  }
  const std::string& cmd = words[0];
  auto reply = [](const Reply& r) { return CommandOutcome{r.ok, withNewline(r.text)}; };
  if (cmd == "status") {
    done({true, withNewline(daemon.status(has(words, "--json")))});
  } else if (cmd == "list") {
    std::string out;
    const bool replica = has(words, "--replica");
    const bool json = has(words, "--json");
    for (const std::string& l : has(words, "--expect") ? daemon.listExpectations(replica, json)
                                                       : daemon.list(replica, json)) {
      out += l;
      out += '\n';
    }
    done({true, std::move(out)});
  } else if (cmd == "stats") {
    std::string out;
    for (const Metric& m : daemon.metrics()) {
      out += m.name;
      if (!m.labels.empty()) out += "{" + m.labels + "}";
      out += " " + formatValue(m.value) + "\n";
    }
    done({true, std::move(out)});
  } else if (cmd == "commit") {
    daemon.commit([done, reply](const Reply& r) { done(reply(r)); });
  } else if (cmd == "flush") {
    done(reply(daemon.flushKernel()));
  } else if (cmd == "resync") {
    done(reply(daemon.resync()));
  } else if (cmd == "promote") {
    daemon.promote([done, reply](const Reply& r) { done(reply(r)); });
  } else if (cmd == "demote") {
    done(reply(daemon.demote(has(words, "--fault"))));
  } else {
    done({false, "'" + cmd + "' is not run here"});
  }
}

namespace {

// One client connection.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Stream::socket socket, Daemon& daemon)
      : socket_(std::move(socket)), daemon_(daemon), deadline_(socket_.get_executor()) {}
  ~Session() {
    // The daemon may be gone already (the io_context destroys pending handlers last).
    if (subscription_ != 0 && serverAlive_ && *serverAlive_) daemon_.unsubscribe(subscription_);
  }

  void start(std::shared_ptr<bool> serverAlive) {
    serverAlive_ = std::move(serverAlive);
    if (!peerIsRoot()) {
      queue("error permission denied: the control socket serves root only\n");
      finish();
      return;
    }
    // A client that connects and says nothing is cut off.
    deadline_.expires_after(std::chrono::seconds(10));
    deadline_.async_wait(
        [weak = std::weak_ptr<Session>(shared_from_this())](const boost::system::error_code& ec) {
          if (auto self = weak.lock(); self && !ec) self->stop();
        });
    asio::async_read_until(socket_, buffer_, '\n',
                           [self = shared_from_this()](const boost::system::error_code& ec,
                                                       size_t) { self->onRequest(ec); });
  }

 private:
  bool peerIsRoot() {
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(socket_.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      return false;
    }
    return cred.uid == 0;
  }

  void onRequest(const boost::system::error_code& ec) {
    deadline_.cancel();
    if (!*serverAlive_) return;
    // No newline within the buffer's limit: answer, rather than dropping the client silently.
    if (ec == asio::error::not_found) {
      queue("error request too long (over " + std::to_string(kMaxRequest) + " bytes)\n");
      finish();
      return;
    }
    if (ec) return;
    std::istream in(&buffer_);
    std::string line;
    std::getline(in, line);
    if (line.size() > kMaxRequest) {
      queue("error request too long (over " + std::to_string(kMaxRequest) + " bytes)\n");
      finish();
      return;
    }
    const auto words = split(line);
    if (!words.empty() && words[0] == "events") {
      if (auto error = checkCommand(words)) {
        queue("error " + *error + "\n");
        finish();
        return;
      }
      streaming_ = true;
      queue("ok\n");
      std::weak_ptr<Session> weak = shared_from_this();
      subscription_ = daemon_.subscribe(has(words, "--replica"), [weak](const std::string& l) {
        if (auto s = weak.lock()) s->queue(l + "\n");
      });
      // The client ends the stream by closing: a read returns then.
      asio::async_read(
          socket_, buffer_, asio::transfer_at_least(1),
          [self = shared_from_this()](const boost::system::error_code&, size_t) { self->stop(); });
      return;
    }
    spdlog::debug("control_command command=\"{}\"", line);
    runCommand(daemon_, line, [self = shared_from_this()](const CommandOutcome& out) {
      if (*self->serverAlive_) self->deliver(out);
    });
  }

  void deliver(const CommandOutcome& out) {
    if (!out.ok) {
      std::string first = out.body;
      std::string rest;
      if (const size_t nl = first.find('\n'); nl != std::string::npos) {
        rest = first.substr(nl + 1);
        first.resize(nl);
      }
      queue("error " + first + "\n" + rest);
    } else if (out.body.size() < (64u << 10)) {
      // Small answers leave now, before whatever the command posted runs (promote answers
      // as soon as the kernel holds the flows, then adopts them and dumps the kernel).
      boost::system::error_code ec;
      const std::string head = "ok " + std::to_string(out.body.size()) + "\n";
      asio::write(socket_, std::array{asio::buffer(head), asio::buffer(out.body)}, ec);
      stop();
      return;
    } else {
      queue("ok " + std::to_string(out.body.size()) + "\n");
      // Large bodies (a list of a million flows) go out in pieces.
      const std::string& body = out.body;
      size_t pos = 0;
      while (pos < body.size()) {
        size_t end = pos;
        for (size_t n = 0; n < kChunkLines && end < body.size(); ++n) {
          const size_t nl = body.find('\n', end);
          end = nl == std::string::npos ? body.size() : nl + 1;
        }
        queue(body.substr(pos, end - pos));
        pos = end;
      }
    }
    finish();
  }

  void queue(std::string data) {
    if (closed_) return;
    // A client that stops reading an event stream is cut off rather than buffered for ever.
    queuedBytes_ += data.size();
    if (streaming_ && queuedBytes_ > (64u << 20)) {
      spdlog::warn("control_client_too_slow dropped_stream=events");
      stop();
      return;
    }
    out_.push_back(std::move(data));
    if (out_.size() == 1) write();
  }

  void write() {
    asio::async_write(socket_, asio::buffer(out_.front()),
                      [self = shared_from_this()](const boost::system::error_code& ec, size_t) {
                        if (ec) {
                          self->stop();
                          return;
                        }
                        self->queuedBytes_ -= self->out_.front().size();
                        self->out_.pop_front();
                        if (!self->out_.empty()) {
                          self->write();
                        } else if (self->finishing_) {
                          self->stop();
                        }
                      });
  }

  // Close once everything queued is written.
  void finish() {
    finishing_ = true;
    if (out_.empty()) stop();
  }

  void stop() {
    if (closed_) return;
    closed_ = true;
    if (subscription_ != 0 && *serverAlive_) daemon_.unsubscribe(subscription_);
    subscription_ = 0;
    boost::system::error_code ignored;
    socket_.shutdown(Stream::socket::shutdown_both, ignored);
    socket_.close(ignored);
  }

  Stream::socket socket_;
  Daemon& daemon_;
  asio::steady_timer deadline_;
  std::shared_ptr<bool> serverAlive_;
  asio::streambuf buffer_{kMaxRequest + 2};
  std::deque<std::string> out_;
  size_t queuedBytes_ = 0;
  int subscription_ = 0;
  bool streaming_ = false;
  bool finishing_ = false;
  bool closed_ = false;
};

// True when something accepts connections on `path` (another daemon).
bool socketInUse(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  const bool used = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return used;
}

}  // namespace

ControlServer::ControlServer(asio::io_context& io, std::string path, Daemon& daemon)
    : io_(io), path_(std::move(path)), daemon_(daemon), acceptor_(io), retry_(io) {}

ControlServer::~ControlServer() {
  *alive_ = false;
  close();
}

std::variant<std::unique_ptr<ControlServer>, std::string> ControlServer::open(
    asio::io_context& io, const std::string& path, Daemon& daemon) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return path + ": exists and is not a socket";
    if (socketInUse(path)) return path + ": another ctsyncd is running (the socket answers)";
    ::unlink(path.c_str());  // left behind by a daemon that died
  }
  std::unique_ptr<ControlServer> s(new ControlServer(io, path, daemon));
  boost::system::error_code ec;
  // Nobody but root may connect, not even in the moment between bind and chmod.
  const mode_t old = ::umask(0177);
  s->acceptor_.open(Stream(), ec);
  if (!ec) s->acceptor_.bind(Stream::endpoint(path), ec);
  ::umask(old);
  if (!ec) s->acceptor_.listen(16, ec);
  if (ec) return path + ": " + ec.message();
  ::chmod(path.c_str(), 0600);
  s->accept();
  return s;
}

void ControlServer::accept() {
  acceptor_.async_accept(
      [this, alive = alive_](const boost::system::error_code& ec, Stream::socket socket) {
        if (!*alive || closed_) return;
        if (ec) {  // e.g. EMFILE: do not spin, try again shortly
          retry_.expires_after(std::chrono::milliseconds(100));
          retry_.async_wait([this, alive](const boost::system::error_code& e) {
            if (!e && *alive && !closed_) accept();
          });
          return;
        }
        std::make_shared<Session>(std::move(socket), daemon_)->start(alive);
        accept();
      });
}

void ControlServer::close() {
  if (closed_) return;
  closed_ = true;
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  retry_.cancel();
  ::unlink(path_.c_str());
}

}  // namespace ctsync::syncd
