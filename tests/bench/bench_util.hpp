#pragma once
// What the benchmarks share: a clock, memory readings, and the median (best, worst) of
// repeated measurements.
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <fstream>
#include <string>
#include <vector>

namespace ctsync::bench {

using Clock = std::chrono::steady_clock;

inline double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Resident memory of this process (/proc/self/statm).
inline size_t rssBytes() {
  std::ifstream f("/proc/self/statm");
  size_t pages = 0, resident = 0;
  f >> pages >> resident;
  return resident * 4096;
}

// Transparent huge pages backing this process (the tables ask for them).
inline size_t hugeBytes() {
  std::ifstream f("/proc/self/smaps_rollup");
  std::string key;
  size_t kb = 0;
  while (f >> key) {
    if (key == "AnonHugePages:") {
      f >> kb;
      return kb * 1024;
    }
  }
  return 0;
}

// This machine is a shared VM: the same work varies by up to a quarter between runs. Every
// figure is measured kReps times and printed as median (best, worst).
inline constexpr int kReps = 5;

struct Spread {
  double median, best, worst;
};

// For rates: higher is better.
inline Spread spreadOfRates(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.back(), v.front()};
}

// For costs: lower is better.
inline Spread spreadOfCosts(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.front(), v.back()};
}

}  // namespace ctsync::bench
