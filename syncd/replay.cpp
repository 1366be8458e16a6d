#include "syncd/replay.hpp"

#include <algorithm>
#include <new>
#include <optional>
#include <ostream>
#include <vector>

#include "conf/config.hpp"
#include "syncd/pcap_reader.hpp"
#include "table/format.hpp"
#include "table/tracker.hpp"

namespace ctsync::syncd {
namespace {

class PrintingSink : public table::EventSink {
 public:
  PrintingSink(std::ostream& out, bool json, const table::FormatOptions& fmt)
      : out_(out), json_(json), fmt_(fmt) {}

  void onEvent(table::EventType type, uint32_t mask, const table::ConnTable& t, uint32_t index,
               table::Nanos now) override {
    // REFRESH is ours, for replication; the kernel has no such event, so replay leaves it out
    // and its output stays comparable with `conntrack -E`.
    if (type == table::EventType::kRefresh) return;
    if (json_) {
      std::string name = table::eventTypeName(type);
      std::transform(name.begin(), name.end(), name.begin(), ::tolower);
      out_ << table::formatEntryJson(t, index, now, name.c_str()) << '\n';
    } else {
      out_ << table::formatEvent(type, mask, t, index, now, fmt_) << '\n';
    }
  }

 private:
  std::ostream& out_;
  bool json_;
  table::FormatOptions fmt_;
};

}  // namespace

int runReplay(const ReplayOptions& options, std::ostream& out, std::ostream& err) {
  table::TrackerSettings settings;
  if (options.configPath) {
    auto loaded = conf::loadConfig(*options.configPath);
    if (!loaded.ok()) {
      err << "ctsyncd: " << loaded.error().message << '\n';
      return 2;
    }
    settings = loaded.value().tracker;
  }
  auto opened = PcapReader::open(options.pcapPath);
  if (auto* e = std::get_if<OpenError>(&opened)) {
    err << "ctsyncd: cannot read capture " << e->message << '\n';
    return 2;
  }
  PcapReader& reader = std::get<PcapReader>(opened);

  table::FormatOptions fmt;
  fmt.counters = options.counters;
  // A fixed seed keeps runs reproducible (eviction picks victims by hash position).
  std::optional<table::Tracker> made;
  try {
    made.emplace(settings, 0x6374737973796e63ull);
  } catch (const std::bad_alloc&) {
    err << "ctsyncd: cannot reserve memory for a table of " << settings.table.maxEntries
        << " entries; lower [tracker] max (or buckets)\n";
    return 2;
  }
  table::Tracker& tracker = *made;
  PrintingSink sink(out, options.json, fmt);
  if (options.events) tracker.setEventSink(&sink);

  table::Nanos last = 0;
  uint64_t frames = 0;
  while (auto frame = reader.next()) {
    ++frames;
    last = std::max(last, frame->time);
    tracker.process(frame->ip, frame->len, frame->time);
  }
  if (!reader.error().empty()) {
    err << "ctsyncd: " << options.pcapPath << ": " << reader.error() << '\n';
    return 2;
  }
  tracker.advance(last);

  std::vector<uint32_t> entries;
  tracker.table().forEach([&entries](uint32_t idx) { entries.push_back(idx); });
  const auto& t = tracker.table();
  std::sort(entries.begin(), entries.end(), [&t](uint32_t a, uint32_t b) {
    return t.meta(a).start != t.meta(b).start ? t.meta(a).start < t.meta(b).start : a < b;
  });
  for (uint32_t idx : entries) {
    out << (options.json ? table::formatEntryJson(t, idx, last)
                         : table::formatEntry(t, idx, last, fmt))
        << '\n';
  }
  out.flush();  // the summary goes to `err`: keep it after the table on a shared terminal
  if (options.stats) {
    const auto& c = tracker.counters();
    err << "ctsyncd replay: " << frames << " IP packets, " << reader.skipped()
        << " non-IP frames skipped, " << c.created << " flows created, " << c.related
        << " related, " << c.invalidTotal << " invalid";
    for (size_t r = 1; r < c.invalid.size(); ++r) {
      if (c.invalid[r] != 0) {
        err << ' ' << table::invalidReasonName(static_cast<table::InvalidReason>(r)) << '='
            << c.invalid[r];
      }
    }
    err << ", " << t.size() << " entries at the end\n";
    // Packets per ct state, comparable with nft `ct state X counter` in a forwarding chain.
    // Datagrams the kernel's IP layer drops before conntrack never reach such a chain: they are
    // counted apart as invalid_l3.
    const auto byState = [&c](table::CtState s) { return c.byState[static_cast<size_t>(s)]; };
    uint64_t l3 = 0;
    for (auto r : {table::InvalidReason::kBadIpVersion, table::InvalidReason::kBadIpHeader,
                   table::InvalidReason::kBadIpChecksum}) {
      l3 += c.invalid[static_cast<size_t>(r)];
    }
    err << "ctstate new=" << byState(table::CtState::kNew)
        << " established=" << byState(table::CtState::kEstablished)
        << " related=" << byState(table::CtState::kRelated)
        << " invalid=" << byState(table::CtState::kInvalid) - l3 << " invalid_l3=" << l3
        << " held=" << byState(table::CtState::kHeld) << '\n';
  }
  return 0;
}

}  // namespace ctsync::syncd
