#!/usr/bin/env bash
# Coverage-guided fuzzing of Orca's parsers (libFuzzer through `cargo fuzz`, on stable Rust).
#
#   hack/fuzz.sh DURATION [TARGET...]    e.g. hack/fuzz.sh 10m, hack/fuzz.sh 1h range sigv4
#
# DURATION (s, m or h) is split evenly between the targets (default: all of them, as listed by
# `orca::fuzzing::TARGETS`). New inputs that reach new code are written to fuzz/corpus-new/;
# those that add coverage are merged into fuzz/corpus/ at the end (commit them). A crash
# leaves its input in fuzz/artifacts/TARGET/ and the script exits 1: copy the input to
# fuzz/regressions/TARGET/, fix the parser, and `tests/fuzz_replay.rs` keeps it fixed. A line per target goes to
# fuzz/runs.log (date, target, seconds fuzzed, executions, result) for docs/reliability.md's table.
# CI does not run this: it replays the corpus in the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
ALL=(range s3_request fill_query azure_listing config sigv4)

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -ge 1 ]] || usage
case "$1" in
  *h) total=$(( ${1%h} * 3600 )) ;;
  *m) total=$(( ${1%m} * 60 )) ;;
  *s) total=${1%s} ;;
  *) usage ;;
esac
shift
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${ALL[@]}")
for t in "${targets[@]}"; do
  [[ -f fuzz/fuzz_targets/$t.rs ]] || { echo "fuzz.sh: no target $t (have: ${ALL[*]})" >&2; exit 2; }
done
per=$(( total / ${#targets[@]} ))
(( per >= 1 )) || { echo "fuzz.sh: $1 is too short for ${#targets[@]} targets" >&2; exit 2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz (once; several minutes on 2 cores)"
  cargo install cargo-fuzz --locked
fi
# The fuzz build has its own flags (coverage instrumentation): keep it out of the test target dir.
export CARGO_TARGET_DIR="${ORCA_FUZZ_TARGET_DIR:-$HOME/.cache/orca-fuzz-target}"
cd fuzz
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "corpus-new/$t" "artifacts/$t"
  echo "fuzz.sh: $t for ${per}s"
  log=$(mktemp)
  # Build first, so the time recorded is the fuzzing's own (a crash ends a run early).
  cargo fuzz build --sanitizer none "$t" >"$log" 2>&1 || { cat "$log"; exit 1; }
  started=$(date +%s)
  # --sanitizer none: sanitizers need a nightly compiler; libFuzzer's coverage guidance and the
  # asserted promises do not. -rss_limit_mb bounds a run; -timeout flags a hang of 10 s.
  if cargo fuzz run --sanitizer none "$t" "corpus-new/$t" "corpus/$t" -- \
      -max_total_time="$per" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
    # The panic and its message come long before libFuzzer's summary: show both.
    grep -n -A12 "panicked at" "$log" | head -40 || true
    tail -40 "$log"
  fi
  secs=$(( $(date +%s) - started ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  printf '%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$secs" "$execs" "$result" >> runs.log
  echo "fuzz.sh: $t $result: $execs executions in ${secs}s"
  rm -f "$log"
  # Fold what was found into the kept corpus: -merge=1 keeps every file already in corpus/
  # and adds the new inputs that reach code the corpus does not.
  if compgen -G "corpus-new/$t/*" >/dev/null; then
    cargo fuzz run --sanitizer none "$t" "corpus/$t" "corpus-new/$t" -- \
      -merge=1 -rss_limit_mb=2048 >/dev/null 2>&1 || true
    rm -rf "corpus-new/$t"
  fi
done
rmdir corpus-new 2>/dev/null || true
awk -F'\t' '{s[$2]+=$3; n[$2]+=$4} END {for (t in s) printf "fuzz.sh: total %s: %.2f h, %d executions\n", t, s[t]/3600, n[t]}' runs.log
exit $status
