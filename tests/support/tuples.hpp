#pragma once
// A tuple from its parts, in the order conntrack prints them (test helper).
#include <cstdint>

#include "table/tuple.hpp"

namespace ctsync::testing {

inline table::Tuple tuple(table::L3 l3, uint8_t l4, table::Addr src, table::Addr dst,
                          uint16_t sport, uint16_t dport) {
  table::Tuple t;
  t.l3 = l3;
  t.l4 = l4;
  t.src = src;
  t.dst = dst;
  t.sport = sport;
  t.dport = dport;
  return t;
}

}  // namespace ctsync::testing
