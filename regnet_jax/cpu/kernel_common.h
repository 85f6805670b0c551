// What gate_kernel.cc and conv_kernel.cc share: channel vectors and splitting work over the CPUs.
#pragma once

#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace regnet {

// Lanes channels in one vector (GCC/Clang vector extension: 16 lanes are one AVX-512 register,
// or two AVX ones); Lanes = 1 is a plain float, for the channels left over.
template <int Lanes>
struct Vec {
  typedef float T __attribute__((vector_size(4 * Lanes)));
  // Loads and stores as float vectors aligned like a float (not memcpy, which may alias
  // anything and so makes the compiler reload every captured variable after each store).
  typedef float Unaligned __attribute__((vector_size(4 * Lanes), aligned(4)));
  static T Load(const float* p) { return *reinterpret_cast<const Unaligned*>(p); }
  static void Store(float* p, T v) { *reinterpret_cast<Unaligned*>(p) = v; }
  static T Zero() { return T{}; }
};
template <>
struct Vec<1> {
  using T = float;
  static T Load(const float* p) { return *p; }
  static void Store(float* p, T v) { *p = v; }
  static T Zero() { return 0.f; }
};

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
