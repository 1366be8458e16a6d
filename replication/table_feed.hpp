#pragma once
// The userspace tracker as a source of local flows: its table events become the engine's flow
// changes. NEW, UPDATE and REFRESH write the entry's whole current state (the send queue
// coalesces a burst of them into one record); DESTROY removes the flow.
#include <cstdint>

#include "replication/engine.hpp"
#include "replication/records.hpp"
#include "table/conn_table.hpp"

namespace ctsync::replication {

// The whole state of table entry `index` as a flow record (version left to the engine). The
// remaining timeout is rounded up to whole seconds, so a live entry never says 0.
FlowRecord recordOf(const table::ConnTable& table, uint32_t index, Nanos now);

// Forwards a tracker's events to an engine. Install with Tracker::setEventSink.
class TableFeed final : public table::EventSink {
 public:
  explicit TableFeed(Engine& engine) : engine_(engine) {}
  void onEvent(table::EventType type, uint32_t mask, const table::ConnTable& table, uint32_t index,
               Nanos now) override;

 private:
  Engine& engine_;
};

}  // namespace ctsync::replication
