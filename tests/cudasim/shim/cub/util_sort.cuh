// cudasim shim: the key order of CUB's radix-based sorts, on the host.
#pragma once
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace cub {
namespace cudasim_sort {

template <size_t N> struct UIntOf;
template <> struct UIntOf<1> { using type = uint8_t; };
template <> struct UIntOf<2> { using type = uint16_t; };
template <> struct UIntOf<4> { using type = uint32_t; };
template <> struct UIntOf<8> { using type = uint64_t; };

template <class K>
constexpr bool is_float_key() {
  return std::is_floating_point<K>::value || std::is_same<K, __half>::value || std::is_same<K, __nv_bfloat16>::value;
}

// CUB's bit-ordered form of a key: unsigned as is; signed with the sign bit flipped; floats with the sign bit
// flipped when positive and every bit flipped when negative, -0.0 taken as +0.0 (CUB sorts them as equal and
// keeps their order). Descending sorts invert it.
template <class K>
typename UIntOf<sizeof(K)>::type ordered_bits(const K& key, bool descending) {
  using U = typename UIntOf<sizeof(K)>::type;
  static_assert(std::is_integral<K>::value || is_float_key<K>(), "cub shim: unsupported key type");
  U u;
  std::memcpy(&u, &key, sizeof(K));
  constexpr U sign = static_cast<U>(U(1) << (8 * sizeof(K) - 1));
  if (is_float_key<K>()) {
    if (u == sign) u = 0;  // -0.0
    u = (u & sign) ? static_cast<U>(~u) : static_cast<U>(u ^ sign);
  } else if (std::is_signed<K>::value) {
    u = static_cast<U>(u ^ sign);
  }
  return descending ? static_cast<U>(~u) : u;
}

inline size_t align256(size_t n) { return (n + 255) / 256 * 256; }

// Temporary storage: the sorted order and a copy of the input (so that outputs may alias inputs).
template <class K, class V>
size_t temp_bytes(int64_t n) {
  const size_t m = static_cast<size_t>(n < 0 ? 0 : n);
  return 256 + align256(m * sizeof(int64_t)) + align256(m * sizeof(K)) + align256(m * sizeof(V));
}

struct NoValue {};

// Sorts the items [b, e) of keys_in (+ values) into keys_out (+ values) using the temp storage. `stable`: equal
// keys keep their input order; otherwise they come out in reverse input order (any order is CUB's contract; this
// one differs from the stable one whenever there are ties, so code that relies on stability fails here).
template <class K, class V>
void sort_range(const K* keys_in, K* keys_out, const V* vals_in, V* vals_out, int64_t b, int64_t e, int begin_bit,
                int end_bit, bool descending, bool stable, char* temp) {
  const int64_t n = e - b;
  if (n <= 0) return;
  using U = typename UIntOf<sizeof(K)>::type;
  int64_t* idx = reinterpret_cast<int64_t*>(temp + 256);
  K* kcopy = reinterpret_cast<K*>(temp + 256 + align256(static_cast<size_t>(n) * sizeof(int64_t)));
  V* vcopy = reinterpret_cast<V*>(reinterpret_cast<char*>(kcopy) + align256(static_cast<size_t>(n) * sizeof(K)));
  std::memcpy(kcopy, keys_in + b, static_cast<size_t>(n) * sizeof(K));
  if (vals_in) std::memcpy(vcopy, vals_in + b, static_cast<size_t>(n) * sizeof(V));
  const int bits = end_bit - begin_bit;
  const U mask = bits >= static_cast<int>(8 * sizeof(U)) ? static_cast<U>(~U(0)) : static_cast<U>((U(1) << bits) - 1);
  auto digit = [&](int64_t i) { return static_cast<U>((ordered_bits(kcopy[i], descending) >> begin_bit) & mask); };
  for (int64_t i = 0; i < n; ++i) idx[i] = i;
  if (stable)
    std::stable_sort(idx, idx + n, [&](int64_t x, int64_t y) { return digit(x) < digit(y); });
  else
    std::sort(idx, idx + n, [&](int64_t x, int64_t y) { return digit(x) < digit(y) || (digit(x) == digit(y) && x > y); });
  for (int64_t i = 0; i < n; ++i) keys_out[b + i] = kcopy[idx[i]];
  if (vals_out)
    for (int64_t i = 0; i < n; ++i) vals_out[b + i] = vcopy[idx[i]];
}

// The common frame of every device-wide sort: the size query, the size check, then the segments.
template <class K, class V, class BeginIt, class EndIt>
cudaError_t run(void* d_temp, size_t& temp_storage_bytes, const K* keys_in, K* keys_out, const V* vals_in,
                V* vals_out, int64_t num_items, int64_t num_segments, BeginIt begins, EndIt ends, int begin_bit,
                int end_bit, bool descending, bool stable) {
  const size_t need = temp_bytes<K, V>(num_items);
  if (!d_temp) {
    temp_storage_bytes = need;
    return cudaSuccess;
  }
  if (temp_storage_bytes < need || num_items < 0 || num_segments < 0 || begin_bit < 0 ||
      end_bit > static_cast<int>(8 * sizeof(K)) || begin_bit > end_bit)
    return cudaErrorInvalidValue;
  char* temp = static_cast<char*>(d_temp);
  std::memset(temp, 0xFF, 256);  // the temp storage is written: an undersized allocation faults as in CUB
  for (int64_t s = 0; s < num_segments; ++s) {
    const int64_t b = static_cast<int64_t>(begins[s]), e = static_cast<int64_t>(ends[s]);
    if (e <= b) continue;
    if (b < 0 || e > num_items) return cudaErrorInvalidValue;
    sort_range(keys_in, keys_out, vals_in, vals_out, b, e, begin_bit, end_bit, descending, stable, temp);
  }
  return cudaSuccess;
}

struct Whole {
  int64_t n;
  int64_t operator[](int64_t) const { return n; }
};
struct Zero {
  int64_t operator[](int64_t) const { return 0; }
};

}  // namespace cudasim_sort
}  // namespace cub
