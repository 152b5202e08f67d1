# Sourced by the project's scripts. Debian's OpenBLAS 0.3.21 does not recognise recent
# Intel CPUs and falls back to its generic SSE3 ("Prescott") kernels, 4x slower here;
# name the matching kernel family unless the user already chose one.
if [ -z "${OPENBLAS_CORETYPE:-}" ] && [ -r /proc/cpuinfo ]; then
  if grep -q -m1 -w avx512f /proc/cpuinfo; then
    export OPENBLAS_CORETYPE=SkylakeX
  elif grep -q -m1 -w avx2 /proc/cpuinfo; then
    export OPENBLAS_CORETYPE=Haswell
  fi
fi
# torch's OpenMP ops and OpenBLAS's own threads alternate in every model forward pass.
# libgomp's workers spin 300000 rounds after each parallel region by default and take
# the cores from OpenBLAS (its products ran 1.6x slower on 2 cores); sleeping at once
# (OMP_WAIT_POLICY=PASSIVE) makes lowbit's GEMMs, with a barrier per K block, 2x slower.
# A short spin serves both.
export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-10000}"
