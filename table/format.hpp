#pragma once
// Text forms of entries and events: exactly as conntrack-tools 1.4.7 prints them with
// `-o extended` (so tools and eyes that read `conntrack -L` / `conntrack -E` read ours), and a
// JSON form for programs.
#include <cstdint>
#include <string>

#include "table/conn_table.hpp"

namespace ctsync::table {

struct FormatOptions {
  bool counters = false;  // packets=/bytes= (the kernel prints them with nf_conntrack_acct=1)
};

// One `conntrack -L -o extended` line (no newline): remaining timeout at `now`, rounded down.
std::string formatEntry(const ConnTable& table, uint32_t index, Nanos now,
                        const FormatOptions& options = {});

// One `conntrack -E -o extended` line (no newline), with the fields the kernel puts in an event
// of this type and mask: NEW carries everything, UPDATE the state only when it changed,
// DESTROY no state-dependent timeout. kRefresh is shown as "[REFRESH]" (ours, not the kernel's).
std::string formatEvent(EventType type, uint32_t mask, const ConnTable& table, uint32_t index,
                        Nanos now, const FormatOptions& options = {});

// A JSON object (one line) describing the entry; `event` adds "event":"new" etc.
std::string formatEntryJson(const ConnTable& table, uint32_t index, Nanos now,
                            const char* event = nullptr);

// A tuple as conntrack prints it ("src=A dst=B sport=P dport=Q ", trailing space) and as JSON
// ({"src":..,"dst":..,"sport":..,"dport":..}); for the daemon's replica listings.
void appendTupleText(std::string& out, const Tuple& t);
void appendTupleJson(std::string& out, const Tuple& t);

const char* eventTypeName(EventType type);  // "NEW", "UPDATE", "DESTROY", "REFRESH"
const char* l4ProtoName(uint8_t l4);        // "tcp", ... "unknown" as conntrack-tools names them

}  // namespace ctsync::table
