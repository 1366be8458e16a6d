// ctsyncctl: talks to a running ctsyncd over its control socket (see syncd/control.hpp).
// Exit status: 0 done, 1 the daemon refused or the command failed, 2 usage, 3 daemon not
// reachable.
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "syncd/control.hpp"

namespace {

constexpr const char* kDefaultSocket = "/run/ctsyncd.sock";

void usage(std::ostream& out) {
  out << "usage: ctsyncctl [--socket PATH] COMMAND [OPTIONS]\n"
         "The socket is PATH, else $CTSYNCCTL_SOCKET, else "
      << kDefaultSocket
      << " ([control] socket in ctsyncd's config).\n"
         "Commands:\n"
      << ctsync::syncd::kControlUsage;
}

bool writeAll(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::string socketPath;
  if (const char* env = std::getenv("CTSYNCCTL_SOCKET"); env != nullptr && *env != '\0') {
    socketPath = env;
  }
  std::vector<std::string> words;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      usage(std::cout);
      return 0;
    }
    if (a == "--socket" || a == "-s") {
      if (i + 1 >= argc) {
        std::cerr << "ctsyncctl: --socket needs a path\n";
        return 2;
      }
      socketPath = argv[++i];
    } else if (a.rfind("--socket=", 0) == 0) {
      socketPath = a.substr(9);
    } else {
      words.push_back(a);
    }
  }
  if (words.empty()) {
    usage(std::cerr);
    return 2;
  }
  if (auto error = ctsync::syncd::checkCommand(words)) {
    std::cerr << "ctsyncctl: " << *error << '\n';
    usage(std::cerr);
    return 2;
  }
  if (socketPath.empty()) socketPath = kDefaultSocket;
  std::string request;
  for (const std::string& w : words) {
    if (w.find_first_of(" \t\n") != std::string::npos) {
      std::cerr << "ctsyncctl: arguments cannot contain spaces: '" << w << "'\n";
      return 2;
    }
    request += (request.empty() ? "" : " ") + w;
  }

  sockaddr_un addr{};
  if (socketPath.size() >= sizeof addr.sun_path) {
    std::cerr << "ctsyncctl: socket path too long: " << socketPath << '\n';
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socketPath.c_str(), socketPath.size() + 1);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    const int err = errno;
    std::cerr << "ctsyncctl: cannot reach ctsyncd at " << socketPath << ": " << std::strerror(err);
    if (err == ENOENT || err == ECONNREFUSED) {
      std::cerr << " (is ctsyncd running? its [control] socket setting names the path)";
    } else if (err == EACCES) {
      std::cerr << " (the control socket is for root only)";
    }
    std::cerr << '\n';
    return 3;
  }
  if (!writeAll(fd, request + "\n")) {
    std::cerr << "ctsyncctl: ctsyncd closed the connection: " << std::strerror(errno) << '\n';
    return 3;
  }
  // First line: "ok" or "error MESSAGE"; then the body until the daemon closes.
  std::string head;
  bool headDone = false;
  bool ok = false;
  std::optional<size_t> expected;  // the body's size, when the daemon announced it
  size_t received = 0;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    size_t start = 0;
    if (!headDone) {
      const char* nl = static_cast<const char*>(std::memchr(buf, '\n', static_cast<size_t>(n)));
      if (nl == nullptr) {
        head.append(buf, static_cast<size_t>(n));
        continue;
      }
      head.append(buf, static_cast<size_t>(nl - buf));
      start = static_cast<size_t>(nl - buf) + 1;
      headDone = true;
      ok = head == "ok" || head.rfind("ok ", 0) == 0;
      if (ok && head.size() > 3) {
        char* end = nullptr;
        const unsigned long long size = std::strtoull(head.c_str() + 3, &end, 10);
        if (end != nullptr && *end == '\0') expected = size;
      }
      if (!ok) {
        std::cerr << "ctsyncctl: "
                  << (head.rfind("error ", 0) == 0 ? head.substr(6) : "unexpected answer: " + head)
                  << '\n';
      }
    }
    std::ostream& out = ok ? std::cout : std::cerr;
    received += static_cast<size_t>(n) - start;
    out.write(buf + start, static_cast<std::streamsize>(static_cast<size_t>(n) - start));
    out.flush();
  }
  ::close(fd);
  if (!headDone) {
    std::cerr << "ctsyncctl: ctsyncd closed the connection without answering\n";
    return 3;
  }
  if (ok && expected && received != *expected) {
    std::cerr << "ctsyncctl: the answer was cut short (" << received << " of " << *expected
              << " bytes): ctsyncd stopped or closed the connection\n";
    return 3;
  }
  return ok ? 0 : 1;
}
