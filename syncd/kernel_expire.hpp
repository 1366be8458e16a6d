#pragma once
// What a demoted node does to the entries it mirrored (conntrackd -t): shorten their timeouts,
// so that entries for flows now forwarded elsewhere do not linger for days (an ESTABLISHED
// entry lives 5 days) and come back as flows at this node's next promotion. An entry still in
// use is pushed out again by its next packet; only stale ones expire.
#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>

#include "syncd/kernel.hpp"

namespace ctsync::syncd {

struct ExpireResult {
  size_t shortened = 0;  // entries whose timeout was lowered to `seconds`
  size_t skipped = 0;    // filtered out, or already expiring sooner
  size_t failed = 0;     // updates the kernel refused (gone meanwhile: not counted here)
};

// Dumps the kernel table of the calling thread's namespace and lowers the timeout of every
// entry the filter accepts to `seconds` (entries that expire sooner are left alone). Blocking:
// call it from a worker thread. Errors: the netlink sockets cannot be opened or the dump failed.
std::variant<ExpireResult, std::string> shortenKernelTimeouts(const KernelFilter& filter,
                                                              uint32_t seconds);

}  // namespace ctsync::syncd
