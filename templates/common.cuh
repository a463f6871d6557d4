// ---------------------------------------------------------------------------------------------
// common.cuh: what every netc kernel shares.
//
// Element types: tensors are stored as float, netc_f16 or netc_bf16 (IEEE half and bfloat16; the
// IR dtype decides); kernels compute and accumulate in float. `netc_load` / `netc_store` are the
// only places a stored value is converted, so a kernel never hard-codes its storage type.
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

#define NETC_FULL_WARP 0xffffffffu

// Storage types and their conversions ---------------------------------------------------------
//
// netc_f16 and netc_bf16 hold IEEE half and bfloat16 bits. The simulator supplies __half and
// __nv_bfloat16; on a GPU they are 16-bit structs converted with PTX `cvt` (sm_80 and later
// have both), so the module includes no CUDA header and NVRTC compiles it with no include path.

__device__ __forceinline__ float netc_to_float(float value) { return value; }

template <typename T>
__device__ __forceinline__ T netc_from_float(float value);

template <>
__device__ __forceinline__ float netc_from_float<float>(float value) { return value; }

#ifdef NETC_CUDASIM
typedef __half netc_f16;
typedef __nv_bfloat16 netc_bf16;

__device__ __forceinline__ float netc_to_float(netc_f16 value) { return __half2float(value); }
__device__ __forceinline__ float netc_to_float(netc_bf16 value)
{
    return __bfloat162float(value);
}

template <>
__device__ __forceinline__ netc_f16 netc_from_float<netc_f16>(float value)
{
    return __float2half_rn(value);
}

template <>
__device__ __forceinline__ netc_bf16 netc_from_float<netc_bf16>(float value)
{
    return __float2bfloat16_rn(value);
}
#else
#define NETC_DYNAMIC_SHARED(type, name)                                    \
    extern __shared__ __align__(16) unsigned char name##_raw[];            \
    type* name = reinterpret_cast<type*>(name##_raw)

struct __align__(2) netc_f16 {
    unsigned short bits;
};

struct __align__(2) netc_bf16 {
    unsigned short bits;
};

__device__ __forceinline__ float netc_to_float(netc_f16 value)
{
    float result;
    asm("cvt.f32.f16 %0, %1;" : "=f"(result) : "h"(value.bits));
    return result;
}

__device__ __forceinline__ float netc_to_float(netc_bf16 value)
{
    return __int_as_float(static_cast<int>(value.bits) << 16);  // exact
}

template <>
__device__ __forceinline__ netc_f16 netc_from_float<netc_f16>(float value)
{
    netc_f16 result;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(result.bits) : "f"(value));
    return result;
}

template <>
__device__ __forceinline__ netc_bf16 netc_from_float<netc_bf16>(float value)
{
    netc_bf16 result;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(result.bits) : "f"(value));
    return result;
}
#endif

// `value` rounded to T and back: what storing it as a T would keep (identity for float). The
// reference interpreter rounds every op's result to its dtype; fused code does the same.
template <typename T>
__device__ __forceinline__ float netc_round(float value)
{
    return netc_to_float(netc_from_float<T>(value));
}

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

__device__ __forceinline__ float netc_quiet_nan()
{
    return __int_as_float(0x7fffffff);
}

// The larger of a and b, NaN if either is NaN: NumPy's np.maximum / np.max and PyTorch's max
// pooling. (fmaxf returns the other operand for a NaN, so a NaN would vanish.)
__device__ __forceinline__ float netc_max(float a, float b)
{
    return (a > b || a != a) ? a : b;
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
        value = netc_max(value, __shfl_xor_sync(NETC_FULL_WARP, value, offset));
    return value;
}
