#!/usr/bin/env bash
# Installs every Debian package lowbit needs. Idempotent: does nothing when all are present.
set -euo pipefail
PKGS=(
  build-essential cmake ninja-build
  python3 python3-dev python3-torch libtorch-dev libopenblas0-pthread
  pybind11-dev googletest libgtest-dev libbenchmark-dev
  python3-numpy python3-pytest python3-tqdm python3-matplotlib
  python3-pip python3-venv python3-setuptools python3-wheel  # pip install of lowbit itself
  clang libclang-rt-14-dev llvm  # libFuzzer + sanitizer runtimes, llvm-symbolizer (scripts/fuzz.sh)
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "lowbit setup: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
