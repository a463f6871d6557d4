// ---------------------------------------------------------------------------------------------
// common.cuh: what every netc kernel shares.
//
// Element types: float tensors are stored as float, netc_f16 or netc_bf16 (IEEE half and
// bfloat16; the IR dtype decides) and computed and accumulated in float; integer and boolean
// tensors as int, long long and netc_bool, computed exactly. `netc_load` / `netc_store` are the
// only places a stored value is converted, so a kernel never hard-codes its storage type.
//
// Sizes: every size a kernel takes is a 64-bit argument; one that depends on a named
// dimension (`N`, `T`) is evaluated by the runtime at launch (the launch plan's `Size`).
// Indices and offsets are 64-bit (`long long`) wherever they can pass 2^31 - 1.
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

// Integer and boolean tensors (i32, i64, bool) are stored as int, long long and netc_bool (one
// byte, 0 or 1) and computed as int, long long and bool: exactly, never through float.
typedef unsigned char netc_bool;

// The type a kernel computes a stored T in.
template <typename T> struct netc_compute { typedef float type; };
template <> struct netc_compute<int> { typedef int type; };
template <> struct netc_compute<long long> { typedef long long type; };
template <> struct netc_compute<netc_bool> { typedef bool type; };

__device__ __forceinline__ int netc_to_compute(int value) { return value; }
__device__ __forceinline__ long long netc_to_compute(long long value) { return value; }
__device__ __forceinline__ bool netc_to_compute(netc_bool value) { return value != 0; }
template <typename T>
__device__ __forceinline__ float netc_to_compute(T value) { return netc_to_float(value); }

// A float as an integer: toward zero, as C++ and PyTorch; where both leave it undefined (NaN,
// beyond the range) netc gives what CUDA's `cvt.rzi.sat` gives: 0 for NaN, else the nearest end
// of the range. `limit` is 2^(bits - 1), the first float beyond the range.
__device__ __forceinline__ long long netc_float_to_integer(float value, float limit,
                                                           long long lowest, long long highest)
{
    if (value != value)
        return 0;
    if (value >= limit)
        return highest;
    if (value <= -limit)
        return lowest;
    return static_cast<long long>(value);
}

// netc_converter<T>::from(value): a computed value of any type (float, int, long long, bool)
// as a T stores it. Between integer types, C++'s conversion (wrapping, as PyTorch); to bool,
// nonzero (NaN included, as PyTorch).
template <typename T>
struct netc_converter {  // float, netc_f16, netc_bf16
    template <typename V>
    static __device__ __forceinline__ T from(V value)
    {
        return netc_from_float<T>(static_cast<float>(value));
    }
};

template <typename I, long long LOWEST, long long HIGHEST>
struct netc_integer_converter {
    static __device__ __forceinline__ I from(float value)
    {
        return static_cast<I>(netc_float_to_integer(value, -static_cast<float>(LOWEST), LOWEST,
                                                    HIGHEST));
    }
    static __device__ __forceinline__ I from(double value)
    {
        return from(static_cast<float>(value));
    }
    template <typename V>
    static __device__ __forceinline__ I from(V value) { return static_cast<I>(value); }
};

template <>
struct netc_converter<int>
    : netc_integer_converter<int, -2147483647LL - 1, 2147483647LL> {};
template <>
struct netc_converter<long long>
    : netc_integer_converter<long long, -9223372036854775807LL - 1, 9223372036854775807LL> {};

template <>
struct netc_converter<netc_bool> {
    template <typename V>
    static __device__ __forceinline__ netc_bool from(V value) { return value != 0 ? 1 : 0; }
};

// `value` stored as a T and read back: what storing it would keep (identity for float, the
// conversion to T for a cast). The reference interpreter rounds every op's result to its
// dtype; fused code does the same.
template <typename T, typename V>
__device__ __forceinline__ typename netc_compute<T>::type netc_round(V value)
{
    return netc_to_compute(netc_converter<T>::from(value));
}

template <typename T>
__device__ __forceinline__ typename netc_compute<T>::type netc_load(const T* pointer)
{
    return netc_to_compute(*pointer);
}

