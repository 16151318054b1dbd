// Races, uninitialised reads and shared-memory bounds: each case is a small kernel with one such bug, or the correct
// form of the same pattern. Built as usual (where nothing of this is checked, and every case runs) and with
// -fsanitize=thread -g, where the model's racecheck / initcheck report the bugs
// (tests/cuda_on_cpu/test_cudasim_core.py).
#include "common.h"

constexpr int kN = 128;

// ---- shared memory ---------------------------------------------------------------------------------------------

// A tree reduction in shared memory; `sync` = false drops the barrier inside the loop.
__global__ void shared_tree(const float* in, float* out, bool sync) {
  __shared__ float sh[kN];
  sh[threadIdx.x] = in[threadIdx.x];
  __syncthreads();
  for (int o = kN / 2; o > 0; o >>= 1) {
    if (static_cast<int>(threadIdx.x) < o) sh[threadIdx.x] += sh[threadIdx.x + o];
    if (sync) __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = sh[0];
}

// The last warp's reduction without barriers: needs __syncwarp between the steps on sm_70+.
__global__ void warp_tail(const float* in, float* out, bool syncwarp) {
  __shared__ float sh[64];
  if (threadIdx.x < 64) sh[threadIdx.x] = in[threadIdx.x];
  __syncthreads();
  if (threadIdx.x < 32) {
    for (int o = 32; o > 0; o >>= 1) {
      const float v = sh[threadIdx.x] + sh[threadIdx.x + o];
      if (syncwarp) __syncwarp();
      sh[threadIdx.x] = v;
      if (syncwarp) __syncwarp();
    }
  }
  if (threadIdx.x == 0) out[0] = sh[0];
}

// Reads an element of a shared array that no thread wrote (the last thread writes nothing).
__global__ void shared_unwritten(float* out) {
  __shared__ float sh[kN];
  if (threadIdx.x < kN - 1) sh[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = sh[kN - 1 - threadIdx.x];
}

// Reads one element past the end of a static __shared__ array.
__global__ void shared_past_end(float* out) {
  __shared__ float sh[kN];
  sh[threadIdx.x] = 2.0f;
  __syncthreads();
  out[threadIdx.x] = sh[threadIdx.x + 1];
}

// 1000 B of dynamic shared memory (not a multiple of 16): `write` = 1 writes the 4 bytes past the end, 0 reads them.
__global__ void dynamic_past_end(float* out, int write) {
  FV_DYNAMIC_SHARED(float, dyn);
  const int n = 1000 / 4;
  if (threadIdx.x < n) dyn[threadIdx.x] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) {
    if (write) dyn[n] = 3.0f;
    else out[0] = dyn[n];
  }
}

// ---- global memory ------------------------------------------------------------------------------------------------

// Two threads of a block write each output element (i / 2).
__global__ void global_same_element(float* out) { out[threadIdx.x / 2] = static_cast<float>(threadIdx.x); }

// Every block adds its sum to out[0] with a plain read-modify-write (atomic = false) or atomicAdd.
__global__ void blocks_add(const float* in, float* out, bool atomic) {
  if (threadIdx.x != 0) return;
  if (atomic) atomicAdd(out, in[blockIdx.x]);
  else out[0] += in[blockIdx.x];
}

// A grid-stride loop whose stride is one block too short: two blocks handle element kN of each round.
__global__ void overlapping_stride(const float* in, float* out, int n, int stride_blocks) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride_blocks * blockDim.x) out[i] = 2.0f * in[i];
}

// The "last block" pattern: each block writes its partial, the last to take a ticket adds them up and resets the
// ticket. `variant` 0: __threadfence + atomicAdd (correct); 1: a plain ++ for the ticket; 2: no __threadfence.
__global__ void last_block(const float* in, float* partial, unsigned* ticket, float* out, int variant) {
  __shared__ bool last;
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = in[blockIdx.x];
    if (variant != 2) __threadfence();
    const unsigned t = variant == 1 ? (*ticket)++ : atomicAdd(ticket, 1u);
    last = t == gridDim.x - 1;
  }
  __syncthreads();
  if (last && threadIdx.x == 0) {
    __threadfence();
    const volatile float* p = partial;
    float s = 0;
    for (unsigned b = 0; b < gridDim.x; ++b) s += p[b];
    out[0] = s;
    *ticket = 0;
  }
}

