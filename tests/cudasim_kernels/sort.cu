// CUB as the project uses it: device-wide radix and segmented sorts (under the execution model: the host
// implementations in tests/cudasim/shim/cub), and block / warp reductions inside kernels.
#include <cub/cub.cuh>

#include <algorithm>
#include <cmath>

#include "common.h"

constexpr int kBlock = 128;

__global__ void block_reduce_kernel(const int* in, int* out) {
  using Reduce = cub::BlockReduce<int, kBlock>;
  __shared__ Reduce::TempStorage temp;
  const int s = Reduce(temp).Sum(in[blockIdx.x * kBlock + threadIdx.x]);
  if (threadIdx.x == 0) out[blockIdx.x] = s;
}

__global__ void warp_reduce_kernel(const int* in, int* out) {
  using Reduce = cub::WarpReduce<int>;
  __shared__ Reduce::TempStorage temp[kBlock / 32];
  const int w = threadIdx.x / 32;
  const int s = Reduce(temp[w]).Sum(in[threadIdx.x]);
  if (threadIdx.x % 32 == 0) out[w] = s;
}

template <class K>
bool check_segments(const char* what, const std::vector<K>& keys, const std::vector<int>& vals,
                    const std::vector<K>& kout, const std::vector<int>& vout, const std::vector<int>& off, bool& stable) {
  bool ok = true;
  stable = true;
  for (size_t s = 0; s + 1 < off.size(); ++s)
    for (int i = off[s]; i < off[s + 1]; ++i) {
      ok = ok && kout[i] == keys[off[s] + vout[i]];  // the pair travelled together
      if (i > off[s]) {
        ok = ok && !(kout[i] < kout[i - 1]);
        if (kout[i] == kout[i - 1] && vout[i] < vout[i - 1]) stable = false;
      }
    }
  (void)vals;
  printf("%s sorted %s ties %s\n", what, ok ? "yes" : "no", stable ? "stable" : "reordered");
  return ok;
}

int segmented() {
  // 3 segments [0,7) [7,7) [7,15), items 15..16 outside every segment; many ties
  const std::vector<float> keys = {3, 1, 3, 2, 1, 3, 0.5f, 2, 2, -1, 2, -1, 7, 2, 2, 99, 98};
  const std::vector<int> off = {0, 7, 7, 15};
  std::vector<int> vals(keys.size());
  for (size_t s = 0; s + 1 < off.size(); ++s)
    for (int i = off[s]; i < off[s + 1]; ++i) vals[i] = i - off[s];
  vals[15] = vals[16] = -5;
  const int n = static_cast<int>(keys.size()), segs = static_cast<int>(off.size()) - 1;
  float* dk = to_device(keys);
  int* dv = to_device(vals);
  int* doff = to_device(off);
  float* ko = to_device(std::vector<float>(n, -7.0f));
  int* vo = to_device(std::vector<int>(n, -7));
  size_t bytes = 0;
  if (report("query", cub::DeviceSegmentedSort::StableSortPairs(nullptr, bytes, dk, ko, dv, vo, n, segs, doff, doff + 1)))
    return 1;
  void* temp = nullptr;
  if (report("cudaMalloc", cudaMalloc(&temp, bytes))) return 1;
  bool ok = true, stable = false;
  if (report("StableSortPairs", cub::DeviceSegmentedSort::StableSortPairs(temp, bytes, dk, ko, dv, vo, n, segs, doff,
                                                                          doff + 1)))
    return 1;
  std::vector<float> k1 = to_host(ko, n);
  std::vector<int> v1 = to_host(vo, n);
  ok = check_segments("StableSortPairs", keys, vals, k1, v1, off, stable) && stable && ok;
  ok = ok && k1[15] == -7.0f && k1[16] == -7.0f && v1[15] == -7;  // outside the segments: untouched
  if (report("SortPairs", cub::DeviceSegmentedSort::SortPairs(temp, bytes, dk, ko, dv, vo, n, segs, doff, doff + 1)))
    return 1;
  k1 = to_host(ko, n);
  v1 = to_host(vo, n);
  ok = check_segments("SortPairs", keys, vals, k1, v1, off, stable) && ok;
  printf(ok ? "OK\n" : "WRONG\n");
  return 0;
}