template <typename T, typename V>
__device__ __forceinline__ void netc_store(T* pointer, V value)
{
    *pointer = netc_converter<T>::from(value);
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

// The smaller of a and b, NaN if either is NaN (np.minimum, torch.minimum).
__device__ __forceinline__ float netc_min(float a, float b)
{
    return (a < b || a != a) ? a : b;
}

// The same on integers (i32 and i64 tensors are computed exactly, never through float).
__device__ __forceinline__ int netc_max(int a, int b) { return a > b ? a : b; }
__device__ __forceinline__ long long netc_max(long long a, long long b) { return a > b ? a : b; }
__device__ __forceinline__ int netc_min(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ long long netc_min(long long a, long long b) { return a < b ? a : b; }

// |x|: fabsf for floats (NaN stays NaN, -0 gives +0); for integers -x below 0, wrapping as
// PyTorch does (|-2^31| is -2^31 in i32: negated in unsigned arithmetic, no overflow).
__device__ __forceinline__ float netc_abs(float x) { return fabsf(x); }
__device__ __forceinline__ int netc_abs(int x)
{
    return x < 0 ? static_cast<int>(0u - static_cast<unsigned>(x)) : x;
}
__device__ __forceinline__ long long netc_abs(long long x)
{
    return x < 0 ? static_cast<long long>(0ull - static_cast<unsigned long long>(x)) : x;
}

// x limited to [low, high], NaN if x is NaN (torch.clamp, hardtanh); high when low > high.
__device__ __forceinline__ float netc_clamp(float x, float low, float high)
{
    const float raised = x < low ? low : x;
    return raised > high ? high : raised;
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

// Training-mode dropout (netc.ops.philox, which holds the NumPy twin) --------------------------
//
// Philox4x32-10 (Salmon et al., SC'11; Random123's constants, as cuRAND and JAX): a counter-
// based generator, so element `index` of a dropout layer's mask is a pure function of (seed,
// step, stream, index) and no generator state lives on the device. 32x32->64 products in plain
// 64-bit arithmetic (one mul.wide.u32 on a GPU), so the simulator computes the same bits.
struct netc_philox_words {
    unsigned int w[4];
};

__device__ __forceinline__ netc_philox_words netc_philox4x32_10(netc_philox_words counter,
                                                               unsigned int key0,
                                                               unsigned int key1)
{
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round) {
            key0 += 0x9E3779B9u;
            key1 += 0xBB67AE85u;
        }
        const unsigned long long product0 = 0xD2511F53ull * counter.w[0];
        const unsigned long long product1 = 0xCD9E8D57ull * counter.w[2];
        const netc_philox_words next = {{
            static_cast<unsigned int>(product1 >> 32) ^ counter.w[1] ^ key0,
            static_cast<unsigned int>(product1),
            static_cast<unsigned int>(product0 >> 32) ^ counter.w[3] ^ key1,
            static_cast<unsigned int>(product0)}};
        counter = next;
    }
    return counter;
}

// x / (1 - p) where element `index` is kept, else 0: kept when the 24 high bits of word 0 of
// Philox(counter (lo(index), hi(index), lo(step), stream), key (lo(seed), hi(seed))), as a
// float in [0, 1), are at least p. p = 1 drops everything (never 0 * inf).
__device__ __forceinline__ float netc_dropout(float x, long long seed, long long step,
                                              long long index, float p, float stream)
{
    const unsigned long long element = static_cast<unsigned long long>(index);
    const unsigned long long key = static_cast<unsigned long long>(seed);
    const netc_philox_words counter = {{static_cast<unsigned int>(element),
                                        static_cast<unsigned int>(element >> 32),
                                        static_cast<unsigned int>(step),
                                        static_cast<unsigned int>(stream)}};
    const unsigned int word = netc_philox4x32_10(counter, static_cast<unsigned int>(key),
                                                 static_cast<unsigned int>(key >> 32)).w[0];
    const float uniform = static_cast<float>(word >> 8) * 5.9604644775390625e-8f;  // 2^-24
    return uniform >= p ? x * (1.0f / (1.0f - p)) : 0.0f;
}
