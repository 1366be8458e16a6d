#include "syncd/kernel_expect.hpp"

#include <libmnl/libmnl.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <cerrno>
#include <cstring>
#include <arpa/inet.h>
#include <unistd.h>

#include "syncd/kernel.hpp"
#include "syncd/netlink.hpp"
#include "table/format.hpp"
#include "table/helpers.hpp"

namespace ctsync::syncd {
namespace {

namespace asio = boost::asio;
using netlink::errnoText;
using netlink::family;
using netlink::MnlPtr;
using netlink::NfctPtr;
using netlink::NfexpPtr;
using table::Tuple;

constexpr size_t kRecvBufferBytes = 256 * 1024;
constexpr size_t kMaxMessageBytes = 1024;
constexpr size_t kMessagesPerSend = 256;
constexpr size_t kMaxErrorLines = 8;

std::optional<Tuple> tupleAttr(const nf_expect* exp, nf_expect_attr attr) {
  const auto* ct = static_cast<const nf_conntrack*>(nfexp_get_attr(exp, attr));
  if (ct == nullptr) return std::nullopt;
  return origTupleFromKernel(ct);
}

// One tuple as libnetfilter_conntrack wants it for ATTR_EXP_MASTER/EXPECTED/MASK/NAT_TUPLE: a
// conntrack object with the original tuple set (the expectation copies it).
void setTupleAttr(nf_expect* exp, nf_expect_attr attr, const Tuple& t) {
  NfctPtr ct(nfct_new());
  keyToKernel(replication::FlowKey{t, 0}, ct.get());
  nfexp_set_attr(exp, attr, ct.get());
}

void putExpectKey(nf_expect* exp, const ExpectKey& key) {
  setTupleAttr(exp, ATTR_EXP_EXPECTED, key.expected);
  nfexp_set_attr_u16(exp, ATTR_EXP_ZONE, key.zone);
}

bool helperWanted(const conf::KernelSettings& s, uint8_t helper) {
  return s.expectHelpers.empty() ||
         std::find(s.expectHelpers.begin(), s.expectHelpers.end(), helper) !=
             s.expectHelpers.end();
}

int joinGroups(mnl_socket* nl, bool on) {
  for (int group : {NFNLGRP_CONNTRACK_EXP_NEW, NFNLGRP_CONNTRACK_EXP_DESTROY}) {
    if (mnl_socket_setsockopt(nl, on ? NETLINK_ADD_MEMBERSHIP : NETLINK_DROP_MEMBERSHIP, &group,
                              sizeof group) < 0) {
      return errno;
    }
  }
  return 0;
}

// libnetfilter_conntrack 1.0.9 builds and parses neither CTA_EXPECT_CLASS, CTA_EXPECT_NAT nor
// CTA_EXPECT_FN in its libmnl path: these two do it on the message.
void appendExtras(nlmsghdr* nlh, const ExpectRecord& e) {
  if (e.cls != 0) mnl_attr_put_u32(nlh, CTA_EXPECT_CLASS, htonl(e.cls));
  if (const std::string_view fn = table::expectFnName(e.fn); !fn.empty()) {
    mnl_attr_put_strz(nlh, CTA_EXPECT_FN, fn.data());
  }
  if (!e.natTuple) return;
  const Tuple& t = *e.natTuple;
  nlattr* nat = mnl_attr_nest_start(nlh, CTA_EXPECT_NAT);
  mnl_attr_put_u32(nlh, CTA_EXPECT_NAT_DIR, htonl(e.natDir));
  nlattr* tuple = mnl_attr_nest_start(nlh, CTA_EXPECT_NAT_TUPLE);
  nlattr* ip = mnl_attr_nest_start(nlh, CTA_TUPLE_IP);
  // A whole tuple, as the kernel parses every tuple (both addresses and ports); only the source
  // is used: saved address and port.
  if (t.l3 == table::L3::kIpv4) {
    mnl_attr_put(nlh, CTA_IP_V4_SRC, 4, t.src.bytes.data());
    mnl_attr_put(nlh, CTA_IP_V4_DST, 4, t.dst.bytes.data());
  } else {
    mnl_attr_put(nlh, CTA_IP_V6_SRC, 16, t.src.bytes.data());
    mnl_attr_put(nlh, CTA_IP_V6_DST, 16, t.dst.bytes.data());
  }
  mnl_attr_nest_end(nlh, ip);
  nlattr* pr = mnl_attr_nest_start(nlh, CTA_TUPLE_PROTO);
  mnl_attr_put_u8(nlh, CTA_PROTO_NUM, t.l4);
  mnl_attr_put_u16(nlh, CTA_PROTO_SRC_PORT, htons(t.sport));
  mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, htons(t.dport));
  mnl_attr_nest_end(nlh, pr);
  mnl_attr_nest_end(nlh, tuple);
  mnl_attr_nest_end(nlh, nat);
}

// The nested attribute of `type` directly inside `nest`, or null.
// Calls f(attr) for each attribute in [first, first + len).
template <typename F>
void forEachAttr(const void* first, size_t len, F&& f) {
  const auto* p = static_cast<const char*>(first);
  const char* end = p + len;
  while (p < end) {
    const auto* a = reinterpret_cast<const nlattr*>(p);
    if (!mnl_attr_ok(a, static_cast<int>(end - p))) return;
    f(a);
    p += MNL_ALIGN(a->nla_len);
  }
}

const nlattr* child(const nlattr* nest, uint16_t type) {
  const nlattr* found = nullptr;
  forEachAttr(mnl_attr_get_payload(nest), mnl_attr_get_payload_len(nest), [&](const nlattr* a) {
    if (mnl_attr_get_type(a) == type) found = a;
  });
  return found;
}

void readExtras(const nlmsghdr* m, ExpectRecord& e) {
  const auto* first = static_cast<const char*>(mnl_nlmsg_get_payload_offset(m, sizeof(nfgenmsg)));
  const size_t len = static_cast<size_t>(reinterpret_cast<const char*>(m) + m->nlmsg_len - first);
  forEachAttr(first, len, [&](const nlattr* a) {
    switch (mnl_attr_get_type(a)) {
      case CTA_EXPECT_CLASS:
        if (mnl_attr_get_payload_len(a) >= 4) e.cls = ntohl(mnl_attr_get_u32(a));
        break;
      case CTA_EXPECT_FN: {
        const auto* p = static_cast<const char*>(mnl_attr_get_payload(a));
        const std::string_view name(p, strnlen(p, mnl_attr_get_payload_len(a)));
        e.fn = table::expectFnCode(name).value_or(0);
        break;
      }
      case CTA_EXPECT_NAT: {
        if (const nlattr* dir = child(a, CTA_EXPECT_NAT_DIR);
            dir != nullptr && mnl_attr_get_payload_len(dir) >= 4) {
          e.natDir = static_cast<uint8_t>(ntohl(mnl_attr_get_u32(dir)));
        }
        const nlattr* tuple = child(a, CTA_EXPECT_NAT_TUPLE);
        if (tuple == nullptr) break;
        Tuple t;
        t.l3 = e.key.expected.l3;
        t.l4 = e.key.expected.l4;
        if (const nlattr* ip = child(tuple, CTA_TUPLE_IP)) {
          const bool v4 = t.l3 == table::L3::kIpv4;
          if (const nlattr* src = child(ip, v4 ? CTA_IP_V4_SRC : CTA_IP_V6_SRC);
              src != nullptr && mnl_attr_get_payload_len(src) >= (v4 ? 4u : 16u)) {
            std::memcpy(t.src.bytes.data(), mnl_attr_get_payload(src), v4 ? 4 : 16);
          }
          if (const nlattr* dst = child(ip, v4 ? CTA_IP_V4_DST : CTA_IP_V6_DST);
              dst != nullptr && mnl_attr_get_payload_len(dst) >= (v4 ? 4u : 16u)) {
            std::memcpy(t.dst.bytes.data(), mnl_attr_get_payload(dst), v4 ? 4 : 16);
          }
        }
        if (const nlattr* pr = child(tuple, CTA_TUPLE_PROTO)) {
          if (const nlattr* port = child(pr, CTA_PROTO_SRC_PORT);
              port != nullptr && mnl_attr_get_payload_len(port) >= 2) {
            t.sport = ntohs(mnl_attr_get_u16(port));
          }
          if (const nlattr* port = child(pr, CTA_PROTO_DST_PORT);
              port != nullptr && mnl_attr_get_payload_len(port) >= 2) {
            t.dport = ntohs(mnl_attr_get_u16(port));
          }
        }
        e.natTuple = t;
        break;
      }
      default:
        break;
    }
  });
}

}  // namespace

