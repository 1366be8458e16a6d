#!/usr/bin/env bash
# Builds the datagram decoder's libFuzzer target with clang (ASan + UBSan) and runs it for a
# bounded time from the committed seed corpus. New inputs go to a scratch folder, so the repo's
# corpus stays as it is. Usage: tests/replication/run_fuzz.sh [SECONDS] (default 30).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-30}
work=$(mktemp -d /tmp/ctsync-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT

capnp compile -oc++:"$work" --src-prefix=replication replication/wire.capnp
clang++-14 -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -I. -isystem "$work" \
  "$work/wire.capnp.c++" replication/codec.cpp table/tuple.cpp table/types.cpp \
  tests/replication/codec_fuzz.cpp -lcapnp -lkj -o "$work/codec_fuzz"
mkdir -p "$work/corpus"
status=0
"$work/codec_fuzz" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 \
  "$work/corpus" tests/replication/fuzz_corpus >"$work/log" 2>&1 || status=$?
grep -E "stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY|Test unit written" "$work/log" || true
if [ "$status" -ne 0 ]; then
  tail -40 "$work/log"
  echo "codec fuzzer: FAILED (exit $status)"
  exit 1
fi
echo "codec fuzzer: ${seconds} s clean"
