#!/usr/bin/env bash
# The whole test suite: C++ tests through ctest, Python tests through pytest, then the C++
# tests again under ASan+UBSan (scripts/check_sanitizers.sh) and 120 s of fuzzing the
# safetensors reader (scripts/fuzz.sh); LOWBIT_SKIP_SLOW_CHECKS=1 skips the last two.
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
  rc=1
fi
# "Keep it that way" checks, run by default (CI) after the suite above; 3-9 minutes on
# 2 cores. LOWBIT_SKIP_SLOW_CHECKS=1 skips them for a quick local run. Either failing
# makes the script fail; pytest's own exit status is kept when it failed.
if [ -n "${LOWBIT_SKIP_SLOW_CHECKS:-}" ] && [ "${LOWBIT_SKIP_SLOW_CHECKS}" != 0 ]; then
  echo "== skipping the sanitizer build and the fuzzer (LOWBIT_SKIP_SLOW_CHECKS=$LOWBIT_SKIP_SLOW_CHECKS)"
else
  echo "== sanitizer build (ASan+UBSan)"
  if ! bash scripts/check_sanitizers.sh; then
    echo "sanitizer build or tests FAILED" >&2
    [ $rc -ne 0 ] || rc=1
  fi
  fuzz_s="${LOWBIT_FUZZ_SECONDS:-120}"
  echo "== fuzzing the safetensors reader ($fuzz_s s)"
  # Seeds: the models pytest just saved (its newest temporary folder), unless given.
  pytest_tmp="$(/usr/bin/python3 -c 'import getpass, tempfile
print(f"{tempfile.gettempdir()}/pytest-of-{getpass.getuser()}/pytest-current/")' 2>/dev/null || true)"
  if ! LOWBIT_FUZZ_SEEDS="${LOWBIT_FUZZ_SEEDS:-$pytest_tmp}" bash scripts/fuzz.sh "$fuzz_s"; then
    echo "fuzzing FAILED" >&2
    [ $rc -ne 0 ] || rc=1
  fi
fi
exit $rc