// ---- conversion -------------------------------------------------------------------------------

std::optional<ExpectRecord> expectFromKernel(const nf_expect* exp) {
  const std::optional<Tuple> master = tupleAttr(exp, ATTR_EXP_MASTER);
  const std::optional<Tuple> expected = tupleAttr(exp, ATTR_EXP_EXPECTED);
  const std::optional<Tuple> mask = tupleAttr(exp, ATTR_EXP_MASK);
  if (!master || !expected || !mask) return std::nullopt;
  ExpectRecord e;
  e.key.expected = *expected;
  e.mask = *mask;
  e.mask.l3 = expected->l3;  // the mask's own numbers are the expected tuple's
  e.mask.l4 = expected->l4;
  e.master = *master;
  if (nfexp_attr_is_set(exp, ATTR_EXP_ZONE)) e.key.zone = nfexp_get_attr_u16(exp, ATTR_EXP_ZONE);
  if (nfexp_attr_is_set(exp, ATTR_EXP_TIMEOUT)) {
    e.timeoutSec = nfexp_get_attr_u32(exp, ATTR_EXP_TIMEOUT);
  }
  if (nfexp_attr_is_set(exp, ATTR_EXP_FLAGS)) e.flags = nfexp_get_attr_u32(exp, ATTR_EXP_FLAGS);
  if (nfexp_attr_is_set(exp, ATTR_EXP_CLASS)) e.cls = nfexp_get_attr_u32(exp, ATTR_EXP_CLASS);
  if (const auto* name = static_cast<const char*>(nfexp_get_attr(exp, ATTR_EXP_HELPER_NAME))) {
    const std::optional<uint8_t> code = table::helperCode(name);
    if (!code) return std::nullopt;  // a userspace helper's: nothing could recreate it
    e.helper = *code;
  }
  return e;
}