// Writes out[i] in one launch, reads out[n - 1 - i] (another block's) in the next: ordered by the kernel boundary.
__global__ void write_all(float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = static_cast<float>(i);
}
__global__ void reverse_copy(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[n - 1 - i];
}

int main(int argc, char** argv) {
  std::vector<float> h(4 * kN);
  for (int i = 0; i < 4 * kN; ++i) h[i] = static_cast<float>(i % 7);
  float* in = to_device(h);
  float* out = nullptr;
  cudaMalloc(&out, 4 * kN * sizeof(float));
  cudaMemset(out, 0, 4 * kN * sizeof(float));
  cudaError_t e = cudaSuccess;
  if (is_case(argc, argv, "shared_tree_ok")) e = fv_launch(shared_tree, 1, kN, 0, 0, in, out, true);
  if (is_case(argc, argv, "shared_tree_race")) e = fv_launch(shared_tree, 1, kN, 0, 0, in, out, false);
  if (is_case(argc, argv, "warp_tail_ok")) e = fv_launch(warp_tail, 1, kN, 0, 0, in, out, true);
  if (is_case(argc, argv, "warp_tail_race")) e = fv_launch(warp_tail, 1, kN, 0, 0, in, out, false);
  if (is_case(argc, argv, "shared_unwritten")) e = fv_launch(shared_unwritten, 1, kN, 0, 0, out);
  if (is_case(argc, argv, "shared_past_end")) e = fv_launch(shared_past_end, 1, kN, 0, 0, out);
  if (is_case(argc, argv, "dynamic_read_past_end")) e = fv_launch(dynamic_past_end, 1, 256, 1000, 0, out, 0);
  if (is_case(argc, argv, "dynamic_write_past_end")) e = fv_launch(dynamic_past_end, 1, 256, 1000, 0, out, 1);
  if (is_case(argc, argv, "global_same_element")) e = fv_launch(global_same_element, 1, 64, 0, 0, out);
  if (is_case(argc, argv, "blocks_add_plain")) e = fv_launch(blocks_add, 4, 32, 0, 0, in, out, false);
  if (is_case(argc, argv, "blocks_add_atomic")) e = fv_launch(blocks_add, 4, 32, 0, 0, in, out, true);
  if (is_case(argc, argv, "stride_ok")) e = fv_launch(overlapping_stride, 3, 64, 0, 0, in, out, 4 * kN, 3);
  if (is_case(argc, argv, "stride_overlap")) e = fv_launch(overlapping_stride, 3, 64, 0, 0, in, out, 4 * kN, 2);
  for (int variant = 0; variant < 3; ++variant) {
    const char* names[] = {"last_block_ok", "last_block_plain_ticket", "last_block_no_fence"};
    if (!is_case(argc, argv, names[variant])) continue;
    float* partial = nullptr;
    unsigned* ticket = nullptr;
    cudaMalloc(&partial, 8 * sizeof(float));
    cudaMalloc(&ticket, sizeof(unsigned));
    cudaMemset(ticket, 0, sizeof(unsigned));
    for (int rep = 0; rep < 2 && e == cudaSuccess; ++rep)  // the ticket is reset for the next launch
      e = fv_launch(last_block, 8, 32, 0, 0, in, partial, ticket, out, variant);
  }
  if (is_case(argc, argv, "output_unwritten")) {
    float* fresh = nullptr;
    cudaMalloc(&fresh, kN * sizeof(float));
    e = fv_launch(reverse_copy, 1, kN, 0, 0, fresh, out, kN);
  }
  if (is_case(argc, argv, "kernel_boundary")) {
    e = fv_launch(write_all, 4, kN, 0, 0, out + 2 * kN, 2 * kN);
    if (e == cudaSuccess) e = fv_launch(reverse_copy, 4, kN, 0, 0, out + 2 * kN, out, 2 * kN);
  }
  if (report("launch", e) || report("sync", cudaDeviceSynchronize())) return 1;
  printf("OK\n");
  return 0;
}
