// cudasim shim of cub::DeviceRadixSort (pointer overloads): stable, [begin_bit, end_bit) of the bit-ordered keys.
#pragma once
#include "../util_sort.cuh"

namespace cub {
struct DeviceRadixSort {
  template <class K, class V, class NumItemsT>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes, const K* d_keys_in, K* d_keys_out,
                               const V* d_values_in, V* d_values_out, NumItemsT num_items, int begin_bit = 0,
                               int end_bit = sizeof(K) * 8, cudaStream_t = 0) {
    const int64_t n = static_cast<int64_t>(num_items);
    return cudasim_sort::run(d_temp_storage, temp_storage_bytes, d_keys_in, d_keys_out, d_values_in, d_values_out,
                             n, 1, cudasim_sort::Zero{}, cudasim_sort::Whole{n}, begin_bit, end_bit, false, true);
  }
  template <class K, class V, class NumItemsT>
  static cudaError_t SortPairsDescending(void* d_temp_storage, size_t& temp_storage_bytes, const K* d_keys_in,
                                         K* d_keys_out, const V* d_values_in, V* d_values_out, NumItemsT num_items,
                                         int begin_bit = 0, int end_bit = sizeof(K) * 8, cudaStream_t = 0) {
    const int64_t n = static_cast<int64_t>(num_items);
    return cudasim_sort::run(d_temp_storage, temp_storage_bytes, d_keys_in, d_keys_out, d_values_in, d_values_out,
                             n, 1, cudasim_sort::Zero{}, cudasim_sort::Whole{n}, begin_bit, end_bit, true, true);
  }
  template <class K, class NumItemsT>
  static cudaError_t SortKeys(void* d_temp_storage, size_t& temp_storage_bytes, const K* d_keys_in, K* d_keys_out,
                              NumItemsT num_items, int begin_bit = 0, int end_bit = sizeof(K) * 8, cudaStream_t = 0) {
    const int64_t n = static_cast<int64_t>(num_items);
    return cudasim_sort::run(d_temp_storage, temp_storage_bytes, d_keys_in, d_keys_out,
                             static_cast<const cudasim_sort::NoValue*>(nullptr),
                             static_cast<cudasim_sort::NoValue*>(nullptr), n, 1, cudasim_sort::Zero{},
                             cudasim_sort::Whole{n}, begin_bit, end_bit, false, true);
  }
  template <class K, class NumItemsT>
  static cudaError_t SortKeysDescending(void* d_temp_storage, size_t& temp_storage_bytes, const K* d_keys_in,
                                        K* d_keys_out, NumItemsT num_items, int begin_bit = 0,
                                        int end_bit = sizeof(K) * 8, cudaStream_t = 0) {
    const int64_t n = static_cast<int64_t>(num_items);
    return cudasim_sort::run(d_temp_storage, temp_storage_bytes, d_keys_in, d_keys_out,
                             static_cast<const cudasim_sort::NoValue*>(nullptr),
                             static_cast<cudasim_sort::NoValue*>(nullptr), n, 1, cudasim_sort::Zero{},
                             cudasim_sort::Whole{n}, begin_bit, end_bit, true, true);
  }
};
}  // namespace cub
