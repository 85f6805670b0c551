// Splitting a kernel's batch over the CPUs (shared by gate_kernel.cc and conv_kernel.cc).
#pragma once

#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace regnet {

// Runs fn(t, threads) on `threads` threads (t = 0 on the caller's) and waits for all of them;
// the kernels give thread t the images t, t + threads, ...
template <typename F>
void ParallelOverBatch(int64_t threads, F fn) {
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(fn, t, threads);
  fn(0, threads);
  for (auto& th : pool) th.join();
}

// One thread per CPU this process may run on (taskset, cgroup cpusets; else the hardware's
// count), at most one per image.
inline int64_t NumThreads(int64_t batch) {
  cpu_set_t cpus;
  const int64_t available = sched_getaffinity(0, sizeof(cpus), &cpus) == 0
                                ? CPU_COUNT(&cpus) : std::thread::hardware_concurrency();
  return std::max<int64_t>(1, std::min<int64_t>(batch, available));
}

}  // namespace regnet
