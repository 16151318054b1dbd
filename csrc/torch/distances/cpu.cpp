// The CPU backend of the sample-distance ops: the kernel calls of DistanceOps<DistancesCpu> (ops.h) on the tables
// of csrc/cpu/distances_kernels.h.
#include <ATen/Parallel.h>

#include "cpu/distances_kernels.h"
#include "torch/backend_cpu.h"
#include "torch/distances/ops.h"

namespace fastvae {
namespace {

struct DistancesCpu : CpuBackend {
  static constexpr bool kZeroedGrads = false;  // the kernel writes every entry (the permutations are checked)
  static void check_mmd(const char*, const at::Tensor&, const std::optional<at::Tensor>&, const MmdSpec&, bool) {}
  static void check_sw(const char*, const at::Tensor&) {}

  // Every row of perm (rows x N, contiguous) is a permutation of 0 .. N-1: one pass with a bitmap per row. An index
  // out of range would be an out-of-bounds access in the kernel, a repeated one would leave gradient entries
  // unwritten.
  static void check_permutations(const char* op, const at::Tensor& perm, int64_t rows, int64_t N, const char* name) {
    const int32_t* p = perm.data_ptr<int32_t>();
    std::vector<uint8_t> bad(static_cast<size_t>(rows), 0);
    at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / N), [&](int64_t b, int64_t e) {
      std::vector<uint64_t> seen(static_cast<size_t>((N + 63) / 64));
      for (int64_t r = b; r < e; ++r) {
        std::fill(seen.begin(), seen.end(), 0);
        for (int64_t i = 0; i < N; ++i) {
          const int64_t v = p[r * N + i];
          const uint64_t bit = uint64_t(1) << (v & 63);
          if (v < 0 || v >= N || (seen[v >> 6] & bit)) {
            bad[r] = 1;
            break;
          }
          seen[v >> 6] |= bit;
        }
      }
    });
    for (int64_t r = 0; r < rows; ++r)
      TORCH_CHECK_VALUE(!bad[r], "fastvae.", op, ": ", name, " must hold a permutation of 0 .. ", N - 1,
                        " in every row (the one the forward returned); row ", r, " is not one");
  }

  template <class T>
  static void mmd_fwd(const char*, const MmdProblem<T>& pr, T* out, const at::Tensor&) {
    cpu::distance_kernels<T>().mmd_fwd(pr, out);
  }
  template <class T>
  static void mmd_bwd(const char*, const MmdProblem<T>& pr, const T* g, T* grad_x, T* grad_y, const at::Tensor&) {
    cpu::distance_kernels<T>().mmd_bwd(pr, g, grad_x, grad_y);
  }
  template <class T>
  static void sw_fwd(const char*, const T* px, const T* py, T* out, int32_t* perm_x, int32_t* perm_y, int64_t B,
                     int64_t L, int64_t N, double p, const at::Tensor&) {
    cpu::distance_kernels<T>().sw_fwd(px, py, out, perm_x, perm_y, B, L, N, p);
  }
  template <class T>
  static void sw_bwd(const char*, const T* g, const T* px, const T* py, const int32_t* perm_x, const int32_t* perm_y,
                     T* gpx, T* gpy, int64_t B, int64_t L, int64_t N, double p) {
    cpu::distance_kernels<T>().sw_bwd(g, px, py, perm_x, perm_y, gpx, gpy, B, L, N, p);
  }
};

}  // namespace
}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CPU, m) { fastvae::register_distance_ops<fastvae::DistancesCpu>(m); }
