#!/usr/bin/env bash
# The whole test suite: C++ tests through ctest, Python tests through pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/build.sh
echo "== C++ tests (ctest)"
(cd build && ctest --output-on-failure -j "$(nproc)")
echo "== Python tests (pytest)"
set +e
PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" /usr/bin/python3 -m pytest -q -rs tests/python "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit $rc
