#!/usr/bin/env bash
# Bounded coverage-guided fuzzing of every target (libFuzzer via cargo-fuzz), as CI runs it.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]      default 60; FUZZ_TARGETS="a b" picks targets
#
# Installs cargo-fuzz if missing, builds all targets once (optimised, AddressSanitizer), then
# runs each from its hand-written seeds (fuzz/seeds/<target>) plus what earlier runs found
# (fuzz/corpus/<target>, not committed) for SECONDS_PER_TARGET, each input capped in length
# and in time. Prints execs/s and coverage per target; exits non-zero on the first crash,
# leak, timeout or out-of-memory input, which is left in fuzz/artifacts/<target>/ (reproduce:
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>` in fuzz/).
#
# cargo-fuzz passes `-Z` flags (sanitizers), which the stable toolchain refuses unless
# RUSTC_BOOTSTRAP=1: set here, for this build only.
set -euo pipefail
cd "$(dirname "$0")"

SECS="${1:-60}"
CARGO_FUZZ_VERSION=0.13.2
TARGETS="${FUZZ_TARGETS:-smtp_session smtp_client filter_content html config sarules_rules sarules_message}"

# Per target: longest input in bytes, and seconds per input before it counts as a hang.
max_len() {
  case "$1" in
    smtp_session | smtp_client) echo 4096 ;;
    filter_content | sarules_message) echo 16384 ;;
    html) echo 16384 ;;
    config | sarules_rules) echo 4096 ;;
  esac
}
timeout_for() {
  case "$1" in
    sarules_rules | sarules_message) echo 10 ;;
    *) echo 5 ;;
  esac
}

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

export RUSTC_BOOTSTRAP=1
# sarules_rules writes each input as a rule file: keep those under the build directory.
export TMPDIR="$PWD/target/tmp"
mkdir -p "$TMPDIR"
echo "== building fuzz targets"
build_start=$SECONDS
cargo fuzz build -O
echo "built in $((SECONDS - build_start)) s"

summary=()
for t in $TARGETS; do
  mkdir -p "corpus/$t" "artifacts/$t"
  mkdir -p logs
  log="logs/$t.log"
  echo "== $t: ${SECS} s, -max_len=$(max_len "$t") -timeout=$(timeout_for "$t")"
  status=0
  # The corpus directory comes first: new inputs are written there, never into seeds/.
  cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$SECS" -max_len="$(max_len "$t")" -timeout="$(timeout_for "$t")" \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
    >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  corpus=$(find "corpus/$t" -type f | wc -l)
  line=$(printf '%-16s execs %10s  execs/s %6s  cov %6s  features %6s  corpus %5s' \
    "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$corpus")
  echo "$line"
  summary+=("$line")
  if [ "$status" -ne 0 ]; then
    echo "!! $t failed (exit $status); the end of its log:"
    tail -n 60 "$log"
    ls -l "artifacts/$t/"
    exit 1
  fi
done

echo "== fuzzing summary (${SECS} s per target)"
printf '%s\n' "${summary[@]}"
