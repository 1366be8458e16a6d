#pragma once
// Replica and mirrored flows as text: `conntrack -L -o extended` / `conntrack -E -o extended`
// lines (what operators read and grep), and one JSON object per flow for programs.
#include <cstdint>
#include <string>

#include "replication/records.hpp"

namespace ctsync::syncd {

// One `conntrack -L -o extended` line, no newline. `remainingSec`: where conntrack prints the
// timeout. `event`: "NEW", "UPDATE", "DESTROY" for a `conntrack -E` line ("[NEW] ..."), or null.
std::string formatFlow(const replication::FlowRecord& r, uint32_t remainingSec,
                       const char* event = nullptr);
std::string formatFlowKey(const replication::FlowKey& key, const char* event);  // a DESTROY

// One JSON object, no newline: family, proto, timeout, state, orig, reply, flags, mark, zone,
// owner (node), generation, and "event" when given.
std::string formatFlowJson(const replication::FlowRecord& r, uint32_t remainingSec,
                           const char* event = nullptr);

// One `conntrack -L expect` line: timeout, proto, the expected tuple, its mask, the master's
// tuple, zone, flags, class, helper. `event` "NEW" or "DESTROY" for a `conntrack -E expect`
// line, or null.
std::string formatExpect(const replication::ExpectRecord& e, uint32_t remainingSec,
                         const char* event = nullptr);
// One JSON object: timeout, family, proto, expected, mask, master, zone, flags, class, helper,
// fn, nat (when set), owner.
std::string formatExpectJson(const replication::ExpectRecord& e, uint32_t remainingSec);

}  // namespace ctsync::syncd
