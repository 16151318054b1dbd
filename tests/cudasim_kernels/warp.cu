// Warp collectives: shuffles of every kind and width, votes, __syncwarp, and the errors of masks that name lanes
// which do not arrive (exited, waiting elsewhere, or not named but read).
#include "common.h"

// out[lane * kOut + k]: the k-th result of each lane of the first warp (the second warp repeats the work).
constexpr int kOut = 12;

__global__ void shuffles(int* out) {
  const int lane = threadIdx.x % 32;
  const int v = 100 + lane;
  int r[kOut];
  r[0] = __shfl_sync(0xffffffffu, v, 3);                 // broadcast lane 3
  r[1] = __shfl_sync(0xffffffffu, v, lane + 9, 8);       // within groups of 8, index mod 8
  r[2] = __shfl_up_sync(0xffffffffu, v, 1);              // lane 0 keeps its own
  r[3] = __shfl_down_sync(0xffffffffu, v, 2, 16);        // lanes 14, 15, 30, 31 keep their own
  r[4] = __shfl_xor_sync(0xffffffffu, v, 5);             // butterfly
  int s = v;
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  r[5] = s;                                              // warp sum in every lane
  r[6] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 3 == 0));
  r[7] = __any_sync(0xffffffffu, lane == 17);
  r[8] = __all_sync(0xffffffffu, lane < 31);
  __syncwarp();
  const double d = __shfl_down_sync(0xffffffffu, 0.5 * lane, 1);
  r[9] = static_cast<int>(4 * d);
  r[10] = static_cast<int>(__activemask() == 0xffffffffu);
  // a half-warp shuffle with a half-warp mask
  r[11] = lane < 16 ? __shfl_xor_sync(0x0000ffffu, v, 1) : __shfl_xor_sync(0xffff0000u, v, 2);
  if (threadIdx.x < 32)
    for (int k = 0; k < kOut; ++k) out[lane * kOut + k] = r[k];
}

// Lane 7 skips the shuffle the full mask expects it at, and exits.
__global__ void lane_missing(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x % 32 != 7) v = __shfl_sync(0xffffffffu, v, 0);
  out[threadIdx.x] = v;
}

// Lanes 0-15 name only themselves, but lane 3 reads lane 20.
__global__ void read_unnamed_lane(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x < 16) v = __shfl_sync(0x0000ffffu, v, threadIdx.x == 3 ? 20 : 0);
  out[threadIdx.x] = v;
}

// The lanes of one warp wait at two different collectives, each naming all 32 lanes.
__global__ void mismatched_collectives(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x < 16)
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  else
    v = static_cast<int>(__ballot_sync(0xffffffffu, v & 1));
  out[threadIdx.x] = v;
}

// Half the warp waits at a shuffle naming the other half, which waits at __syncthreads.
__global__ void shuffle_vs_barrier(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x < 16)
    v = __shfl_xor_sync(0xffffffffu, v, 16);
  else
    __syncthreads();
  out[threadIdx.x] = v;
}

// The calling lane is not in its own mask.
__global__ void mask_without_self(int* out) {
  out[threadIdx.x] = __shfl_sync(0xfffffffeu, static_cast<int>(threadIdx.x), 1);
}

int expected(int lane, int k) {
  const int v = 100 + lane;
  switch (k) {
    case 0: return 103;
    case 1: return 100 + (lane & ~7) + ((lane + 9) & 7);
    case 2: return lane == 0 ? v : v - 1;
    case 3: return (lane % 16) + 2 >= 16 ? v : v + 2;
    case 4: return 100 + (lane ^ 5);
    case 5: return 32 * 100 + 31 * 32 / 2;
    case 6: {
      int b = 0;
      for (int j = 0; j < 32; j += 3) b |= 1 << j;
      return b;
    }
    case 7: return 1;
    case 8: return 0;
    case 9: return lane == 31 ? 4 * lane / 2 : 4 * (lane + 1) / 2;
    case 10: return 1;
    case 11: return lane < 16 ? 100 + (lane ^ 1) : 100 + (lane ^ 2);
  }
  return -1;
}

int main(int argc, char** argv) {
  int* out = to_device(std::vector<int>(64 * kOut, -1));
  cudaError_t e;
  if (is_case(argc, argv, "shuffles")) {
    if (report("launch", fv_launch(shuffles, 1, 64, 0, 0, out))) return 1;
    const std::vector<int> r = to_host(out, 32 * kOut);
    int bad = 0;
    for (int lane = 0; lane < 32; ++lane)
      for (int k = 0; k < kOut; ++k)
        if (r[lane * kOut + k] != expected(lane, k)) {
          if (bad++ < 10) printf("lane %d result %d: %d, want %d\n", lane, k, r[lane * kOut + k], expected(lane, k));
        }
    printf(bad ? "WRONG\n" : "OK\n");
    return 0;
  }
  if (is_case(argc, argv, "lane_missing")) e = fv_launch(lane_missing, 1, 64, 0, 0, out);
  else if (is_case(argc, argv, "read_unnamed")) e = fv_launch(read_unnamed_lane, 1, 32, 0, 0, out);
  else if (is_case(argc, argv, "mismatch")) e = fv_launch(mismatched_collectives, 1, 32, 0, 0, out);
  else if (is_case(argc, argv, "vs_barrier")) e = fv_launch(shuffle_vs_barrier, 1, 32, 0, 0, out);
  else if (is_case(argc, argv, "without_self")) e = fv_launch(mask_without_self, 1, 32, 0, 0, out);
  else {
    printf("unknown case\n");
    return 2;
  }
  if (report("launch", e)) return 1;
  printf("OK\n");
  return 0;
}
