#include "syncd/replay.hpp"

#include <algorithm>
#include <new>
#include <optional>
#include <ostream>
#include <vector>

#include "conf/config.hpp"
#include "syncd/pcap_reader.hpp"
#include "syncd/pcap_writer.hpp"
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

// What masquerade and redirect find on the replay's two interfaces: the first address of the
// family listed for it.
class ReplayAddresses : public table::InterfaceAddresses {
 public:
  explicit ReplayAddresses(const conf::ReplaySettings& r) : r_(r) {}
  std::optional<table::Addr> addressOf(std::string_view iface, table::L3 l3) const override {
    const std::vector<table::IpAddress>* list = nullptr;
    if (iface == r_.outInterface) {
      list = &r_.outAddresses;
    } else if (iface == r_.inInterface) {
      list = &r_.inAddresses;
    } else {
      return std::nullopt;
    }
    for (const table::IpAddress& a : *list) {
      if (a.l3 == l3) return a.addr;
    }
    return std::nullopt;
  }

 private:
  const conf::ReplaySettings& r_;
};

// A capture has no interfaces: a packet from an inside address arrives on the inside
// interface and leaves on the outside one, any other the other way.
table::PacketContext placement(const conf::ReplaySettings& r, const uint8_t* ip, size_t len) {
  table::PacketContext ctx{r.outInterface, r.inInterface, 0};
  if (len < 1) return ctx;
  table::L3 l3;
  table::Addr src;
  if ((ip[0] >> 4) == 4 && len >= 20) {
    l3 = table::L3::kIpv4;
    src = table::Addr::fromBytes(ip + 12, 4);
  } else if ((ip[0] >> 4) == 6 && len >= 40) {
    l3 = table::L3::kIpv6;
    src = table::Addr::fromBytes(ip + 8, 16);
  } else {
    return ctx;
  }
  for (const table::Prefix& p : r.inside) {
    if (p.contains(l3, src)) return table::PacketContext{r.inInterface, r.outInterface, 0};
  }
  return ctx;
}

// The datagram's length as its header says (what a router sends: link padding is not part of
// it).
size_t ipLength(const uint8_t* ip, size_t len) {
  size_t n = len;
  if ((ip[0] >> 4) == 4 && len >= 20) n = (size_t{ip[2]} << 8) | ip[3];
  if ((ip[0] >> 4) == 6 && len >= 40) n = 40 + ((size_t{ip[4]} << 8) | ip[5]);
  return std::min(n, len);
}

// After NAT, a datagram for one of the firewall's own addresses (a redirect's target, say) is
// delivered to the firewall itself, not forwarded.
bool forLocalDelivery(const conf::ReplaySettings& r, const uint8_t* ip, size_t len) {
  table::IpAddress dst;
  if ((ip[0] >> 4) == 4 && len >= 20) {
    dst = {table::L3::kIpv4, table::Addr::fromBytes(ip + 16, 4)};
  } else if ((ip[0] >> 4) == 6 && len >= 40) {
    dst = {table::L3::kIpv6, table::Addr::fromBytes(ip + 24, 16)};
  } else {
    return false;
  }
  return std::find(r.inAddresses.begin(), r.inAddresses.end(), dst) != r.inAddresses.end() ||
         std::find(r.outAddresses.begin(), r.outAddresses.end(), dst) != r.outAddresses.end();
}

bool natDrop(table::InvalidReason r) {
  return r == table::InvalidReason::kNatExhausted || r == table::InvalidReason::kNatNoAddress ||
         r == table::InvalidReason::kNatIcmpRedirect;
}
bool l3Invalid(table::InvalidReason r) {
  return r == table::InvalidReason::kBadIpVersion || r == table::InvalidReason::kBadIpHeader ||
         r == table::InvalidReason::kBadIpChecksum;
}

}  // namespace

bool forwardHop(uint8_t* ip) {
  if ((ip[0] >> 4) == 4) {
    if (ip[8] <= 1) return false;
    --ip[8];
    // The kernel adds htons(0x0100) to the checksum as a little-endian word, with the carry
    // folded back in; done here in the same byte order it is done there.
    uint32_t check = uint32_t{ip[10]} | (uint32_t{ip[11]} << 8);
    check += 0x0001;
    check += check >= 0xffff ? 1 : 0;
    ip[10] = static_cast<uint8_t>(check);
    ip[11] = static_cast<uint8_t>(check >> 8);
    return true;
  }
  if (ip[7] <= 1) return false;
  --ip[7];
  return true;
}

