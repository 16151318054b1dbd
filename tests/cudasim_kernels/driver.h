// The shared part of the launcher drivers (*_launchers.cpp): each is built with g++ together with the .cu files it
// drives (compiled unchanged, -include cudasim/cuda_sim.h) and tests/cudasim/cudasim.cpp, and keeps only its own op
// dispatch, `int run(const std::string& op)`, which driver_main calls.
//
//   DRIVER OP DIR
//
// DIR/params holds "name value" lines (sizes, dtype, seed, p, ...); DIR/NAME.bin the raw bytes of each input.
// Every input, output, workspace and the seed lives in its own guarded buffer: its end lies against a PROT_NONE
// page (an access past it kills the process with the model's report), or, with `offset 1` in params, the data
// starts one element later than a 16-byte aligned address would (a misaligned pointer, as a tensor view offset
// by one element; then an overrun of one element is not caught, one of two is). Outputs start as 0xFF bytes (NaN)
// and are written to DIR/out_NAME.bin; an optional output (`need_NAME 0` in params) is passed as null, as the
// bindings pass an output the op does not compute. A launcher returns its errors and leaves none pending (a pending
// error would be reported by the next, unrelated, launch check of the binding): the driver checks that too. Prints
// "OK" or "error ..." and exits 0 / 1.
#pragma once
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "fastvae/types.h"

