// omp_region(parallel, body): body() inside an OpenMP parallel region when `parallel`,
// else straight on the calling thread.
//
// Why not `#pragma omp parallel if (cond)`: with cond false, libgomp still builds a team
// of one, and its closing barrier ends in a futex wake-up, a system call (0.3-0.6 us here,
// one or two per region). A deploy op on a small layer runs several such regions per call,
// which made a 64 x 64 product several microseconds slower than its arithmetic. Worksharing
// constructs inside body() (`omp for`, `omp single`, reductions on captured variables) are
// orphaned when no region encloses them: they then run whole on the calling thread, with
// no barrier.
#pragma once

namespace lowbit {
namespace {

template <class Body>
inline void omp_region(bool parallel, Body&& body) {
  if (parallel) {
#pragma omp parallel
    body();
  } else {
    body();
  }
}

}  // namespace
}  // namespace lowbit