int radix() {
  bool ok = true;
  // unsigned keys sorted on bits [4, 8) only: stable on everything else
  std::vector<unsigned> uk = {0x35, 0x14, 0x31, 0x22, 0x1f, 0x10, 0x2a, 0x3c, 0x11, 0x24};
  std::vector<int> uv(uk.size());
  for (size_t i = 0; i < uv.size(); ++i) uv[i] = static_cast<int>(i);
  const int n = static_cast<int>(uk.size());
  unsigned* dk = to_device(uk);
  int* dv = to_device(uv);
  unsigned* ko = to_device(std::vector<unsigned>(n));
  int* vo = to_device(std::vector<int>(n));
  size_t bytes = 0;
  if (report("query", cub::DeviceRadixSort::SortPairs(nullptr, bytes, dk, ko, dv, vo, n, 4, 8))) return 1;
  void* temp = nullptr;
  if (report("cudaMalloc", cudaMalloc(&temp, bytes))) return 1;
  if (report("SortPairs", cub::DeviceRadixSort::SortPairs(temp, bytes, dk, ko, dv, vo, n, 4, 8))) return 1;
  std::vector<int> want(uv);
  std::stable_sort(want.begin(), want.end(), [&](int a, int b) { return (uk[a] >> 4 & 15) < (uk[b] >> 4 & 15); });
  const std::vector<int> got = to_host(vo, n);
  const std::vector<unsigned> gotk = to_host(ko, n);
  for (int i = 0; i < n; ++i) ok = ok && got[i] == want[i] && gotk[i] == uk[want[i]];
  printf("bits [4,8) %s\n", ok ? "stable" : "wrong");
  // float keys: negatives, infinities, -0.0 and +0.0 equal (kept in input order)
  const std::vector<float> fk = {2.5f, -0.0f, -1.0f, INFINITY, 0.0f, -INFINITY, -0.0f, 1e-30f, -1e-30f};
  std::vector<int> fv(fk.size());
  for (size_t i = 0; i < fv.size(); ++i) fv[i] = static_cast<int>(i);
  const int m = static_cast<int>(fk.size());
  float* dfk = to_device(fk);
  int* dfv = to_device(fv);
  float* fko = to_device(std::vector<float>(m));
  int* fvo = to_device(std::vector<int>(m));
  size_t fbytes = 0;
  if (report("query", cub::DeviceRadixSort::SortPairs(nullptr, fbytes, dfk, fko, dfv, fvo, m))) return 1;
  void* ftemp = nullptr;
  if (report("cudaMalloc", cudaMalloc(&ftemp, fbytes))) return 1;
  if (report("SortPairs", cub::DeviceRadixSort::SortPairs(ftemp, fbytes, dfk, fko, dfv, fvo, m))) return 1;
  const std::vector<int> fgot = to_host(fvo, m);
  const std::vector<int> fwant = {5, 2, 8, 1, 4, 6, 7, 0, 3};
  printf("float order");
  for (int i = 0; i < m; ++i) {
    printf(" %d", fgot[i]);
    ok = ok && fgot[i] == fwant[i];
  }
  printf("\n");
  printf(ok ? "OK\n" : "WRONG\n");
  return 0;
}

int reductions() {
  std::vector<int> h(3 * kBlock);
  for (size_t i = 0; i < h.size(); ++i) h[i] = static_cast<int>(i * 7 % 13) - 6;
  int* in = to_device(h);
  int* out = to_device(std::vector<int>(3, 0));
  if (report("launch", fv_launch(block_reduce_kernel, 3, kBlock, 0, 0, in, out))) return 1;
  const std::vector<int> b = to_host(out, 3);
  bool ok = true;
  for (int k = 0; k < 3; ++k) {
    int want = 0;
    for (int i = 0; i < kBlock; ++i) want += h[k * kBlock + i];
    ok = ok && b[k] == want;
  }
  int* wout = to_device(std::vector<int>(kBlock / 32, 0));
  if (report("launch", fv_launch(warp_reduce_kernel, 1, kBlock, 0, 0, in, wout))) return 1;
  const std::vector<int> w = to_host(wout, kBlock / 32);
  for (int k = 0; k < kBlock / 32; ++k) {
    int want = 0;
    for (int i = 0; i < 32; ++i) want += h[k * 32 + i];
    ok = ok && w[k] == want;
  }
  printf(ok ? "OK\n" : "WRONG\n");
  return 0;
}

int main(int argc, char** argv) {
  if (is_case(argc, argv, "segmented")) return segmented();
  if (is_case(argc, argv, "radix")) return radix();
  if (is_case(argc, argv, "reductions")) return reductions();
  printf("unknown case\n");
  return 2;
}
