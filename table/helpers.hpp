#pragma once
// Conntrack helpers by name, as the kernel reports them (CTA_HELP_NAME, CTA_EXPECT_HELP_NAME),
// and the expectation functions ctnetlink names (CTA_EXPECT_FN), each as a small stable code:
// the codes go on the wire (replication/wire.capnp) and are only ever appended.
#include <cstdint>
#include <optional>
#include <string_view>

namespace ctsync::table {

// Every helper of Linux 6.x (net/netfilter/nf_conntrack_*.c): index = code, 0 = none.
inline constexpr std::string_view kHelperNames[] = {
    "",       "ftp",  "tftp",  "sip",       "RAS",   "Q.931",  "H.245",      "irc",
    "pptp",   "amanda", "sane", "snmp",     "snmp_trap", "netbios-ns",
};
inline constexpr uint8_t kHelperCount = sizeof(kHelperNames) / sizeof(kHelperNames[0]);

// The code of a helper name; empty for a name this list does not have (a userspace helper of
// nfnetlink_cthelper, which the caller counts).
constexpr std::optional<uint8_t> helperCode(std::string_view name) {
  for (uint8_t i = 1; i < kHelperCount; ++i) {
    if (kHelperNames[i] == name) return i;
  }
  return std::nullopt;
}
// The name of a code; "" for 0 and for codes of a newer peer this build does not know.
constexpr std::string_view helperName(uint8_t code) {
  return code < kHelperCount ? kHelperNames[code] : std::string_view{};
}

// Expectation functions (struct nf_ct_helper_expectfn names): what a RELATED flow gets set up
// with when its expectation matches, NAT mostly. Index = code, 0 = none.
inline constexpr std::string_view kExpectFnNames[] = {
    "", "nat-follow-master", "sip", "Q.931", "callforwarding",
};
inline constexpr uint8_t kExpectFnCount = sizeof(kExpectFnNames) / sizeof(kExpectFnNames[0]);

constexpr std::optional<uint8_t> expectFnCode(std::string_view name) {
  for (uint8_t i = 1; i < kExpectFnCount; ++i) {
    if (kExpectFnNames[i] == name) return i;
  }
  return std::nullopt;
}
constexpr std::string_view expectFnName(uint8_t code) {
  return code < kExpectFnCount ? kExpectFnNames[code] : std::string_view{};
}

}  // namespace ctsync::table
