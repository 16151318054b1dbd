// Global and shared memory: atomics of every type, accesses one element past (or before) a buffer, float16 and
// bfloat16 through cuda_fp16.h / cuda_bf16.h, and a misaligned vector load.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.h"

struct Counters {
  int i;
  unsigned u;
  unsigned long long ull;
  float f;
  double d;
  int mx, mn;
  unsigned inc, bits;
  int cas_sum, exch, sub;
  int hist[16];
};

__global__ void atomics(Counters* c) {
  __shared__ int hist[16];
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (threadIdx.x < 16) hist[threadIdx.x] = 0;
  __syncthreads();
  atomicAdd(&c->i, 1);
  atomicAdd(&c->u, 2u);
  atomicAdd(&c->ull, 1ull << 33);
  atomicAdd(&c->f, 0.5f);
  atomicAdd(&c->d, 0.25);
  atomicMax(&c->mx, t);
  atomicMin(&c->mn, -t);
  atomicInc(&c->inc, 9u);
  atomicOr(&c->bits, 1u << (t % 32));
  atomicSub(&c->sub, 3);
  atomicExch(&c->exch, t);
  int old = c->cas_sum, assumed;
  do {
    assumed = old;
    old = atomicCAS(&c->cas_sum, assumed, assumed + t);
  } while (old != assumed);
  atomicAdd(&hist[t % 16], 1);  // shared-memory atomics
  __syncthreads();
  if (threadIdx.x < 16) atomicAdd(&c->hist[threadIdx.x], hist[threadIdx.x]);
}

// Off by one: the thread with i == n writes one element past the end.
__global__ void write_one_past(float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) out[i] = 1.0f;
}

// Reads in[i + 1]: the last thread reads one element past the end.
__global__ void read_one_past(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i + 1];
}

// Reads in[i - 1]: the first thread reads one element before the start.
__global__ void read_one_before(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i - 1];
}

// A 16-byte vector load from an address that is a multiple of 4 only.
__global__ void misaligned_float4(const float* in, float* out) {
  const float4 v = *reinterpret_cast<const float4*>(in + 1 + 4 * threadIdx.x);
  out[threadIdx.x] = v.x + v.y + v.z + v.w;
}

// Round trips float -> half / bfloat16 -> float, 16-bit arithmetic, and a shuffle of halves.
__global__ void sixteen_bit(const float* in, float* h_out, float* b_out, unsigned short* h_bits,
                            unsigned short* b_bits, float* h_sum, float* h_swap, int n) {
  const int i = threadIdx.x;
  const float x = i < n ? in[i] : 0.0f;
  const __half h = __float2half_rn(x);
  const __nv_bfloat16 b = __float2bfloat16_rn(x);
  const __half swapped = __shfl_xor_sync(0xffffffffu, h, 1);
  if (i < n) {
    h_out[i] = __half2float(h);
    b_out[i] = __bfloat162float(b);
    h_bits[i] = __half_as_ushort(h);
    b_bits[i] = __bfloat16_as_ushort(b);
    h_sum[i] = __half2float(__hadd(h, __float2half_rn(1.0f)));
    h_swap[i] = __half2float(swapped);
  }
}

int main(int argc, char** argv) {
  if (is_case(argc, argv, "atomics")) {
    Counters init{};
    init.mx = -1;
    init.mn = 1;
    Counters* c = to_device(std::vector<Counters>(1, init));
    if (report("launch", fv_launch(atomics, 4, 128, 0, 0, c))) return 1;
    const Counters r = to_host(c, 1)[0];
    const int N = 512;
    bool ok = r.i == N && r.u == 2u * N && r.ull == (static_cast<unsigned long long>(N) << 33) && r.f == 0.5f * N &&
              r.d == 0.25 * N && r.mx == N - 1 && r.mn == -(N - 1) && r.inc == N % 10 && r.bits == 0xffffffffu &&
              r.cas_sum == N * (N - 1) / 2 && r.exch >= 0 && r.exch < N && r.sub == -3 * N;
    for (int k = 0; k < 16; ++k) ok = ok && r.hist[k] == N / 16;
    printf("i %d u %u ull %llu f %g d %g max %d min %d inc %u bits %x cas %d exch %d sub %d hist0 %d\n", r.i, r.u,
           r.ull, r.f, r.d, r.mx, r.mn, r.inc, r.bits, r.cas_sum, r.exch, r.sub, r.hist[0]);
    printf(ok ? "OK\n" : "WRONG\n");
    return 0;
  }
  const int n = 1000;
  float* in = to_device(std::vector<float>(n, 1.0f));
  float* out = to_device(std::vector<float>(n, 0.0f));
  cudaError_t e;
  if (is_case(argc, argv, "write_one_past")) e = fv_launch(write_one_past, 4, 256, 0, 0, out, n);
  else if (is_case(argc, argv, "read_one_past")) e = fv_launch(read_one_past, 4, 256, 0, 0, in, out, n);
  else if (is_case(argc, argv, "read_one_before")) e = fv_launch(read_one_before, 4, 256, 0, 0, in, out, n);
  else if (is_case(argc, argv, "misaligned_float4")) e = fv_launch(misaligned_float4, 1, 32, 0, 0, in, out);
  else if (is_case(argc, argv, "sixteen_bit")) {
    const std::vector<float> x = {1.0f, 0.1f, -2.5f, 65504.0f, 70000.0f, 2049.0f, 2051.0f, 1e-8f,
                                  1.00390625f, 1.01171875f, 3.14159265f, 6.1e-5f, -0.0f, 1e-3f};
    const int m = static_cast<int>(x.size());
    float* dx = to_device(x);
    float* hf = to_device(std::vector<float>(m));
    float* bf = to_device(std::vector<float>(m));
    unsigned short* hb = to_device(std::vector<unsigned short>(m));
    unsigned short* bb = to_device(std::vector<unsigned short>(m));
    float* hs = to_device(std::vector<float>(m));
    float* hw = to_device(std::vector<float>(m));
    if (report("launch", fv_launch(sixteen_bit, 1, 32, 0, 0, dx, hf, bf, hb, bb, hs, hw, m))) return 1;
    const auto h1 = to_host(hf, m), b1 = to_host(bf, m), s1 = to_host(hs, m), w1 = to_host(hw, m);
    const auto h2 = to_host(hb, m), b2 = to_host(bb, m);
    for (int i = 0; i < m; ++i)
      printf("x %.9g half %.9g %04x bf16 %.9g %04x half+1 %.9g swap %.9g\n", x[i], h1[i], h2[i], b1[i], b2[i], s1[i],
             w1[i]);
    printf("OK\n");
    return 0;
  } else {
    printf("unknown case\n");
    return 2;
  }
  if (report("launch", e)) return 1;
  if (report("sync", cudaDeviceSynchronize())) return 1;
  printf("OK\n");
  return 0;
}
