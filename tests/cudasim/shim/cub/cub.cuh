// cudasim's stand-in for <cub/cub.cuh>: host implementations of the contracts of the few CUB algorithms the
// project uses (see tests/cudasim/README.md). Only on the include path of builds against the execution model.
#pragma once
#include "device/device_radix_sort.cuh"
#include "device/device_segmented_radix_sort.cuh"
#include "device/device_segmented_sort.cuh"
#include "block/block_reduce.cuh"
#include "warp/warp_reduce.cuh"
