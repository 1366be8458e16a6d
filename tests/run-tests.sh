#!/usr/bin/env bash
# The README's test command: installs what is missing, builds ctsync twice (sanitizers, then
# optimised with warnings as errors) and runs every test: unit tests under ASan/UBSan, a
# 30-second fuzz of the sync datagram decoder, then the whole suite including the differential
# tests against this machine's kernel conntrack.
# Needs root (packages, network namespaces). Ends with ctest's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=$(nproc)

"$root/tests/install-deps.sh"

echo "== build with AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S "$root" -B "$root/build-asan" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DCTSYNC_SANITIZE=ON -DCTSYNC_WERROR=ON >/dev/null
cmake --build "$root/build-asan" -j "$jobs"
echo "== unit tests under sanitizers"
(cd "$root/build-asan" && ctest --output-on-failure -j "$jobs" -L unit)

echo "== datagram decoder fuzzer (libFuzzer, ASan/UBSan), bounded run"
"$root/tests/replication/run_fuzz.sh" 30

echo "== optimised build, warnings as errors"
cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCTSYNC_WERROR=ON >/dev/null
cmake --build "$root/build" -j "$jobs"
echo "== all tests (unit, kernel differential, benchmark smoke run)"
cd "$root/build"
exec ctest --output-on-failure
