#!/usr/bin/env bash
# Installs the Debian packages (first time only) and builds the C++ core, the torch ops
# library, the Python extension and the C++ tests into build/ (incremental).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -f build/build.ninja ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=/usr/bin/python3 >/dev/null
fi
cmake --build build -j "$(nproc)"