int runReplay(const ReplayOptions& options, std::ostream& out, std::ostream& err) {
  conf::Config config;
  if (options.configPath) {
    auto loaded = conf::loadConfig(*options.configPath);
    if (!loaded.ok()) {
      err << "ctsyncd: " << loaded.error().message << '\n';
      return 2;
    }
    config = std::move(loaded).value();
  }
  const table::TrackerSettings& settings = config.tracker;
  const conf::ReplaySettings& placing = config.replay;
  auto opened = PcapReader::open(options.pcapPath);
  if (auto* e = std::get_if<OpenError>(&opened)) {
    err << "ctsyncd: cannot read capture " << e->message << '\n';
    return 2;
  }
  PcapReader& reader = std::get<PcapReader>(opened);
  std::optional<PcapWriter> writer;
  if (options.writePath) {
    auto created = PcapWriter::create(*options.writePath);
    if (auto* e = std::get_if<std::string>(&created)) {
      err << "ctsyncd: cannot write " << *e << '\n';
      return 2;
    }
    writer.emplace(std::move(std::get<PcapWriter>(created)));
  }

  table::FormatOptions fmt;
  fmt.counters = options.counters;
  // A fixed seed keeps runs reproducible (eviction picks victims by hash position).
  ReplayAddresses addresses(placing);
  std::optional<table::Tracker> made;
  try {
    made.emplace(settings, 0x6374737973796e63ull, &addresses);
  } catch (const std::bad_alloc&) {
    err << "ctsyncd: cannot reserve memory for a table of " << settings.table.maxEntries
        << " entries; lower [tracker] max (or buckets)\n";
    return 2;
  }
  table::Tracker& tracker = *made;
  PrintingSink sink(out, options.json, fmt);
  if (options.events) tracker.setEventSink(&sink);

  table::Nanos last = 0;
  uint64_t frames = 0, natDropped = 0, natDroppedNew = 0, ttlExpired = 0, local = 0;
  std::vector<uint8_t> packet;
  while (auto frame = reader.next()) {
    ++frames;
    last = std::max(last, frame->time);
    packet.assign(frame->ip, frame->ip + frame->len);
    const table::PacketContext ctx = placement(placing, packet.data(), packet.size());
    const table::Verdict v = tracker.process(packet.data(), packet.size(), frame->time, ctx);
    if (v.state == table::CtState::kInvalid && natDrop(v.reason)) {
      ++natDropped;
      // The kernel drops a flow NAT cannot map only at confirmation, after its forward chain
      // saw the packet as new.
      if (v.reason != table::InvalidReason::kNatIcmpRedirect) ++natDroppedNew;
    }
    if (!writer || v.state == table::CtState::kHeld) continue;
    if (v.state == table::CtState::kInvalid &&
        (natDrop(v.reason) || l3Invalid(v.reason) || placing.dropInvalid)) {
      continue;
    }
    uint8_t* sent = v.datagram.empty() ? packet.data() : v.datagram.data();
    const size_t len =
        v.datagram.empty() ? ipLength(packet.data(), packet.size()) : v.datagram.size();
    if (forLocalDelivery(placing, sent, len)) {
      ++local;
      continue;
    }
    if (len < 20 || !forwardHop(sent)) {
      ++ttlExpired;
      continue;
    }
    writer->write(sent, len, frame->time);
  }
  if (!reader.error().empty()) {
    err << "ctsyncd: " << options.pcapPath << ": " << reader.error() << '\n';
    return 2;
  }
  tracker.advance(last);
  if (writer) {
    if (const std::string e = writer->close(); !e.empty()) {
      err << "ctsyncd: cannot write " << e << '\n';
      return 2;
    }
  }

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
    const auto& nc = tracker.natCounters();
    if (!settings.nat.rules.empty()) {
      err << "nat: " << nc.srcMapped << " flows source-translated, " << nc.dstMapped
          << " destination-translated, " << nc.exhausted << " dropped exhausted, " << nc.noAddress
          << " dropped without an interface address, " << nc.searches << " port searches ("
          << nc.attempts << " tuples tried), " << nc.timeWaitReused << " closing entries reused\n";
    }
    if (writer) {
      err << "written: " << writer->written() << " packets to " << *options.writePath;
      if (ttlExpired != 0) err << " (" << ttlExpired << " left out: TTL or hop limit ran out)";
      if (local != 0) err << " (" << local << " delivered to the firewall itself, not sent on)";
      err << '\n';
    }
    // Packets per ct state, comparable with nft `ct state X counter` in a forwarding chain.
    // Datagrams the kernel's IP layer drops before conntrack never reach such a chain: they are
    // counted apart as invalid_l3.
    const auto byState = [&c](table::CtState s) { return c.byState[static_cast<size_t>(s)]; };
    uint64_t l3 = 0;
    for (auto r : {table::InvalidReason::kBadIpVersion, table::InvalidReason::kBadIpHeader,
                   table::InvalidReason::kBadIpChecksum}) {
      l3 += c.invalid[static_cast<size_t>(r)];
    }
    // Packets NAT dropped count as the state conntrack gave them (new) where the kernel's
    // forward chain sees them before NAT drops them, and apart as nat_dropped.
    err << "ctstate new=" << byState(table::CtState::kNew) + natDroppedNew
        << " established=" << byState(table::CtState::kEstablished)
        << " related=" << byState(table::CtState::kRelated)
        << " invalid=" << byState(table::CtState::kInvalid) - l3 - natDropped
        << " invalid_l3=" << l3 << " held=" << byState(table::CtState::kHeld)
        << " nat_dropped=" << natDropped << '\n';
  }
  return 0;
}

}  // namespace ctsync::syncd
