#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) in build-fuzz/ and runs
# each for a while over a copy of its corpus.
#
# Usage: tests/fuzz/run.sh [--seconds N] [--jobs J] [TARGET...]
#   --seconds N  fuzzing time per target (default 60)
#   --jobs J     targets run at the same time (default 2)
#   TARGET...    some of: tokenizer manifest safetensors hf_config config
#                (default all)
# Environment: FUZZ_BUILD_DIR (default build-fuzz), CXX (default clang++-14,
# else clang++). Installs nothing: launch/install-deps.sh --fuzz does.
#
# The corpus of each target (tests/fuzz/corpus/<target>/) and its fixed
# crashers (tests/fuzz/regressions/<target>/) seed the run; inputs libFuzzer
# finds go to a copy under $FUZZ_BUILD_DIR/fuzz-work/<target>/, never into
# the repository. Prints per target the executions run and the outcome;
# exits 1 on any crash, sanitizer report, leak, timeout or out-of-memory,
# printing the reproducer to rerun with
#   $FUZZ_BUILD_DIR/bin/fuzz_<target> <reproducer>
set -uo pipefail
cd "$(dirname "$0")/../.."

seconds=60
jobs=2
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
all_targets=(tokenizer manifest safetensors hf_config config)
if [ ${#targets[@]} -eq 0 ]; then targets=("${all_targets[@]}"); fi
for t in "${targets[@]}"; do
  if [ ! -d "tests/fuzz/corpus/$t" ]; then echo "fuzz: unknown target $t (${all_targets[*]})" >&2; exit 2; fi
done

# Input size limit per target (bytes): a little above the largest seed.
max_len() {
  case "$1" in
    tokenizer) echo 16384 ;;
    manifest) echo 8192 ;;
    safetensors) echo 32768 ;;
    hf_config) echo 4096 ;;
    config) echo 4096 ;;
  esac
}

cxx=${CXX:-}
if [ -z "$cxx" ]; then
  if command -v clang++-14 >/dev/null 2>&1; then cxx=clang++-14; else cxx=clang++; fi
fi
if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "fuzz: $cxx not found: run launch/install-deps.sh --fuzz" >&2
  exit 1
fi

build=${FUZZ_BUILD_DIR:-build-fuzz}
launcher=()
if command -v ccache >/dev/null 2>&1; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
t0=$SECONDS
mkdir -p "$build"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER="$cxx" "${launcher[@]}" \
  -DLATAM_FUZZ=ON -DLATAM_CUDA=OFF -DLATAM_BUILD_TESTS=OFF >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; echo "fuzz: configure failed" >&2; exit 1; }
cmake --build "$build" -j "$(nproc)" || { echo "fuzz: build failed" >&2; exit 1; }
echo "fuzz: build ${build} in $((SECONDS - t0)) s"

work=$build/fuzz-work
rm -rf "$work"
mkdir -p "$work"
# The targets that parse files write each input to a scratch directory: in
# memory when /dev/shm is there (four times the executions of a disk).
if [ -d /dev/shm ] && [ -w /dev/shm ]; then scratch=/dev/shm; else scratch=$work; fi

# Runs one target; leaves its log in $work/<target>/log.
fuzz_one() {
  local t=$1 dir=$work/$1
  mkdir -p "$dir/corpus" "$dir/artifacts"
  cp tests/fuzz/corpus/"$t"/* "$dir/corpus/"
  local seeds=("$dir/corpus")
  if [ -d "tests/fuzz/regressions/$t" ]; then seeds+=("tests/fuzz/regressions/$t"); fi
  local dict=()
  if [ -f "tests/fuzz/dicts/$t.dict" ]; then dict=(-dict="tests/fuzz/dicts/$t.dict"); fi
  TMPDIR=$scratch "$build/bin/fuzz_$t" "${seeds[@]}" "${dict[@]}" -max_total_time="$seconds" -max_len="$(max_len "$t")" \
    -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 \
    -artifact_prefix="$dir/artifacts/" >"$dir/log" 2>&1
  echo $? >"$dir/rc"
}

t0=$SECONDS
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
  fuzz_one "$t" &
  running=$((running + 1))
done
wait

failed=0
for t in "${targets[@]}"; do
  dir=$work/$t
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
  rc=$(cat "$dir/rc")
  reproducer=$(find "$dir/artifacts" -type f | head -1)
  if [ "$rc" -eq 0 ] && [ -z "$reproducer" ]; then
    printf 'fuzz: %-12s %10s executions, no crash\n' "$t" "${execs:-?}"
  else
    failed=1
    printf 'fuzz: %-12s %10s executions, FAILED (exit %s)\n' "$t" "${execs:-?}" "$rc"
    grep -m1 -E '^==[0-9]+==ERROR|runtime error|^SUMMARY|ERROR: libFuzzer' "$dir/log" | sed 's/^/fuzz:   /'
    echo "fuzz:   log: $dir/log"
    if [ -n "$reproducer" ]; then
      echo "fuzz:   reproducer: $reproducer"
      echo "fuzz:   rerun: $build/bin/fuzz_$t $reproducer"
    fi
  fi
done
echo "fuzz: ${#targets[@]} targets, ${seconds} s each, ${jobs} at a time, $((SECONDS - t0)) s"
exit "$failed"
