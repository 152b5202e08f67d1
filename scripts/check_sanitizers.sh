#!/usr/bin/env bash
# ASan + UBSan check of the torch-free core: configures build-asan/ (same CMakeLists.txt,
# LOWBIT_SANITIZE=ON, LOWBIT_BUILD_PYTHON=OFF, g++), builds lowbit_core and
# lowbit_core_tests with -fsanitize=address,undefined -fno-sanitize-recover=all -O1 -g and
# runs every C++ test under it. Any sanitizer report fails the test and this script.
# Usage: bash scripts/check_sanitizers.sh [extra ctest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
BUILD=build-asan
JOBS="${LOWBIT_BUILD_JOBS:-$(nproc)}"
if [ ! -f "$BUILD/build.ninja" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=g++ \
    -DLOWBIT_BUILD_PYTHON=OFF -DLOWBIT_BUILD_TESTS=ON -DLOWBIT_SANITIZE=ON >/dev/null
fi
t0=$SECONDS
cmake --build "$BUILD" -j "$JOBS" --target lowbit_core_tests
echo "sanitizer build: $((SECONDS - t0)) s"
export ASAN_OPTIONS="detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
t0=$SECONDS
(cd "$BUILD" && ctest --output-on-failure -j "$JOBS" --timeout 900 "$@")
echo "sanitizer tests: $((SECONDS - t0)) s"