std::optional<ExpectRecord> expectFromKernel(const nf_expect* exp, const nlmsghdr* msg) {
  std::optional<ExpectRecord> e = expectFromKernel(exp);
  // An unknown function name reads as none: the flow then still opens RELATED, only without
  // the NAT setup the function would have made.
  if (e) readExtras(msg, *e);
  return e;
}

void expectToKernel(const ExpectRecord& e, uint32_t timeoutSec, nf_expect* exp) {
  setTupleAttr(exp, ATTR_EXP_MASTER, e.master);
  putExpectKey(exp, e.key);
  setTupleAttr(exp, ATTR_EXP_MASK, e.mask);
  nfexp_set_attr_u32(exp, ATTR_EXP_TIMEOUT, std::max<uint32_t>(timeoutSec, 1));
  // USERSPACE marks expectations a userspace helper made; the kernel clears it on create.
  nfexp_set_attr_u32(exp, ATTR_EXP_FLAGS, e.flags & ~replication::expectflag::kUserspace);
  if (const std::string_view h = table::helperName(e.helper); !h.empty()) {
    nfexp_set_attr(exp, ATTR_EXP_HELPER_NAME, h.data());  // the list's names end in NUL
  }
}

void expectToKernel(const ExpectRecord& e, uint32_t timeoutSec, nf_expect* exp, nlmsghdr* nlh) {
  expectToKernel(e, timeoutSec, exp);
  nfexp_nlmsg_build(nlh, exp);
  appendExtras(nlh, e);
}

std::string describeExpect(const ExpectKey& key) {
  return describeFlow(replication::FlowKey{key.expected, key.zone});
}

// ---- source -----------------------------------------------------------------------------------

struct KernelExpectSource::Impl {
  Impl(asio::io_context& context, const conf::KernelSettings& s, Callbacks c, MnlPtr ev,
       MnlPtr dumps, int waitFd)
      : settings(s),
        cb(std::move(c)),
        events(std::move(ev)),
        dumpSock(std::move(dumps)),
        waiter(context, waitFd),
        buf(kRecvBufferBytes) {}

  ~Impl() {
    alive.reset();
    boost::system::error_code ec;
    waiter.close(ec);
  }

