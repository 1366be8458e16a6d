#include "replication/flat_map.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <utility>
#include <vector>

namespace ctsync::replication::flat {
namespace {

std::multiset<uint32_t> idsUnder(const FlatIndex& index, uint32_t hash) {
  std::multiset<uint32_t> ids;
  index.forEach(hash, [&](uint32_t id) { ids.insert(id); });
  return ids;
}

// ---- FlatIndex ----

TEST(FlatIndexTest, InsertFindErase) {
  FlatIndex index;
  EXPECT_EQ(index.find(7, [](uint32_t) { return true; }), FlatIndex::kNone);
  index.insert(7, 1);
  index.insert(7, 2);
  index.insert(9, 3);
  EXPECT_EQ(index.size(), 3u);
  EXPECT_EQ(index.find(7, [](uint32_t id) { return id == 2; }), 2u);
  EXPECT_EQ(index.find(9, [](uint32_t) { return true; }), 3u);
  EXPECT_EQ(index.find(9, [](uint32_t id) { return id == 1; }), FlatIndex::kNone);  // wrong hash
  EXPECT_EQ(idsUnder(index, 7), (std::multiset<uint32_t>{1, 2}));
  index.erase(7, 1);
  EXPECT_EQ(idsUnder(index, 7), (std::multiset<uint32_t>{2}));
  EXPECT_EQ(index.find(7, [](uint32_t id) { return id == 1; }), FlatIndex::kNone);
  index.erase(7, 2);
  index.erase(9, 3);
  EXPECT_EQ(index.size(), 0u);
  EXPECT_TRUE(idsUnder(index, 7).empty());
}

TEST(FlatIndexTest, CollidingRunsSurviveErasesInAnyOrder) {
  // Hashes that share their home slot, or land next to each other, form one long probe run that
  // wraps around the end of the table; erasing from its middle must keep every other id
  // reachable.
  const std::vector<uint32_t> hashes{15, 15 + 16, 15 + 32, 0, 14, 15 + 48, 1, 15};
  for (uint32_t seed = 0; seed < 50; ++seed) {
    FlatIndex index;  // 16 slots: 12 ids at most before it grows
    ASSERT_EQ(index.capacity(), 16u);
    std::vector<std::pair<uint32_t, uint32_t>> held;
    for (uint32_t id = 0; id < hashes.size(); ++id) {
      index.insert(hashes[id], id);
      held.emplace_back(hashes[id], id);
    }
    ASSERT_EQ(index.capacity(), 16u);
    std::shuffle(held.begin(), held.end(), std::mt19937(seed));
    while (!held.empty()) {
      index.erase(held.back().first, held.back().second);
      held.pop_back();
      for (const auto& [hash, id] : held) {
        const uint32_t want = id;
        ASSERT_EQ(index.find(hash, [&](uint32_t got) { return got == want; }), id)
            << "seed " << seed << " left " << held.size();
      }
    }
    EXPECT_EQ(index.size(), 0u);
  }
}

TEST(FlatIndexTest, GrowsKeepingEveryIdAndReserveAvoidsGrowing) {
  FlatIndex index;
  std::mt19937 rng(3);
  std::vector<uint32_t> hashes;
  for (uint32_t id = 0; id < 100'000; ++id) {
    hashes.push_back(rng());
    index.insert(hashes.back(), id);
  }
  EXPECT_GE(index.capacity() * 3, index.size() * 4);  // never more than 3/4 full
  for (uint32_t id = 0; id < hashes.size(); ++id) {
    ASSERT_EQ(index.find(hashes[id], [&](uint32_t got) { return got == id; }), id);
  }
  FlatIndex reserved;
  reserved.reserve(100'000);
  const size_t capacity = reserved.capacity();
  for (uint32_t id = 0; id < hashes.size(); ++id) reserved.insert(hashes[id], id);
  EXPECT_EQ(reserved.capacity(), capacity);
}

TEST(FlatIndexTest, RandomOperationsMatchAMultimap) {
  // Few distinct hashes, many of them sharing low bits: collisions and long runs everywhere.
  std::mt19937 rng(11);
  FlatIndex index;
  std::multimap<uint32_t, uint32_t> model;
  std::vector<uint32_t> hashes;
  for (int i = 0; i < 40; ++i) hashes.push_back(static_cast<uint32_t>(rng() % 8) << (rng() % 20));
  uint32_t nextId = 0;
  for (int step = 0; step < 20'000; ++step) {
    if (model.empty() || rng() % 100 < 55) {
      const uint32_t hash = hashes[rng() % hashes.size()];
      index.insert(hash, nextId);
      model.emplace(hash, nextId++);
    } else {
      auto it = model.begin();
      std::advance(it, static_cast<long>(rng() % model.size()));
      index.erase(it->first, it->second);
      model.erase(it);
    }
    if (step % 97 == 0) {
      ASSERT_EQ(index.size(), model.size());
      for (uint32_t hash : hashes) {
        std::multiset<uint32_t> want;
        for (auto [lo, hi] = model.equal_range(hash); lo != hi; ++lo) want.insert(lo->second);
        ASSERT_EQ(idsUnder(index, hash), want) << "step " << step << " hash " << hash;
      }
    }
  }
}

// ---- Slab ----

struct Item {
  uint64_t value = 0;
  bool inUse = false;
};

TEST(SlabTest, ElementsNeverMoveAndFreedIdsComeBackLastFirst) {
  Slab<Item> slab;
  std::vector<Item*> where;
  for (uint32_t i = 0; i < 1000; ++i) {
    const uint32_t id = slab.allocate();
    ASSERT_EQ(id, i);
    slab[id].value = id;
    slab[id].inUse = true;
    where.push_back(&slab[id]);
  }
  for (uint32_t i = 0; i < 200'000; ++i) slab[slab.allocate()].value = 1000 + i;
  for (uint32_t i = 0; i < 1000; ++i) {
    ASSERT_EQ(&slab[i], where[i]);
    ASSERT_EQ(slab[i].value, i);
  }
  // Every block boundary holds distinct storage.
  for (uint32_t id = 0; id < slab.end(); ++id) {
    ASSERT_EQ(slab[id].value, id);
  }
  slab.free(300);
  slab.free(7);
  EXPECT_EQ(slab.size(), 200'998u);
  EXPECT_EQ(slab[7].value, 7u);  // a freed element stays readable until allocated again
  EXPECT_EQ(slab.allocate(), 7u);
  EXPECT_EQ(slab[7].value, 0u);  // value-initialised
  EXPECT_EQ(slab.allocate(), 300u);
  const uint32_t fresh = slab.allocate();  // then new ids
  EXPECT_EQ(fresh, slab.end() - 1);
  EXPECT_EQ(slab[fresh].value, 0u);  // value-initialised
}

TEST(SlabTest, ForEachVisitsEveryIdOnceWhileElementsAreFreed) {
  Slab<Item> slab;
  slab.reserve(5000);
  for (uint32_t i = 0; i < 5000; ++i) {
    const uint32_t id = slab.allocate();
    slab[id] = Item{id, true};
  }
  std::vector<uint32_t> seen;
  slab.forEach([&](uint32_t id, Item& item) {
    seen.push_back(id);
    EXPECT_EQ(item.value, id);
    if (id % 3 == 0) {  // removal during the scan, as a bulk sweep does
      item.inUse = false;
      slab.free(id);
    }
  });
  ASSERT_EQ(seen.size(), 5000u);
  for (uint32_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i], i);
  size_t inUse = 0;
  std::as_const(slab).forEach([&](uint32_t, const Item& item) { inUse += item.inUse; });
  EXPECT_EQ(inUse, slab.size());
  EXPECT_EQ(inUse, 5000u - 1667u);
}

// ---- DeadlineWheel ----

using Key = std::pair<int64_t, uint32_t>;  // (at, id)

// A tiny wheel (ticks of 16 ns, 8 slots, 128 ns a revolution) against a sorted set, with
// deadlines spread over many revolutions and clock steps from one tick to several revolutions.
TEST(DeadlineWheelTest, PopsEveryDueItemExactlyOnceAndNothingEarly) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    std::mt19937_64 rng(seed);
    DeadlineWheel wheel(4, 8);
    std::multiset<Key> pending;
    int64_t now = 1000 + static_cast<int64_t>(rng() % 1000);
    uint32_t nextId = 0;
    for (int step = 0; step < 2000; ++step) {
      const int pushes = static_cast<int>(rng() % 5);
      for (int p = 0; p < pushes; ++p) {
        // Mostly ahead, some in the past (due at the next call), some many revolutions away.
        const int64_t ahead = rng() % 10 == 0  ? -static_cast<int64_t>(rng() % 50)
                              : rng() % 5 == 0 ? static_cast<int64_t>(rng() % 5000)
                                               : static_cast<int64_t>(rng() % 200);
        const DeadlineWheel::Item item{now + ahead, nextId++};
        wheel.push(item, now);
        pending.emplace(item.at, item.id);
      }
      ASSERT_EQ(wheel.size(), pending.size());
      const uint64_t kind = rng() % 10;
      now += kind < 6   ? static_cast<int64_t>(rng() % 20)
             : kind < 9 ? static_cast<int64_t>(rng() % 300)
                        : static_cast<int64_t>(rng() % 3000);
      std::multiset<Key> popped;
      wheel.popDue(now, [&](const DeadlineWheel::Item& it) { popped.emplace(it.at, it.id); });
      std::multiset<Key> due(pending.begin(), pending.upper_bound(Key{now, UINT32_MAX}));
      ASSERT_EQ(popped, due) << "seed " << seed << " step " << step << " now " << now;
      pending.erase(pending.begin(), pending.upper_bound(Key{now, UINT32_MAX}));
      ASSERT_EQ(wheel.size(), pending.size());
    }
  }
}

TEST(DeadlineWheelTest, PushesFromTheCallbackArePlacedAfterIt) {
  DeadlineWheel wheel(4, 8);
  wheel.push({100, 1}, 100);
  std::vector<uint32_t> popped;
  wheel.popDue(100, [&](const DeadlineWheel::Item& it) {
    popped.push_back(it.id);
    wheel.push({100, 2}, 100);  // due already: comes back from the next call, not this one
    wheel.push({5000, 3}, 100);
  });
  EXPECT_EQ(popped, (std::vector<uint32_t>{1}));
  EXPECT_EQ(wheel.size(), 2u);
  popped.clear();
  wheel.popDue(100, [&](const DeadlineWheel::Item& it) { popped.push_back(it.id); });
  EXPECT_EQ(popped, (std::vector<uint32_t>{2}));
  wheel.popDue(4999, [&](const DeadlineWheel::Item& it) { popped.push_back(it.id); });
  EXPECT_EQ(popped, (std::vector<uint32_t>{2}));
  wheel.popDue(5000, [&](const DeadlineWheel::Item& it) { popped.push_back(it.id); });
  EXPECT_EQ(popped, (std::vector<uint32_t>{2, 3}));
  EXPECT_EQ(wheel.size(), 0u);
}

TEST(DeadlineWheelTest, ClockGoingBackPopsNothingEarlyAndClearEmpties) {
  DeadlineWheel wheel(4, 8);
  wheel.push({1000, 1}, 900);
  wheel.push({1010, 2}, 900);
  size_t n = 0;
  wheel.popDue(995, [&](const DeadlineWheel::Item&) { ++n; });
  wheel.popDue(500, [&](const DeadlineWheel::Item&) { ++n; });
  EXPECT_EQ(n, 0u);
  wheel.push({600, 3}, 500);  // behind the wheel's position: due at the first chance
  wheel.popDue(600, [&](const DeadlineWheel::Item& it) { n += it.id; });
  EXPECT_EQ(n, 3u);
  wheel.clear();
  EXPECT_EQ(wheel.size(), 0u);
  wheel.popDue(1'000'000, [&](const DeadlineWheel::Item&) { ++n; });
  EXPECT_EQ(n, 3u);
}

}  // namespace
}  // namespace ctsync::replication::flat
