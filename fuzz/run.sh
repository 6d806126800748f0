#!/usr/bin/env bash
# A bounded fuzz run of every target (cargo-fuzz, libFuzzer): SECONDS_PER_TARGET each (default
# 20), starting from the seed corpus in fuzz/corpus (new inputs found go to a scratch copy, so
# the committed corpus stays small). A crash fails the run and leaves its input under
# fuzz/artifacts/TARGET/. Prints each target's execution count.
#
# Needs the nightly toolchain (libFuzzer's sanitizer flags are nightly-only) and cargo-fuzz,
# which it installs when missing.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: the nightly Rust toolchain is not installed; cargo-fuzz needs it." >&2
  echo "fuzz: install it with: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --quiet
fi

targets=(config header_format route upstream_answer client_requests own_loop_vs_hyper)
build_log="$(mktemp)"
if ! cargo +nightly fuzz build >"$build_log" 2>&1; then
  # CI keeps the end of its output: the compiler's own messages, without cargo-fuzz's
  # backtrace, then the disk's free space (a full disk is one way this build fails).
  awk '/^Stack backtrace:/ { exit } !/^ *Compiling / { print }' "$build_log" | tail -n 40 >&2
  echo "fuzz: free space where the build writes: $(df -h "${CARGO_TARGET_DIR:-.}" | awk 'NR == 2 { print $4 }')" >&2
  echo "fuzz: the fuzz targets do not build" >&2
  exit 1
fi
tail -n 1 "$build_log"
rm -f "$build_log"
for t in "${targets[@]}"; do
  work="$(mktemp -d)"
  cp -r "corpus/$t/." "$work/"
  log="$(mktemp)"
  if ! cargo +nightly fuzz run "$t" "$work" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: target $t failed; the input is under fuzz/artifacts/$t/" >&2
    exit 1
  fi
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
  echo "fuzz: $t: $runs executions in ${seconds}s, no crash ($(ls "$work" | wc -l) inputs in the corpus)"
  rm -rf "$work" "$log"
done