  // A dump on its own socket, read to the end before returning: the kernel holds at most
  // nf_conntrack_expect_max expectations (a few thousand), a few milliseconds of messages.
  void dump() {
    ++counters.dumps;
    std::array<char, 64> msg{};
    const uint32_t s = ++seq;
    nlmsghdr* nlh = netlink::putHeader(msg.data(), NFNL_SUBSYS_CTNETLINK_EXP, IPCTNL_MSG_EXP_GET,
                                       NLM_F_DUMP, s, AF_UNSPEC);
    if (mnl_socket_sendto(dumpSock.get(), nlh, nlh->nlmsg_len) < 0) return;
    std::vector<ExpectRecord> found;
    for (;;) {
      const ssize_t n = mnl_socket_recvfrom(dumpSock.get(), buf.data(), buf.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return;  // a dump cut short cannot say what is gone: no dumpEnd
      }
      int len = static_cast<int>(n);
      bool done = false;
      for (auto* m = reinterpret_cast<const nlmsghdr*>(buf.data()); mnl_nlmsg_ok(m, len);
           m = mnl_nlmsg_next(m, &len)) {
        if (m->nlmsg_seq != s) continue;
        if (m->nlmsg_type == NLMSG_DONE) {
          done = true;
          break;
        }
        if (m->nlmsg_type == NLMSG_ERROR) {
          const auto* e = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(m));
          if (e->error != 0) return;
          done = true;
          break;
        }
        ++counters.dumped;
        if (auto r = parse(m)) found.push_back(std::move(*r));
      }
      if (done) break;
    }
    if (cb.dumpBegin) cb.dumpBegin();
    for (const ExpectRecord& r : found) {
      if (!running) return;
      if (cb.upsert) cb.upsert(r);
    }
    if (running && cb.dumpEnd) cb.dumpEnd();
  }

  // The record of one expectation message, if it is carried.
  std::optional<ExpectRecord> parse(const nlmsghdr* m) {
    NfexpPtr exp(nfexp_new());
    if (!exp || nfexp_nlmsg_parse(m, exp.get()) < 0) {
      ++counters.unparsable;
      return std::nullopt;
    }
    std::optional<ExpectRecord> r = expectFromKernel(exp.get(), m);
    if (!r) {
      ++counters.unparsable;
      return std::nullopt;
    }
    if (!helperWanted(settings, r->helper)) {
      ++counters.filtered;
      return std::nullopt;
    }
    return r;
  }

  void armWait() {
    if (waiting || !running) return;
    waiting = true;
    waiter.async_wait(asio::posix::stream_descriptor::wait_read,
                      [this, token = std::weak_ptr<int>(alive)](const boost::system::error_code& ec) {
                        if (token.expired()) return;
                        waiting = false;
                        if (ec) return;
                        onReadable();
                      });
  }

  void onReadable() {
    const int fd = mnl_socket_get_fd(events.get());
    bool overrun = false;
    for (size_t reads = 0; reads < 1024 && running; ++reads) {
      const ssize_t n = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == ENOBUFS) {
          overrun = true;
          continue;
        }
        break;  // EAGAIN: all read
      }
      int len = static_cast<int>(n);
      for (auto* m = reinterpret_cast<const nlmsghdr*>(buf.data());
           mnl_nlmsg_ok(m, len) && running; m = mnl_nlmsg_next(m, &len)) {
        handleEvent(m);
      }
    }
    if (overrun && running) {
      // Events were lost: only a dump can tell what the kernel holds now.
      ++counters.overruns;
      dump();
    }
    armWait();
  }

  void handleEvent(const nlmsghdr* m) {
    if ((m->nlmsg_type >> 8) != NFNL_SUBSYS_CTNETLINK_EXP) return;
    const int type = m->nlmsg_type & 0xff;
    if (type == IPCTNL_MSG_EXP_NEW) {
      ++counters.newEvents;
      if (auto r = parse(m); r && cb.upsert) cb.upsert(*r);
    } else if (type == IPCTNL_MSG_EXP_DELETE) {
      ++counters.destroyEvents;
      if (auto r = parse(m); r && cb.remove) cb.remove(r->key);
    }
  }

  conf::KernelSettings settings;
  Callbacks cb;
  MnlPtr events;
  MnlPtr dumpSock;
  asio::posix::stream_descriptor waiter;
  std::vector<char> buf;
  uint32_t seq = static_cast<uint32_t>(::time(nullptr));
  bool running = false;
  bool waiting = false;
  std::shared_ptr<int> alive = std::make_shared<int>(0);
  KernelExpectCounters counters;
};

