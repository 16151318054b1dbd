// cudasim shim of cub::DeviceSegmentedRadixSort (pointer overloads): stable within each segment.
#pragma once
#include "../util_sort.cuh"

namespace cub {
struct DeviceSegmentedRadixSort {
  template <class K, class V, class BeginIt, class EndIt>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes, const K* d_keys_in, K* d_keys_out,
                               const V* d_values_in, V* d_values_out, int64_t num_items, int64_t num_segments,
                               BeginIt d_begin_offsets, EndIt d_end_offsets, int begin_bit = 0,
                               int end_bit = sizeof(K) * 8, cudaStream_t = 0) {
    return cudasim_sort::run(d_temp_storage, temp_storage_bytes, d_keys_in, d_keys_out, d_values_in, d_values_out,
                             num_items, num_segments, d_begin_offsets, d_end_offsets, begin_bit, end_bit, false, true);
  }
  template <class K, class BeginIt, class EndIt>
  static cudaError_t SortKeys(void* d_temp_storage, size_t& temp_storage_bytes, const K* d_keys_in, K* d_keys_out,
                              int64_t num_items, int64_t num_segments, BeginIt d_begin_offsets, EndIt d_end_offsets,
                              int begin_bit = 0, int end_bit = sizeof(K) * 8, cudaStream_t = 0) {
    return cudasim_sort::run(d_temp_storage, temp_storage_bytes, d_keys_in, d_keys_out,
                             static_cast<const cudasim_sort::NoValue*>(nullptr),
                             static_cast<cudasim_sort::NoValue*>(nullptr), num_items, num_segments, d_begin_offsets,
                             d_end_offsets, begin_bit, end_bit, false, true);
  }
};
}  // namespace cub
