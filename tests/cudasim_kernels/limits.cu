// Launch limits of sm_90: block and grid dimensions, shared memory with and without the opt-in attribute, static
// + dynamic shared memory counted per kernel, and an access one past the dynamic shared memory.
#include "common.h"

__global__ void mark(int* out) {
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) out[b] = 1;
}

// Fills n floats of dynamic shared memory and sums them in double.
__global__ void dyn_fill(double* out, int n) {
  FV_DYNAMIC_SHARED(float, buf);
  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = static_cast<float>(i % 1024);
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0;
    for (int i = 0; i < n; ++i) s += buf[i];
    out[0] = s;
  }
}

// Writes one float past its dynamic shared memory.
__global__ void dyn_one_past(float* out, int n) {
  FV_DYNAMIC_SHARED(float, buf);
  for (int i = threadIdx.x; i <= n; i += blockDim.x) buf[i] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = buf[0];
}

constexpr int kBig = 10240;  // 40 KiB of float

// 40 KiB of static shared memory plus n floats of dynamic.
__global__ void static_and_dynamic(float* out, int n) {
  __shared__ float big[kBig];
  FV_DYNAMIC_SHARED(float, dyn);
  for (int i = threadIdx.x; i < kBig; i += blockDim.x) big[i] = 1.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) dyn[i] = 2.0f;
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = big[kBig - 1] + (n ? dyn[n - 1] : 0.0f);
}

// Another 40 KiB kernel: static shared memory is counted per kernel, not summed over the program.
__global__ void other_static(float* out) {
  __shared__ float other[kBig];
  for (int i = threadIdx.x; i < kBig; i += blockDim.x) other[i] = 3.0f;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = other[kBig - 1];
}

int launch_case(int argc, char** argv) {
  int* out = to_device(std::vector<int>(65536, 0));
  cudaError_t e = cudaSuccess;
  if (is_case(argc, argv, "threads_1025")) e = fv_launch(mark, 1, 1025, 0, 0, out);
  else if (is_case(argc, argv, "threads_1024")) e = fv_launch(mark, 1, dim3(16, 8, 8), 0, 0, out);
  else if (is_case(argc, argv, "block_z_65")) e = fv_launch(mark, 1, dim3(1, 1, 65), 0, 0, out);
  else if (is_case(argc, argv, "block_x_2048")) e = fv_launch(mark, 1, dim3(2048, 1, 1), 0, 0, out);
  else if (is_case(argc, argv, "grid_y_65536")) e = fv_launch(mark, dim3(1, 65536, 1), 1, 0, 0, out);
  else if (is_case(argc, argv, "grid_z_65536")) e = fv_launch(mark, dim3(1, 1, 65536), 1, 0, 0, out);
  else if (is_case(argc, argv, "grid_zero")) e = fv_launch(mark, 0, 32, 0, 0, out);
  else if (is_case(argc, argv, "block_zero")) e = fv_launch(mark, 1, dim3(32, 0, 1), 0, 0, out);
  else if (is_case(argc, argv, "grid_y_65535")) {
    e = fv_launch(mark, dim3(1, 65535, 1), 1, 0, 0, out);
    if (e == cudaSuccess) {
      const std::vector<int> r = to_host(out, 65535);
      for (int b = 0; b < 65535; ++b)
        if (r[b] != 1) {
          printf("block %d did not run\n", b);
          return 0;
        }
    }
  } else {
    return -1;
  }
  if (report("launch", e)) return 1;
  printf("OK\n");
  return 0;
}

int main(int argc, char** argv) {
  const int r = launch_case(argc, argv);
  if (r >= 0) return r;
  double* dsum = to_device(std::vector<double>(1, 0.0));
  float* fout = to_device(std::vector<float>(4, 0.0f));
  const int k48 = 48 * 1024, k49 = 49 * 1024, k227 = 227 * 1024;
  if (is_case(argc, argv, "smem_48k")) {  // exactly the default limit
    if (report("launch", fv_launch(dyn_fill, 1, 256, k48, 0, dsum, k48 / 4))) return 1;
  } else if (is_case(argc, argv, "smem_49k")) {  // over it, without the attribute
    if (report("launch", fv_launch(dyn_fill, 1, 256, k49, 0, dsum, k49 / 4))) return 1;
  } else if (is_case(argc, argv, "smem_227k")) {  // with the attribute, up to the opt-in maximum
    if (report("attribute", cudaFuncSetAttribute(dyn_fill, cudaFuncAttributeMaxDynamicSharedMemorySize, k227))) return 1;
    if (report("launch", fv_launch(dyn_fill, 1, 256, k227, 0, dsum, k227 / 4))) return 1;
    const double s = to_host(dsum, 1)[0];
    double want = 0;
    for (int i = 0; i < k227 / 4; ++i) want += i % 1024;
    printf("sum %.1f want %.1f\n", s, want);
    if (s != want) {
      printf("WRONG\n");
      return 0;
    }
  } else if (is_case(argc, argv, "smem_228k_attribute")) {  // the attribute itself refuses more
    if (report("attribute", cudaFuncSetAttribute(dyn_fill, cudaFuncAttributeMaxDynamicSharedMemorySize, k227 + 1)))
      return 1;
  } else if (is_case(argc, argv, "smem_over_attribute")) {  // more dynamic memory than the attribute allows
    if (report("attribute", cudaFuncSetAttribute(dyn_fill, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024)))
      return 1;
    if (report("launch", fv_launch(dyn_fill, 1, 256, 64 * 1024 + 4, 0, dsum, 16 * 1024 + 1))) return 1;
  } else if (is_case(argc, argv, "static_fits")) {  // 40 KiB static + 8 KiB dynamic = 48 KiB; and another kernel
    if (report("launch", fv_launch(static_and_dynamic, 2, 128, 8 * 1024, 0, fout, 2048))) return 1;
    if (report("launch", fv_launch(other_static, 1, 128, 0, 0, fout + 2))) return 1;
    const std::vector<float> h = to_host(fout, 3);
    if (h[0] != 3.0f || h[1] != 3.0f || h[2] != 3.0f) {
      printf("WRONG %g %g %g\n", h[0], h[1], h[2]);
      return 0;
    }
  } else if (is_case(argc, argv, "static_over")) {  // 40 KiB static + 9 KiB dynamic, first launch
    if (report("launch", fv_launch(static_and_dynamic, 2, 128, 9 * 1024, 0, fout, 2304))) return 1;
  } else if (is_case(argc, argv, "static_over_later")) {  // the same after a launch that fits
    if (report("launch 1", fv_launch(static_and_dynamic, 2, 128, 1024, 0, fout, 256))) return 1;
    if (report("launch 2", fv_launch(static_and_dynamic, 2, 128, 9 * 1024, 0, fout, 2304))) return 1;
  } else if (is_case(argc, argv, "dyn_one_past")) {
    if (report("launch", fv_launch(dyn_one_past, 1, 64, 1024, 0, fout, 256))) return 1;
    if (report("sync", cudaDeviceSynchronize())) return 1;
  } else {
    printf("unknown case\n");
    return 2;
  }
  printf("OK\n");
  return 0;
}
