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
# torch's OpenMP ops and OpenBLAS's own threads alternate in every model forward pass;
# spinning OpenMP workers slow OpenBLAS down (1.6x on 2 cores): let them sleep instead.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