namespace driver {

using fastvae::DType;

inline std::string dir;
inline std::map<std::string, std::string> params;
inline std::vector<std::pair<std::string, std::pair<void*, size_t>>> outputs;

inline std::string param(const std::string& k) {
  auto it = params.find(k);
  if (it == params.end()) {
    printf("error missing param %s\n", k.c_str());
    exit(2);
  }
  return it->second;
}
inline int64_t ip(const std::string& k) { return std::stoll(param(k)); }
inline double dp(const std::string& k) { return std::stod(param(k)); }
// A parameter with a default (the optional ones: x_rows, need_*).
inline int64_t ip_or(const std::string& k, int64_t v) { return params.count(k) ? ip(k) : v; }

inline size_t esz_of(DType t) { return t == DType::Float64 ? 8 : t == DType::Float32 ? 4 : 2; }
inline size_t acc_of(DType t) { return t == DType::Float64 ? 8 : 4; }  // per-row outputs: float32 or float64

// A guarded buffer of n elements of esz bytes, ending at a page boundary (see the header comment for `offset`:
// one element more, the data at its start, so with n esz a multiple of 16 the data starts 16 - esz past an
// aligned address).
inline void* alloc(const std::string& name, size_t n, size_t esz) {
  const bool off = params.count("offset") && ip("offset") != 0;
  const size_t bytes = (n + (off ? 1 : 0)) * esz;
  return cudasim::guarded_alloc(bytes ? bytes : esz, name.c_str(), cudasim::Placement::End, esz);
}

// Scale mode (`sparse 1` in params): every input and output is a sparse guarded buffer (zeros, no memory but the
// pages touched), inputs are not read from files, and only the element ranges `out_ranges START:COUNT,...` of each
// output are written to DIR/out_NAME.bin, one after another; with `block_window FIRST:COUNT` only those blocks of
// each launch run (cudasim::set_block_window).
inline bool sparse() { return params.count("sparse") && ip("sparse") != 0; }

// In scale mode, `ramp NAME` and `ramp_ranges START:COUNT,...` give the float32 input NAME the values
// (i % 4093) / 1024 at those elements (zeros elsewhere): reading a wrong element then reads a wrong value.
inline void* input(const std::string& name, size_t n, size_t esz) {
  if (sparse()) {
    void* p = cudasim::sparse_alloc(n * esz, name.c_str());
    if (esz == 4 && params.count("ramp") && param("ramp") == name) {
      std::istringstream ranges(param("ramp_ranges"));
      for (std::string r; std::getline(ranges, r, ',');)
        for (size_t i = std::stoull(r), e = i + std::stoull(r.substr(r.find(':') + 1)); i < e; ++i)
          static_cast<float*>(p)[i] = static_cast<float>(i % 4093) / 1024.0f;
    }
    return p;
  }
  std::ifstream f(dir + "/" + name + ".bin", std::ios::binary);
  std::vector<char> b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (b.size() != n * esz) {
    printf("error input %s has %zu bytes, expected %zu\n", name.c_str(), b.size(), n * esz);
    exit(2);
  }
  void* p = alloc(name, n, esz);
  memcpy(p, b.data(), b.size());
  // `uninit NAME` in params: the input counts as never written (a probe that the race-checking build's initcheck
  // is live: a kernel reading it fails)
  if (params.count("uninit") && param("uninit") == name) cudasim::mark_uninitialised(p, b.size());
  return p;
}

inline void* output(const std::string& name, size_t n, size_t esz) {
  if (sparse()) {
    void* p = cudasim::sparse_alloc(n * esz, name.c_str());
    outputs.push_back({name, {p, esz}});  // sparse: the element size; out_ranges says what to write
    return p;
  }
  void* p = alloc(name, n, esz);
  memset(p, 0xFF, n * esz);
  cudasim::mark_uninitialised(p, n * esz);  // the race-checking build's initcheck: a kernel must write, not read it
  outputs.push_back({name, {p, n * esz}});
  return p;
}

// An output that the launcher writes only when the op asks for it (need_NAME, default 1); null otherwise.
inline void* opt_output(const std::string& name, size_t n, size_t esz) {
  return ip_or("need_" + name, 1) != 0 ? output(name, n, esz) : nullptr;
}

// A guarded workspace of `bytes`, zeroed or 0xFF (garbage in a workspace that needs no initialisation must not
// matter); null for none.
inline void* workspace(size_t bytes, bool zero) {
  if (bytes == 0) return nullptr;
  void* p = cudasim::guarded_alloc(bytes, "workspace");
  memset(p, zero ? 0 : 0xFF, bytes);
  if (!zero) cudasim::mark_uninitialised(p, bytes);
  return p;
}

inline const int64_t* seed_ptr() {
  int64_t* s = static_cast<int64_t*>(cudasim::guarded_alloc(sizeof(int64_t), "seed"));
  *s = ip("seed");
  return s;
}

// main of a driver: reads DIR/params, runs OP with run(op), checks the launcher's result, errors left pending and
// the synchronisation, and writes the outputs.
inline int driver_main(int argc, char** argv, int (*run)(const std::string& op)) {
  if (argc != 3) {
    printf("usage: %s OP DIR\n", argv[0]);
    return 2;
  }
  const std::string op = argv[1];
  dir = argv[2];
  std::ifstream pf(dir + "/params");
  for (std::string k, v; pf >> k >> v;) params[k] = v;
  if (params.count("block_window")) {
    const std::string w = param("block_window");
    cudasim::set_block_window(std::stoll(w), std::stoll(w.substr(w.find(':') + 1)));
  }
  const int err = run(op);
  const cudaError_t pending = cudaGetLastError();
  const cudaError_t sync = cudaDeviceSynchronize();
  if (err != 0 || pending != cudaSuccess || sync != cudaSuccess) {
    printf("error launcher %d (%s), pending %s, sync %s: %s\n", err,
           cudaGetErrorString(static_cast<cudaError_t>(err)), cudaGetErrorName(pending), cudaGetErrorName(sync),
           cudasim::last_error_message());
    return 1;
  }
  for (auto& o : outputs) {
    std::ofstream f(dir + "/out_" + o.first + ".bin", std::ios::binary);
    const char* p = static_cast<const char*>(o.second.first);
    if (!sparse()) {
      f.write(p, static_cast<std::streamsize>(o.second.second));
      continue;
    }
    std::istringstream ranges(param("out_ranges"));
    for (std::string r; std::getline(ranges, r, ',');) {
      const size_t start = std::stoull(r), count = std::stoull(r.substr(r.find(':') + 1)), esz = o.second.second;
      f.write(p + start * esz, static_cast<std::streamsize>(count * esz));
    }
  }
  printf("OK\n");
  return 0;
}

}  // namespace driver