std::variant<std::unique_ptr<KernelExpectSource>, std::string> KernelExpectSource::open(
    asio::io_context& io, const conf::KernelSettings& settings, Callbacks callbacks) {
  auto ev = netlink::open(0, "kernel expectation events");
  if (auto* e = std::get_if<std::string>(&ev)) return *e;
  auto dumps = netlink::open(0, "kernel expectation dumps");
  if (auto* e = std::get_if<std::string>(&dumps)) return *e;
  MnlPtr evSock = std::move(std::get<MnlPtr>(ev));
  const int fd = mnl_socket_get_fd(evSock.get());
  netlink::setBuffer(fd, SO_RCVBUFFORCE, SO_RCVBUF, 4u << 20);
  const int waitFd = ::dup(fd);
  if (waitFd < 0) return "kernel expectation events: dup: " + errnoText(errno);
  auto impl = std::make_unique<Impl>(io, settings, std::move(callbacks), std::move(evSock),
                                     std::move(std::get<MnlPtr>(dumps)), waitFd);
  return std::unique_ptr<KernelExpectSource>(new KernelExpectSource(std::move(impl)));
}

KernelExpectSource::KernelExpectSource(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KernelExpectSource::~KernelExpectSource() = default;

void KernelExpectSource::start() {
  if (impl_->running) return;
  joinGroups(impl_->events.get(), true);  // before the dump: nothing falls between the two
  impl_->running = true;
  impl_->dump();
  impl_->armWait();
}

void KernelExpectSource::stop() {
  if (!impl_->running) return;
  impl_->running = false;
  joinGroups(impl_->events.get(), false);
}

bool KernelExpectSource::running() const {
  return impl_->running;
}

void KernelExpectSource::resync() {
  if (impl_->running) impl_->dump();
}

const KernelExpectCounters& KernelExpectSource::counters() const {
  return impl_->counters;
}

// ---- sink -------------------------------------------------------------------------------------

struct KernelExpectSink::Impl {
  explicit Impl(MnlPtr s) : nl(std::move(s)), buf(kRecvBufferBytes) {}

  struct Sent {
    uint32_t seq;
    size_t index;  // into the operation list
  };
  struct Op {
    ExpectKey key;
    bool isDelete;
    int error = 0;
  };

  // Sends the messages in `batch` (each with NLM_F_ACK) and reads every answer.
  void flush(std::vector<char>& out, std::vector<Sent>& sent, std::vector<Op>& ops) {
    if (sent.empty()) return;
    if (mnl_socket_sendto(nl.get(), out.data(), out.size()) < 0) {
      for (const Sent& s : sent) ops[s.index].error = errno;
    } else {
      size_t answered = 0;
      while (answered < sent.size()) {
        const ssize_t n = mnl_socket_recvfrom(nl.get(), buf.data(), buf.size());
        if (n < 0) {
          if (errno == EINTR) continue;
          for (const Sent& s : sent) {
            if (ops[s.index].error == 0) ops[s.index].error = errno;
          }
          break;
        }
        int len = static_cast<int>(n);
        for (auto* m = reinterpret_cast<const nlmsghdr*>(buf.data()); mnl_nlmsg_ok(m, len);
             m = mnl_nlmsg_next(m, &len)) {
          if (m->nlmsg_type != NLMSG_ERROR) continue;
          const auto* e = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(m));
          const auto it = std::find_if(sent.begin(), sent.end(),
                                       [&](const Sent& s) { return s.seq == m->nlmsg_seq; });
          if (it == sent.end()) continue;  // a late answer to an earlier batch
          if (e->error != 0 && ops[it->index].error == 0) ops[it->index].error = -e->error;
          ++answered;
        }
      }
    }
    out.clear();
    sent.clear();
  }

  void add(std::vector<char>& out, std::vector<Sent>& sent, std::vector<Op>& ops, size_t index,
           uint8_t type, uint16_t flags, const nf_expect* exp, uint8_t fam,
           const ExpectRecord* record = nullptr) {
    const size_t at = out.size();
    out.resize(at + kMaxMessageBytes);
    const uint32_t s = ++seq;
    nlmsghdr* nlh =
        netlink::putHeader(out.data() + at, NFNL_SUBSYS_CTNETLINK_EXP, type, NLM_F_ACK | flags, s,
                           fam);
    nfexp_nlmsg_build(nlh, exp);
    if (record != nullptr) appendExtras(nlh, *record);
    out.resize(at + NLMSG_ALIGN(nlh->nlmsg_len));
    sent.push_back({s, index});
    if (sent.size() >= kMessagesPerSend) flush(out, sent, ops);
  }

  MnlPtr nl;
  std::vector<char> buf;
  uint32_t seq = static_cast<uint32_t>(::time(nullptr)) ^ 0x5a5a5a5au;
  KernelExpectSinkCounters counters;
};

