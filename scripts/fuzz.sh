#!/usr/bin/env bash
# Fuzzes the safetensors reader and its JSON parser with libFuzzer (clang,
# -fsanitize=fuzzer,address,undefined): builds build-fuzz/fuzz_safetensors from
# tests/fuzz/fuzz_safetensors.cpp and the torch-free sources below, replays every file in
# tests/fuzz/regressions/ once, then fuzzes for SECONDS (default 120) from a seed corpus
# in a temporary folder: small files written by lowbit's writer (tests/fuzz/make_seeds.cpp)
# and every *.safetensors in $LOWBIT_FUZZ_SEEDS, when that names a folder. A crash, a
# sanitizer report, a timeout (10 s) or more than 2 GB of memory exits non-zero; its input
# is saved as tests/fuzz/regressions/<kind>-<sha1>: commit it with the fix.
# Usage: bash scripts/fuzz.sh [SECONDS] [extra libFuzzer flags]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_FUZZ="${1:-120}"
shift || true
bash scripts/setup.sh

# The sources the target needs (no torch). A new dependency of these files goes here.
SOURCES=(
  csrc/serialization/json.cpp
  csrc/serialization/safetensors.cpp
  csrc/serialization/checksum.cpp
  csrc/serialization/atomic_file.cpp
  csrc/serialization/saved_model.cpp
  csrc/config/quant_config.cpp
  csrc/config/algorithm_table.cpp
  csrc/config/capabilities.cpp
  csrc/config/config_value.cpp
  csrc/formats/format.cpp
  csrc/formats/reference.cpp
  csrc/scales/granule_scale.cpp
)
OUT=build-fuzz
REGRESSIONS=tests/fuzz/regressions
CXX="${LOWBIT_FUZZ_CXX:-clang++}"
FLAGS=(-std=c++17 -O1 -g -fno-omit-frame-pointer -fno-sanitize-recover=all -Icsrc)
mkdir -p "$OUT/obj"

# Rebuild everything when any input changed (a few files: 10-15 s here).
STAMP="$OUT/fuzz_safetensors"
stale=0
[ -x "$STAMP" ] && [ -x "$OUT/make_seeds" ] || stale=1
if [ $stale -eq 0 ] && [ -n "$(find "${SOURCES[@]}" csrc/serialization tests/fuzz/*.cpp scripts/fuzz.sh \
                                   -newer "$STAMP" -print -quit)" ]; then
  stale=1
fi
if [ $stale -eq 1 ]; then
  echo "building $OUT/fuzz_safetensors ($CXX)"
  t0=$SECONDS
  objs=()
  for src in "${SOURCES[@]}"; do
    obj="$OUT/obj/$(basename "${src%.cpp}").o"
    "$CXX" "${FLAGS[@]}" -fsanitize=fuzzer-no-link,address,undefined -c "$src" -o "$obj"
    objs+=("$obj")
  done
  "$CXX" "${FLAGS[@]}" -fsanitize=address,undefined tests/fuzz/make_seeds.cpp "${objs[@]}" -o "$OUT/make_seeds"
  "$CXX" "${FLAGS[@]}" -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_safetensors.cpp "${objs[@]}" \
    -o "$OUT/fuzz_safetensors.tmp"
  mv "$OUT/fuzz_safetensors.tmp" "$OUT/fuzz_safetensors"
  echo "fuzz build: $((SECONDS - t0)) s"
fi

export ASAN_OPTIONS="detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
LIMITS=(-rss_limit_mb=2048 -timeout=10 -max_len=1048576)

# 1. The committed reproducers, each run once as a plain input.
mkdir -p "$REGRESSIONS"
mapfile -t old < <(find "$REGRESSIONS" -maxdepth 1 -type f ! -name 'README*' ! -name '.*' | sort)
if [ ${#old[@]} -gt 0 ]; then
  echo "replaying ${#old[@]} inputs of $REGRESSIONS"
  if ! "$OUT/fuzz_safetensors" "${LIMITS[@]}" "${old[@]}" >"$OUT/regressions.log" 2>&1; then
    grep -v -E '^(Running: |Executed )' "$OUT/regressions.log" | tail -n 80 >&2
    echo "fuzz: an input of $REGRESSIONS fails (see above)" >&2
    exit 1
  fi
fi

# 2. The seed corpus, then fuzzing for a bounded time.
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/corpus"
"$OUT/make_seeds" "$WORK/corpus"
if [ -n "${LOWBIT_FUZZ_SEEDS:-}" ]; then
  if [ -d "$LOWBIT_FUZZ_SEEDS" ]; then
    n=0
    while IFS= read -r -d '' f; do
      cp "$f" "$WORK/corpus/seed-$n.safetensors"
      n=$((n + 1))
    done < <(find -H "$LOWBIT_FUZZ_SEEDS" -type f -name '*.safetensors' -size -1025k -print0 | head -z -n 200)
    echo "seeds: $n files (at most 200, up to 1 MB each) from $LOWBIT_FUZZ_SEEDS"
  else
    echo "LOWBIT_FUZZ_SEEDS=$LOWBIT_FUZZ_SEEDS is not a folder: no model seeds" >&2
  fi
fi
echo "seed corpus: $(ls "$WORK/corpus" | wc -l) files; fuzzing for $SECONDS_TO_FUZZ s"
set +e
"$OUT/fuzz_safetensors" "${LIMITS[@]}" -max_total_time="$SECONDS_TO_FUZZ" -print_final_stats=1 \
  -dict=tests/fuzz/safetensors.dict -artifact_prefix="$REGRESSIONS/" "$@" "$WORK/corpus" >"$OUT/fuzz.log" 2>&1
rc=$?
set -e
grep -E '^#[0-9]+[[:space:]]+(DONE|INITED)|^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' \
  "$OUT/fuzz.log" || true
if [ $rc -ne 0 ]; then
  # the report without libFuzzer's progress lines (the whole log: build-fuzz/fuzz.log)
  grep -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse|RELOAD)' "$OUT/fuzz.log" | tail -n 80 >&2
  echo "fuzz: FAILED (exit $rc); the input was saved in $REGRESSIONS/ ('Test unit written to' above)" >&2
  exit 1
fi
echo "fuzz: no crash in $SECONDS_TO_FUZZ s"
