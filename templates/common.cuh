// ---------------------------------------------------------------------------------------------
// common.cuh: what every netc kernel shares.
//
// Element types: tensors are stored as float, __half or __nv_bfloat16 (the IR dtype decides);
// kernels compute and accumulate in float. `netc_load` / `netc_store` are the only places a
// stored value is converted, so a kernel never hard-codes its storage type.
//
// Sizes: a size that may depend on the run-time batch reaches a kernel as the pair
// (per_batch, fixed) and is `per_batch * batch + fixed`, the same rule as the launch plan's
// `GridDim`. Indices and offsets are 64-bit (`long long`) wherever they can pass 2^31 - 1.
//
// Shared memory: every kernel takes its shared memory as one dynamic buffer,
// `NETC_DYNAMIC_SHARED(type, name)`, sized by the launch plan's `shared_bytes`. The CPU
// simulator brings its own definition (and defines NETC_CUDASIM); on a GPU it is the usual
// `extern __shared__` array.
//
// This file is inlined at the top of each generated module (NVRTC has no include path).
// ---------------------------------------------------------------------------------------------

#ifndef NETC_CUDASIM
#if NETC_USES_F16
#include <cuda_fp16.h>
#endif
#if NETC_USES_BF16
#include <cuda_bf16.h>
#endif
#define NETC_DYNAMIC_SHARED(type, name)                                    \
    extern __shared__ __align__(16) unsigned char name##_raw[];            \
    type* name = reinterpret_cast<type*>(name##_raw)
#endif

#define NETC_FULL_WARP 0xffffffffu

// Conversions between the storage type and float ------------------------------------------

__device__ __forceinline__ float netc_to_float(float value) { return value; }

template <typename T>
__device__ __forceinline__ T netc_from_float(float value);

template <>
__device__ __forceinline__ float netc_from_float<float>(float value) { return value; }

#if NETC_USES_F16
__device__ __forceinline__ float netc_to_float(__half value) { return __half2float(value); }

template <>
__device__ __forceinline__ __half netc_from_float<__half>(float value)
{
    return __float2half_rn(value);
}
#endif

#if NETC_USES_BF16
__device__ __forceinline__ float netc_to_float(__nv_bfloat16 value)
{
    return __bfloat162float(value);
}

template <>
__device__ __forceinline__ __nv_bfloat16 netc_from_float<__nv_bfloat16>(float value)
{
    return __float2bfloat16_rn(value);
}
#endif

template <typename T>
__device__ __forceinline__ float netc_load(const T* pointer)
{
    return netc_to_float(*pointer);
}

template <typename T>
__device__ __forceinline__ void netc_store(T* pointer, float value)
{
    *pointer = netc_from_float<T>(value);
}

// Small helpers -------------------------------------------------------------------------------

__device__ __forceinline__ long long netc_ceil_div(long long numerator, long long denominator)
{
    return (numerator + denominator - 1) / denominator;
}

// The global index of this thread in a one-dimensional launch, 64-bit.
__device__ __forceinline__ long long netc_global_thread_index()
{
    return static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ float netc_negative_infinity()
{
    return __int_as_float(static_cast<int>(0xff800000u));
}

// Warp reductions: every lane ends with the reduction over the 32 lanes of its warp. All 32
// lanes must call them (no lane may have returned early).
__device__ __forceinline__ float netc_warp_sum(float value)
{
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
        value += __shfl_xor_sync(NETC_FULL_WARP, value, offset);
    return value;
}

__device__ __forceinline__ float netc_warp_max(float value)
{
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
        value = fmaxf(value, __shfl_xor_sync(NETC_FULL_WARP, value, offset));
    return value;
}
