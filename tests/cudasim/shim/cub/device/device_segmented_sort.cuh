// cudasim shim of cub::DeviceSegmentedSort (pointer overloads). The Stable* calls keep equal keys in input order;
// SortPairs / SortKeys promise no order among equal keys, and the shim returns them in REVERSE input order, so a
// caller that relies on stability from them gets a different permutation here, as it may on a GPU.
#pragma once
#include "../util_sort.cuh"

namespace cub {
struct DeviceSegmentedSort {
#define CUDASIM_SEGSORT_PAIRS(NAME, DESC, STABLE)                                                                   \
  template <class K, class V, class BeginIt, class EndIt>                                                           \
  static cudaError_t NAME(void* d_temp_storage, size_t& temp_storage_bytes, const K* d_keys_in, K* d_keys_out,      \
                          const V* d_values_in, V* d_values_out, int64_t num_items, int64_t num_segments,          \
                          BeginIt d_begin_offsets, EndIt d_end_offsets, cudaStream_t = 0) {                         \
    return cudasim_sort::run(d_temp_storage, temp_storage_bytes, d_keys_in, d_keys_out, d_values_in, d_values_out, \
                             num_items, num_segments, d_begin_offsets, d_end_offsets, 0, int(sizeof(K) * 8), DESC, \
                             STABLE);                                                                               \
  }
#define CUDASIM_SEGSORT_KEYS(NAME, DESC, STABLE)                                                                     \
  template <class K, class BeginIt, class EndIt>                                                                    \
  static cudaError_t NAME(void* d_temp_storage, size_t& temp_storage_bytes, const K* d_keys_in, K* d_keys_out,      \
                          int64_t num_items, int64_t num_segments, BeginIt d_begin_offsets, EndIt d_end_offsets,   \
                          cudaStream_t = 0) {                                                                       \
    return cudasim_sort::run(d_temp_storage, temp_storage_bytes, d_keys_in, d_keys_out,                            \
                             static_cast<const cudasim_sort::NoValue*>(nullptr),                                    \
                             static_cast<cudasim_sort::NoValue*>(nullptr), num_items, num_segments,                 \
                             d_begin_offsets, d_end_offsets, 0, int(sizeof(K) * 8), DESC, STABLE);                  \
  }
  CUDASIM_SEGSORT_PAIRS(SortPairs, false, false)
  CUDASIM_SEGSORT_PAIRS(SortPairsDescending, true, false)
  CUDASIM_SEGSORT_PAIRS(StableSortPairs, false, true)
  CUDASIM_SEGSORT_PAIRS(StableSortPairsDescending, true, true)
  CUDASIM_SEGSORT_KEYS(SortKeys, false, false)
  CUDASIM_SEGSORT_KEYS(SortKeysDescending, true, false)
  CUDASIM_SEGSORT_KEYS(StableSortKeys, false, true)
  CUDASIM_SEGSORT_KEYS(StableSortKeysDescending, true, true)
#undef CUDASIM_SEGSORT_PAIRS
#undef CUDASIM_SEGSORT_KEYS
};
}  // namespace cub
