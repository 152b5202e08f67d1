#!/usr/bin/env bash
# The main job on its built-in default: builds if needed, then runs `python3 -m lowbit`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/build.sh >/dev/null
PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" exec /usr/bin/python3 -m lowbit "$@"
