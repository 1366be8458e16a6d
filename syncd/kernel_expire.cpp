#include "syncd/kernel_expire.hpp"

#include <libnetfilter_conntrack/libnetfilter_conntrack.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

namespace ctsync::syncd {
namespace {

struct HandleClose {
  void operator()(nfct_handle* h) const { nfct_close(h); }
};
struct CtDestroy {
  void operator()(nf_conntrack* ct) const { nfct_destroy(ct); }
};
using Handle = std::unique_ptr<nfct_handle, HandleClose>;
using Ct = std::unique_ptr<nf_conntrack, CtDestroy>;

struct DumpState {
  const KernelFilter* filter;
  uint32_t seconds;
  std::vector<Ct> targets;
  size_t skipped = 0;
};

int collect(enum nf_conntrack_msg_type, struct nf_conntrack* ct, void* data) {
  auto* st = static_cast<DumpState*>(data);
  const std::optional<FlowRecord> r = fromKernel(ct);
  const bool expiresLater =
      !nfct_attr_is_set(ct, ATTR_TIMEOUT) || nfct_get_attr_u32(ct, ATTR_TIMEOUT) > st->seconds;
  if (!r || !st->filter->accepts(*r) || !expiresLater) {
    ++st->skipped;
    return NFCT_CB_CONTINUE;
  }
  // The original tuple (and zone) names the entry; the timeout is all that changes.
  Ct update(nfct_new());
  if (!update) return NFCT_CB_CONTINUE;
  nfct_copy(update.get(), ct, NFCT_CP_ORIG);
  if (nfct_attr_is_set(ct, ATTR_ZONE)) nfct_copy_attr(update.get(), ct, ATTR_ZONE);
  nfct_set_attr_u32(update.get(), ATTR_TIMEOUT, st->seconds);
  st->targets.push_back(std::move(update));
  return NFCT_CB_CONTINUE;
}

}  // namespace

std::variant<ExpireResult, std::string> shortenKernelTimeouts(const KernelFilter& filter,
                                                              uint32_t seconds) {
  Handle dump(nfct_open(CONNTRACK, 0));
  Handle change(nfct_open(CONNTRACK, 0));
  if (!dump || !change) return std::string("netlink: ") + std::strerror(errno);
  DumpState st{&filter, seconds, {}, 0};
  nfct_callback_register(dump.get(), NFCT_T_ALL, collect, &st);
  uint32_t family = AF_UNSPEC;
  if (nfct_query(dump.get(), NFCT_Q_DUMP, &family) < 0) {
    return std::string("conntrack dump: ") + std::strerror(errno);
  }
  ExpireResult out;
  out.skipped = st.skipped;
  for (const Ct& ct : st.targets) {
    if (nfct_query(change.get(), NFCT_Q_UPDATE, ct.get()) == 0) {
      ++out.shortened;
    } else if (errno != ENOENT) {  // ended since the dump: nothing to do
      ++out.failed;
    }
  }
  return out;
}

}  // namespace ctsync::syncd
