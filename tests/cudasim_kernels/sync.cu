// Block-level synchronisation: a shared-memory tree reduction (correct, and with one __syncthreads deleted),
// barriers in divergent code, __syncthreads_count/and/or, and the order in which blocks run.
#include "common.h"

constexpr int kThreads = 256;

__global__ void block_sum(const float* in, float* out, int n) {
  __shared__ float red[kThreads];
  const int t = threadIdx.x;
  const int i = blockIdx.x * kThreads + t;
  red[t] = i < n ? in[i] : 0.0f;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) red[t] += red[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = red[0];
}

// block_sum with the barrier after the loads deleted: a thread may read red[t + s] before its owner wrote it.
__global__ void block_sum_missing_sync(const float* in, float* out, int n) {
  __shared__ float red[kThreads];
  const int t = threadIdx.x;
  const int i = blockIdx.x * kThreads + t;
  red[t] = i < n ? in[i] : 0.0f;
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) red[t] += red[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = red[0];
}

// block_sum with the barrier inside the loop deleted: later rounds read partial sums not yet written.
__global__ void block_sum_missing_loop_sync(const float* in, float* out, int n) {
  __shared__ float red[kThreads];
  const int t = threadIdx.x;
  const int i = blockIdx.x * kThreads + t;
  red[t] = i < n ? in[i] : 0.0f;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) red[t] += red[t + s];
  }
  __syncthreads();
  if (t == 0) out[blockIdx.x] = red[0];
}

// Odd and even threads wait at different __syncthreads call sites.
__global__ void divergent_barrier(int* out) {
  if (threadIdx.x % 2)
    __syncthreads();
  else
    __syncthreads();
  out[threadIdx.x] = 1;
}

// Half the block returns before a barrier the other half waits at.
__global__ void exit_before_barrier(const int* in, int* out, int n) {
  const int t = threadIdx.x;
  if (t >= n) return;
  __syncthreads();
  out[t] = in[t];
}

__global__ void barrier_votes(int* out) {
  const int t = threadIdx.x;
  out[0] = __syncthreads_count(t % 3 == 0);
  out[1] = __syncthreads_and(t < 1000);
  out[2] = __syncthreads_and(t != 5);
  out[3] = __syncthreads_or(t == 77);
  out[4] = __syncthreads_or(t > 1000);
}

// The order in which blocks start.
__global__ void block_order(unsigned* ticket, unsigned* order) {
  if (threadIdx.x == 0) order[atomicAdd(ticket, 1u)] = blockIdx.x;
}

int reduce_case(int argc, char** argv) {
  const int n = 1000, blocks = (n + kThreads - 1) / kThreads;
  std::vector<float> h(n);
  for (int i = 0; i < n; ++i) h[i] = static_cast<float>(i % 17);  // integers: every order of the sum is exact
  float* in = to_device(h);
  float* out = to_device(std::vector<float>(blocks, 0.0f));
  auto kernel = is_case(argc, argv, "reduce") ? block_sum
                : is_case(argc, argv, "missing_sync") ? block_sum_missing_sync
                                                      : block_sum_missing_loop_sync;
  if (report("launch", fv_launch(kernel, blocks, kThreads, 0, 0, in, out, n))) return 1;
  const std::vector<float> r = to_host(out, blocks);
  int bad = 0;
  for (int b = 0; b < blocks; ++b) {
    float want = 0;
    for (int i = b * kThreads; i < n && i < (b + 1) * kThreads; ++i) want += h[i];
    printf("block %d sum %g want %g\n", b, r[b], want);
    bad += r[b] != want;
  }
  printf(bad ? "WRONG\n" : "OK\n");
  return 0;
}

int main(int argc, char** argv) {
  if (is_case(argc, argv, "reduce") || is_case(argc, argv, "missing_sync") || is_case(argc, argv, "missing_loop_sync"))
    return reduce_case(argc, argv);
  if (is_case(argc, argv, "divergent")) {
    int* out = to_device(std::vector<int>(64, 0));
    if (report("launch", fv_launch(divergent_barrier, 1, 64, 0, 0, out))) return 1;
    printf("OK\n");
    return 0;
  }
  if (is_case(argc, argv, "exit_before_barrier")) {
    int* in = to_device(std::vector<int>(256, 7));
    int* out = to_device(std::vector<int>(256, 0));
    if (report("launch", fv_launch(exit_before_barrier, 1, 256, 0, 0, in, out, 128))) return 1;
    if (report("sync", cudaDeviceSynchronize())) return 1;
    printf("OK\n");
    return 0;
  }
  if (is_case(argc, argv, "sticky")) {  // after a failed kernel every later call fails, as on a GPU
    int* out = to_device(std::vector<int>(64, 0));
    const cudaError_t first = fv_launch(divergent_barrier, 1, 64, 0, 0, out);
    const cudaError_t second = fv_launch(barrier_votes, 1, 64, 0, 0, out);
    const cudaError_t sync = cudaDeviceSynchronize();
    printf("first %s second %s sync %s\n", cudaGetErrorName(first), cudaGetErrorName(second), cudaGetErrorName(sync));
    return 0;
  }
  if (is_case(argc, argv, "votes")) {
    int* out = to_device(std::vector<int>(5, -1));
    if (report("launch", fv_launch(barrier_votes, 1, 256, 0, 0, out))) return 1;
    const std::vector<int> r = to_host(out, 5);
    printf("votes %d %d %d %d %d\n", r[0], r[1], r[2], r[3], r[4]);
    printf(r[0] == 86 && r[1] == 1 && r[2] == 0 && r[3] == 1 && r[4] == 0 ? "OK\n" : "WRONG\n");
    return 0;
  }
  if (is_case(argc, argv, "block_order")) {
    const int blocks = 7;
    unsigned* ticket = to_device(std::vector<unsigned>(1, 0));
    unsigned* order = to_device(std::vector<unsigned>(blocks, 0));
    if (report("launch", fv_launch(block_order, blocks, 32, 0, 0, ticket, order))) return 1;
    const std::vector<unsigned> r = to_host(order, blocks);
    printf("order");
    for (unsigned b : r) printf(" %u", b);
    printf("\n");
    return 0;
  }
  printf("unknown case\n");
  return 2;
}
