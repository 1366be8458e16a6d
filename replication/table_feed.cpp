#include "replication/table_feed.hpp"

#include "table/entry.hpp"
#include "table/tcp.hpp"

namespace ctsync::replication {

FlowRecord recordOf(const table::ConnTable& t, uint32_t index, Nanos now) {
  const table::Entry& e = t.entry(index);
  const table::EntryMeta& m = t.meta(index);
  FlowRecord r;
  r.key.orig = t.tuple(e, table::Dir::kOriginal);
  r.key.zone = e.zone;
  r.reply = t.tuple(e, table::Dir::kReply);
  r.status = e.status;
  if (e.l4 == table::proto::kTcp) {
    r.tcpState = static_cast<uint8_t>(e.tcp.state);
    for (int d = 0; d < 2; ++d) {
      r.tcpFlags[d] = e.tcp.seen[d].flags;
      r.tcpScale[d] = e.tcp.seen[d].scale;
    }
  }
  const Nanos left = e.expiry - now;
  r.timeoutSec =
      left <= 0 ? 0 : static_cast<uint32_t>((left + table::kSecond - 1) / table::kSecond);
  r.mark = m.mark;
  r.labels = t.labels(index);
  if (m.master != table::kNil) r.master = t.tuple(t.entry(m.master), table::Dir::kOriginal);
  return r;
}

void TableFeed::onEvent(table::EventType type, uint32_t, const table::ConnTable& table,
                        uint32_t index, Nanos now) {
  if (type == table::EventType::kDestroy) {
    const table::Entry& e = table.entry(index);
    engine_.remove(FlowKey{table.tuple(e, table::Dir::kOriginal), e.zone}, now);
    return;
  }
  engine_.upsert(recordOf(table, index, now), now);
}

}  // namespace ctsync::replication