std::variant<std::unique_ptr<KernelExpectSink>, std::string> KernelExpectSink::open(
    const conf::KernelSettings& settings) {
  auto nl = netlink::open(0, "kernel expectation sink");
  if (auto* e = std::get_if<std::string>(&nl)) return *e;
  MnlPtr s = std::move(std::get<MnlPtr>(nl));
  const int fd = mnl_socket_get_fd(s.get());
  netlink::setBuffer(fd, SO_SNDBUFFORCE, SO_SNDBUF, settings.netlinkSndbufBytes);
  netlink::setBuffer(fd, SO_RCVBUFFORCE, SO_RCVBUF, 4u << 20);
  return std::unique_ptr<KernelExpectSink>(
      new KernelExpectSink(std::make_unique<Impl>(std::move(s))));
}

KernelExpectSink::KernelExpectSink(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KernelExpectSink::~KernelExpectSink() = default;

ExpectCommitResult KernelExpectSink::commit(std::span<const ExpectRecord> upserts,
                                            std::span<const ExpectKey> deletes) {
  Impl& d = *impl_;
  ++d.counters.commits;
  std::vector<Impl::Op> ops;
  ops.reserve(deletes.size() + upserts.size());
  std::vector<char> out;
  std::vector<Impl::Sent> sent;
  for (const ExpectKey& k : deletes) {
    ops.push_back({k, true});
    NfexpPtr exp(nfexp_new());
    putExpectKey(exp.get(), k);
    d.add(out, sent, ops, ops.size() - 1, IPCTNL_MSG_EXP_DELETE, 0, exp.get(),
          static_cast<uint8_t>(family(k.expected.l3)));
  }
  d.flush(out, sent, ops);
  for (const ExpectRecord& e : upserts) {
    ops.push_back({e.key, false});
    NfexpPtr exp(nfexp_new());
    expectToKernel(e, e.timeoutSec, exp.get());
    const auto fam = static_cast<uint8_t>(family(e.key.expected.l3));
    // Create (or find it there), then set the timer: a create starts it at the helper's
    // policy timeout whatever the message says.
    d.add(out, sent, ops, ops.size() - 1, IPCTNL_MSG_EXP_NEW, NLM_F_CREATE, exp.get(), fam, &e);
    // (The same message without NLM_F_CREATE: a NEW needs tuple, mask and master either way.)
    d.add(out, sent, ops, ops.size() - 1, IPCTNL_MSG_EXP_NEW, 0, exp.get(), fam, &e);
  }
  d.flush(out, sent, ops);

  ExpectCommitResult r;
  for (const Impl::Op& op : ops) {
    if (op.isDelete) {
      if (op.error == 0) {
        ++r.deleted;
      } else if (op.error == ENOENT) {
        ++r.absent;
      } else {
        ++r.failed;
      }
    } else if (op.error == 0) {
      ++r.created;
    } else {
      ++r.failed;
      if (op.error == ENOENT) ++r.noMaster;
    }
    if (op.error != 0 && !(op.isDelete && op.error == ENOENT) &&
        r.errors.size() < kMaxErrorLines) {
      r.errors.push_back(describeExpect(op.key) + ": " + errnoText(op.error));
    }
  }
  d.counters.created += r.created;
  d.counters.deleted += r.deleted;
  d.counters.failed += r.failed;
  return r;
}

const KernelExpectSinkCounters& KernelExpectSink::counters() const {
  return impl_->counters;
}

}  // namespace ctsync::syncd
