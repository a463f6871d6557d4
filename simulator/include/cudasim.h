// cudasim.h -- CUDA's execution model for the host C++ compiler (netc's CPU simulator).
//
// netc's simulator (netc.sim.cudasim) compiles the *exact* CUDA C++ source that
// netc generates with g++ (-std=c++17), force-including this header
// (`-include cudasim.h`), and runs the kernels on the CPU:
//
//  * every GPU thread of a block is a fiber; fibers switch only at __syncthreads()
//    and at warp-synchronous operations (__syncwarp, __shfl*_sync,
//    __ballot/__any/__all_sync, __match_*, __reduce_*).  A thread holds a stack
//    (128 KiB by default, with a guard page) from its first run until it exits, and
//    the stack then serves the next thread, which runs on it without a context switch:
//    a kernel without barriers runs a whole block as a loop on one cache-hot stack.
//    There is no scheduler between threads: one that waits or exits switches straight
//    to the next in the schedule (next_fiber), one switch per thread and barrier;
//  * a block runs on one OS worker thread from start to end; the blocks of a grid are
//    handed out to `workers` OS threads (the calling thread is worker 0);
//  * the fibers of a block are resumed in the launch's schedule order (in order,
//    reversed, or a seeded shuffle re-drawn for every pass), each running until it
//    reaches a barrier, a warp operation, or exits.  Misuse is reported precisely:
//    a block whose threads wait at different __syncthreads() call sites (file:line,
//    honouring #line), or where some threads exited while others wait, or a warp
//    operation whose named lanes exited or never arrive, stops the launch with an
//    error naming the kernel, the block and the groups of threads.
//
// Memory model
//  * Global memory: ordinary host memory; the driver passes device buffers as plain
//    pointers.  Atomics are real (GCC __atomic builtins, sequentially consistent)
//    because blocks run in parallel on several OS threads.
//  * Static shared memory: `#define __shared__ static thread_local`.  Each worker
//    OS thread runs one block at a time, so a thread_local is exactly one copy per
//    resident block, shared by its fibers (which never migrate between OS threads).
//    The driver finds these variables in the ELF symbol table and the runtime fills
//    them with 0xFF bytes at the start of every block (as on a GPU they do not carry
//    over from a previous block; reading before writing yields NaN / -1).
//  * Dynamic shared memory: each worker reserves one region (64 MiB of address
//    space, touched on demand) and cudasim::dynamic_shared<T>() returns its base; it
//    is filled with 0xFF at every block start (and, under AddressSanitizer, the bytes
//    past the launch's dynamic size are poisoned).  Because the C++ preprocessor
//    cannot turn `extern __shared__ T name[];` into a pointer, the DRIVER REWRITES
//    that one declaration form before compiling -- mechanically, on the same line,
//    so line numbers do not move:
//        extern __shared__ [__align__(n)] T [__align__(n)] name[];
//    becomes, inside a function body,
//        T* name = ::cudasim::dynamic_shared<T>();
//    and at namespace scope (where it must be evaluated per OS thread)
//        static thread_local T* name = ::cudasim::dynamic_shared<T>();
//    Comments, string literals and preprocessor lines are not rewritten (so an
//    `extern __shared__` hidden inside a macro body does not compile here: use
//    NETC_DYNAMIC_SHARED instead).  Code written for netc should use
//        NETC_DYNAMIC_SHARED(float, smem);   // inside a kernel or device function
//    which needs no rewrite; for nvcc the templates define it as
//        extern __shared__ __align__(16) unsigned char smem_raw[];
//        float* smem = reinterpret_cast<float*>(smem_raw)
//    This header defines NETC_CUDASIM (1) so that code can `#ifdef` on it.
//
// Layout of this file
//  * Everything up to the "Runtime implementation" section is what kernel code sees:
//    CUDA's qualifiers, types, built-in variables and device functions (inline), the
//    runtime's data structures, and the templates that deduce a kernel's signature and
//    launch it.
//  * The runtime itself (fibers, scheduler, worker pool, module exports) is compiled
//    only with -DCUDASIM_IMPLEMENTATION: the driver builds it once into a cached object
//    file that every module links, so a module compiles only its own kernels.
//  * The fiber context switch is a few lines of x86-64 assembly (callee-saved
//    registers + stack pointer); elsewhere, or with -DCUDASIM_USE_UCONTEXT, it falls
//    back to ucontext (swapcontext: correct but ~30x slower, a syscall per switch).
//
// Not supported (see docs/simulator.md): texture/surface objects, cooperative groups,
// wmma, inline PTX (mma.sync m16n8k16, ldmatrix and cp.async are emulated: cudasim::ptx), __constant__ upload from the host, dynamic parallelism,
// clusters / distributed shared memory, cuda::pipeline / memcpy_async, and threads of
// one block spin-waiting on each other (fibers are cooperative: a spin loop on a value
// another thread of the same block must write never ends).
#ifndef NETC_CUDASIM_H
#define NETC_CUDASIM_H

#define NETC_CUDASIM 1
#define CUDASIM_ABI_VERSION 2

// Every standard header this file needs comes first.  <memory> is included although
// the runtime does not need it: libstdc++'s shared_ptr_base.h spells
// `__attribute__((__noinline__))`, which the CUDA `__noinline__` macro below would
// break if kernel code included <memory> (or <algorithm>, ...) after this header.
#include <cassert>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <math.h>
#include <memory>
#include <new>
#include <tuple>
#include <type_traits>
#include <utility>

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#if !defined(__x86_64__) || defined(CUDASIM_USE_UCONTEXT)
#include <ucontext.h>
#define CUDASIM_UCONTEXT 1
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDASIM_ASAN 1
#endif

#define CUDASIM_EXPORT extern "C" __attribute__((visibility("default")))
#define CUDASIM_HIDDEN __attribute__((visibility("hidden")))

// ---------------------------------------------------------------------------------
// CUDA qualifiers
// ---------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __shared__ static thread_local
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __cudart_builtin__
// __restrict__ is already a g++ keyword.

// ---------------------------------------------------------------------------------
// Vector types (global namespace, with CUDA's alignments)
// ---------------------------------------------------------------------------------
#define CUDASIM_VEC1(T, N, A)                                                          \
    struct __attribute__((aligned(A))) N##1 { T x; };                                  \
    static inline N##1 make_##N##1(T x) { N##1 r; r.x = x; return r; }
#define CUDASIM_VEC2(T, N, A)                                                          \
    struct __attribute__((aligned(A))) N##2 { T x, y; };                               \
    static inline N##2 make_##N##2(T x, T y) { N##2 r; r.x = x; r.y = y; return r; }
#define CUDASIM_VEC3(T, N, A)                                                          \
    struct __attribute__((aligned(A))) N##3 { T x, y, z; };                            \
    static inline N##3 make_##N##3(T x, T y, T z) {                                    \
        N##3 r; r.x = x; r.y = y; r.z = z; return r;                                   \
    }
#define CUDASIM_VEC4(T, N, A)                                                          \
    struct __attribute__((aligned(A))) N##4 { T x, y, z, w; };                         \
    static inline N##4 make_##N##4(T x, T y, T z, T w) {                               \
        N##4 r; r.x = x; r.y = y; r.z = z; r.w = w; return r;                          \
    }
#define CUDASIM_VECS(T, N, A1, A2, A3, A4)                                             \
    CUDASIM_VEC1(T, N, A1) CUDASIM_VEC2(T, N, A2) CUDASIM_VEC3(T, N, A3)              \
    CUDASIM_VEC4(T, N, A4)

CUDASIM_VECS(signed char, char, 1, 2, 1, 4)
CUDASIM_VECS(unsigned char, uchar, 1, 2, 1, 4)
CUDASIM_VECS(short, short, 2, 4, 2, 8)
CUDASIM_VECS(unsigned short, ushort, 2, 4, 2, 8)
CUDASIM_VECS(int, int, 4, 8, 4, 16)
CUDASIM_VECS(unsigned int, uint, 4, 8, 4, 16)
CUDASIM_VECS(long, long, 8, 16, 8, 16)
CUDASIM_VECS(unsigned long, ulong, 8, 16, 8, 16)
CUDASIM_VECS(long long, longlong, 8, 16, 8, 16)
CUDASIM_VECS(unsigned long long, ulonglong, 8, 16, 8, 16)
CUDASIM_VECS(float, float, 4, 8, 4, 16)
CUDASIM_VECS(double, double, 8, 16, 8, 16)

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
        : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    operator uint3() const { return make_uint3(x, y, z); }
};

static constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------
// Half precision storage types: conversions round to nearest even.
// ---------------------------------------------------------------------------------
namespace cudasim {
namespace detail {
template <class To, class From>
static inline To bit_cast(const From& v) {
    static_assert(sizeof(To) == sizeof(From), "bit_cast size mismatch");
    To r;
    std::memcpy(&r, &v, sizeof(To));
    return r;
}

// float -> binary16, round to nearest even (after F. Giesen's float_to_half_fast3_rtne).
static inline unsigned short f32_to_f16(float value) {
    uint32_t f = bit_cast<uint32_t>(value);
    const uint32_t sign = (f >> 16) & 0x8000u;
    f &= 0x7fffffffu;
    if (f >= 0x47800000u) {  // >= 65536: Inf, or NaN (CUDA's canonical NaN is 0x7fff)
        return (unsigned short)(f > 0x7f800000u ? 0x7fffu : (sign | 0x7c00u));
    }
    if (f < 0x38800000u) {  // below the smallest normal half: subnormal or zero
        // Adding 0.5 puts the value's 2^-24 units in the low mantissa bits, rounded to
        // nearest even by the FPU (default rounding mode).
        const float shifted = bit_cast<float>(f) + 0.5f;
        return (unsigned short)(sign | (bit_cast<uint32_t>(shifted) - 0x3f000000u));
    }
    const uint32_t mant_odd = (f >> 13) & 1u;
    f += 0xc8000fffu;  // rebias the exponent (15 - 127) << 23, plus the rounding bias
    f += mant_odd;
    return (unsigned short)(sign | (f >> 13));
}

static inline float f16_to_f32(unsigned short h) {
    const uint32_t shifted_exp = 0x7c00u << 13;
    uint32_t o = (uint32_t)(h & 0x7fffu) << 13;
    const uint32_t exp = shifted_exp & o;
    o += (127u - 15u) << 23;
    if (exp == shifted_exp) {
        o += (128u - 16u) << 23;  // Inf / NaN
    } else if (exp == 0) {
        o += 1u << 23;  // zero / subnormal: renormalise through float arithmetic
        o = bit_cast<uint32_t>(bit_cast<float>(o) - bit_cast<float>(113u << 23));
    }
    o |= (uint32_t)(h & 0x8000u) << 16;
    return bit_cast<float>(o);
}

static inline unsigned short f32_to_bf16(float value) {
    uint32_t u = bit_cast<uint32_t>(value);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;  // NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

static inline float bf16_to_f32(unsigned short b) { return bit_cast<float>((uint32_t)b << 16); }
}  // namespace detail
}  // namespace cudasim

struct __attribute__((aligned(2))) __half {
    unsigned short __x;
    __half() = default;
    template <class T, class = std::enable_if_t<std::is_arithmetic<T>::value>>
    __half(T v) : __x(cudasim::detail::f32_to_f16((float)v)) {}
    operator float() const { return cudasim::detail::f16_to_f32(__x); }
};

struct __attribute__((aligned(2))) __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    template <class T, class = std::enable_if_t<std::is_arithmetic<T>::value>>
    __nv_bfloat16(T v) : __x(cudasim::detail::f32_to_bf16((float)v)) {}
    operator float() const { return cudasim::detail::bf16_to_f32(__x); }
};

struct __attribute__((aligned(4))) __half2 { __half x, y; };
struct __attribute__((aligned(4))) __nv_bfloat162 { __nv_bfloat16 x, y; };
typedef __half half;
typedef __half2 half2;
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

static inline __half __float2half(float f) { __half h; h.__x = cudasim::detail::f32_to_f16(f); return h; }
static inline __half __float2half_rn(float f) { return __float2half(f); }
static inline __half __double2half(double d) { return __float2half((float)d); }
static inline float __half2float(__half h) { return cudasim::detail::f16_to_f32(h.__x); }
static inline __nv_bfloat16 __float2bfloat16(float f) {
    __nv_bfloat16 b; b.__x = cudasim::detail::f32_to_bf16(f); return b;
}
static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
static inline __nv_bfloat16 __double2bfloat16(double d) { return __float2bfloat16((float)d); }
static inline float __bfloat162float(__nv_bfloat16 b) { return cudasim::detail::bf16_to_f32(b.__x); }
static inline unsigned short __half_as_ushort(__half h) { return h.__x; }
static inline __half __ushort_as_half(unsigned short u) { __half h; h.__x = u; return h; }
static inline short __half_as_short(__half h) { return (short)h.__x; }
static inline __half __short_as_half(short s) { __half h; h.__x = (unsigned short)s; return h; }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 b; b.__x = u; return b; }
static inline __half2 __floats2half2_rn(float a, float b) { __half2 r; r.x = __float2half(a); r.y = __float2half(b); return r; }
static inline __half2 __float2half2_rn(float a) { return __floats2half2_rn(a, a); }
static inline __half2 __halves2half2(__half a, __half b) { __half2 r; r.x = a; r.y = b; return r; }
static inline float2 __half22float2(__half2 h) { return make_float2(__half2float(h.x), __half2float(h.y)); }
static inline __half __low2half(__half2 h) { return h.x; }
static inline __half __high2half(__half2 h) { return h.y; }
static inline float __low2float(__half2 h) { return __half2float(h.x); }
static inline float __high2float(__half2 h) { return __half2float(h.y); }
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    __nv_bfloat162 r; r.x = __float2bfloat16(a); r.y = __float2bfloat16(b); return r;
}
static inline float2 __bfloat1622float2(__nv_bfloat162 h) {
    return make_float2(__bfloat162float(h.x), __bfloat162float(h.y));
}

// Arithmetic through float: the float result of one +,-,*,/ on halves (or bf16) is
// exact enough that rounding it once more to the narrow type is correctly rounded.
#define CUDASIM_NARROW_OPS(H, TOF, FROMF)                                                          \
    static inline H operator+(H a, H b) { return FROMF(TOF(a) + TOF(b)); }                         \
    static inline H operator-(H a, H b) { return FROMF(TOF(a) - TOF(b)); }                         \
    static inline H operator*(H a, H b) { return FROMF(TOF(a) * TOF(b)); }                         \
    static inline H operator/(H a, H b) { return FROMF(TOF(a) / TOF(b)); }                         \
    static inline H operator-(H a) { H r = a; r.__x ^= 0x8000u; return r; }                        \
    static inline H& operator+=(H& a, H b) { a = a + b; return a; }                                \
    static inline H& operator-=(H& a, H b) { a = a - b; return a; }                                \
    static inline H& operator*=(H& a, H b) { a = a * b; return a; }                                \
    static inline H& operator/=(H& a, H b) { a = a / b; return a; }                                \
    static inline bool operator==(H a, H b) { return TOF(a) == TOF(b); }                           \
    static inline bool operator!=(H a, H b) { return TOF(a) != TOF(b); }                           \
    static inline bool operator<(H a, H b) { return TOF(a) < TOF(b); }                             \
    static inline bool operator<=(H a, H b) { return TOF(a) <= TOF(b); }                           \
    static inline bool operator>(H a, H b) { return TOF(a) > TOF(b); }                             \
    static inline bool operator>=(H a, H b) { return TOF(a) >= TOF(b); }                           \
    static inline H __hadd(H a, H b) { return a + b; }                                             \
    static inline H __hsub(H a, H b) { return a - b; }                                             \
    static inline H __hmul(H a, H b) { return a * b; }                                             \
    static inline H __hdiv(H a, H b) { return a / b; }                                             \
    static inline H __hneg(H a) { return -a; }                                                     \
    static inline H __habs(H a) { H r = a; r.__x &= 0x7fffu; return r; }                           \
    static inline H __hfma(H a, H b, H c) { return FROMF(fmaf(TOF(a), TOF(b), TOF(c))); }          \
    static inline H __hmax(H a, H b) { return FROMF(fmaxf(TOF(a), TOF(b))); }                      \
    static inline H __hmin(H a, H b) { return FROMF(fminf(TOF(a), TOF(b))); }                      \
    static inline bool __heq(H a, H b) { return a == b; }                                          \
    static inline bool __hne(H a, H b) { return a != b; }                                          \
    static inline bool __hlt(H a, H b) { return a < b; }                                           \
    static inline bool __hle(H a, H b) { return a <= b; }                                          \
    static inline bool __hgt(H a, H b) { return a > b; }                                           \
    static inline bool __hge(H a, H b) { return a >= b; }                                          \
    static inline bool __hisnan(H a) { return TOF(a) != TOF(a); }                                  \
    static inline bool __hisinf(H a) { return std::isinf(TOF(a)); }                                \
    static inline H hexp(H a) { return FROMF(expf(TOF(a))); }                                      \
    static inline H hlog(H a) { return FROMF(logf(TOF(a))); }                                      \
    static inline H hsqrt(H a) { return FROMF(sqrtf(TOF(a))); }                                    \
    static inline H hrsqrt(H a) { return FROMF(1.0f / sqrtf(TOF(a))); }                            \
    static inline H htanh(H a) { return FROMF(tanhf(TOF(a))); }
CUDASIM_NARROW_OPS(__half, __half2float, __float2half)
CUDASIM_NARROW_OPS(__nv_bfloat16, __bfloat162float, __float2bfloat16)

// ---------------------------------------------------------------------------------
// Runtime interface: the types the inline device API reads, and the entry points
// implemented below under CUDASIM_IMPLEMENTATION.  The driver compiles that part
// once (cached object file) and links it into every module, so a kernel module only
// compiles its kernels.
// ---------------------------------------------------------------------------------
namespace cudasim {
namespace detail {

enum : int { SCHED_IN_ORDER = 0, SCHED_REVERSED = 1, SCHED_SHUFFLED = 2 };

// Why a launch is stopped from outside (cudasim_cancel) and what run_launch returns.
enum : int { CANCEL_NONE = 0, CANCEL_INTERRUPT = 1, CANCEL_TIMEOUT = 2 };
enum : int { LAUNCH_OK = 0, LAUNCH_FAILED = 1, LAUNCH_CANCELLED = 2, LAUNCH_STACK_OVERFLOW = 3 };
enum : int { F_READY = 0, F_BARRIER = 1, F_WARP = 2, F_EXITED = 3, F_ABORTED = 4 };
enum : int { BAR_PLAIN = 0, BAR_COUNT = 1, BAR_AND = 2, BAR_OR = 3 };
enum : int {
    W_SYNC = 0, W_SHFL, W_BALLOT, W_ANY, W_ALL, W_ADD, W_MIN, W_MAX, W_UMIN, W_UMAX,
    W_AND, W_OR, W_XOR, W_MATCH_ANY, W_MATCH_ALL, W_COLLECTIVE
};

// Layout of the int64 launch configuration array passed by the driver.
enum : int {
    CFG_GRID_X = 0, CFG_GRID_Y, CFG_GRID_Z, CFG_BLOCK_X, CFG_BLOCK_Y, CFG_BLOCK_Z,
    CFG_SHARED, CFG_SCHEDULE, CFG_SEED, CFG_WORKERS, CFG_STACK, CFG_KERNEL_INDEX, CFG_LEN
};

constexpr size_t kDynSharedReserve = size_t(64) << 20;  // per worker thread
constexpr int kMaxWorkers = 256;
constexpr unsigned kMaxBlockThreads = 1024;

struct Worker;

// One cp.async copy issued by a thread and not yet waited for (see cudasim::ptx).
struct CpAsyncCopy {
    void* dst;
    const void* src;
    unsigned size, src_size;
    unsigned group;  // the commit group it belongs to (the thread's count of commits at issue)
};
constexpr unsigned kMaxCpAsync = 64;  // copies in flight per thread

// A thread's cp.async copies in flight and the commit groups it has closed.  Kept outside
// the Fiber (which the scheduler walks) and allocated at a thread slot's first cp.async.
struct CpAsyncQueue {
    CpAsyncCopy copy[kMaxCpAsync];
    unsigned n, groups;
};

// A warp-collective operation's work, run once by the last lane to arrive with the data
// pointers of all 32 lanes (null for lanes not taking part) while the others wait.
typedef void (*CollectiveFn)(void* const* lanes, unsigned eff);

struct Context {
#if defined(CUDASIM_UCONTEXT)
    ucontext_t uc;
#else
    void* sp;
#endif
};

// A fiber stack and the context saved on it.  Stacks are lent to threads: a thread
// takes one when it first runs and gives it back when it exits, so a kernel that
// never synchronises runs all threads of a block on one cache-hot stack, and only
// threads suspended at a barrier or warp operation hold a stack of their own.
struct Stack {
    Context ctx;
    char* map_base;  // mmap'ed region: guard page + stack
    size_t map_size;
    char* lo;
    size_t size;
    size_t color;  // bytes left unused at the top (see stack_create)
    void* asan_fake;
    Stack* next_free;
    // Where a switch to this stack starts reading (the saved registers, then the frames).
    const void* ctx_top() const {
#if defined(CUDASIM_UCONTEXT)
        return &ctx;
#else
        return ctx.sp;
#endif
    }
};

// One GPU thread of the block being run.
struct Fiber {
    Worker* worker;
    Stack* stack;  // from its first resume until it exits
    uint3 tid;
    unsigned linear;
    int state;
    // What the fiber waits for (barrier or warp operation) -- for release and errors.
    int kind;
    const char* op;
    const char* file;
    int line;
    int pred;
    unsigned wmask;
    int wsrc;
    unsigned long long wval;
    unsigned long long wres;
    CollectiveFn wfn;
    CpAsyncQueue* cp;  // null until this slot's first cp.async; freed with the worker
};

struct Job {
    const char* kernel;
    void (*entry)(void*);
    void* ctx;
    dim3 grid, block;
    unsigned long long nblocks;
    unsigned nthreads;
    size_t shared_bytes;
    int schedule;
    unsigned long long seed;
    int workers;
    size_t stack_size;
    const long long* shared_ranges;  // (offset, size) pairs in the TLS block
    int nranges;
    unsigned* block_order;  // shuffled schedule only
    unsigned long long next;  // next index into the block order (atomic)
    int stop;                 // set when a block failed (atomic)
    pthread_mutex_t err_mu;
    int failed;
    char* err;
    size_t errlen;
    unsigned long long switches;  // atomic
    int cancel;                   // CANCEL_* (atomic), set by cudasim_cancel
    int stack_overflow;           // a thread overflowed its stack (atomic)
    pthread_t threads[kMaxWorkers];  // the OS threads running this launch (to signal them)
    int nthreads_running;
};

struct Worker {
    Context sched;
    Fiber** fiber_slot;  // &t_fiber of this OS thread (saves a TLS lookup per switch)
    const void* sched_stack_lo;
    size_t sched_stack_size;
    void* sched_asan_fake;
    bool sched_entry;  // run_block switched to the running fiber (see fiber_main)
    Fiber* threads;   // kMaxBlockThreads entries
    unsigned* order;  // kMaxBlockThreads entries (shuffled schedule)
    Stack** stacks;   // every stack this worker made (to free them)
    unsigned nstacks, stacks_cap;
    Stack* free_stacks;
    size_t stack_size;
    char* dyn_shared;
    bool tls_checked, tls_ok;
    // Current block.
    Job* job;
    uint3 block_idx;
    dim3 block_dim, grid_dim;
    unsigned nthreads;
    int bar_result;
    bool failed;
    const char* fail_title;  // "barrier divergence", ... (null: a thread failed)
    char fail_msg[1536];
    unsigned warp_arrived[kMaxBlockThreads / 32];
    unsigned warp_present[kMaxBlockThreads / 32];
    unsigned long long switches;
    // The schedule: position in the current pass over the threads, whether any thread ran
    // in it, and the shuffled schedule's generator (see next_fiber).
    unsigned pos;
    bool ran;
    unsigned long long rng;
    // The barrier being reached: threads arrived, how many with a true predicate, the
    // first of them, and whether one came to another call site than the first.
    unsigned bar_arrived, bar_true;
    const Fiber* bar_first;
    bool bar_mixed;
    // Stopping a running GPU thread from a signal handler (a cancelled launch, a stack
    // overflow): run_block's return point, whether a fiber (not the scheduler) runs now,
    // and what stopped it.
    sigjmp_buf abort_jmp;
    volatile sig_atomic_t in_fiber;
    volatile sig_atomic_t abort_reason;
    pthread_t self;
    void* alt_stack;  // the signal stack this runtime gave the thread (freed with it)
    bool alt_stack_checked;
};

// ---- bounded message formatting (no std::string: keeps the header cheap to compile)
struct Msg {
    char* buf;
    size_t cap, len;
    void add(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
        if (len + 1 >= cap) return;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(buf + len, cap - len, fmt, ap);
        va_end(ap);
        if (n > 0) len = (len + (size_t)n < cap) ? len + (size_t)n : cap - 1;
    }
};

// The fiber running on this OS thread, and this OS thread's worker (GNU __thread,
// not thread_local: no TLS wrapper function calls on every threadIdx access).
extern __thread Fiber* t_fiber CUDASIM_HIDDEN;
extern __thread Worker* t_worker CUDASIM_HIDDEN;

// Stops the calling fiber for good and fails its block (kernel bugs detected from
// inside a thread: bad warp masks, assert(), __trap(), C++ exceptions).
CUDASIM_HIDDEN __attribute__((noreturn, format(printf, 1, 2))) void fiber_fail(const char* fmt, ...);
CUDASIM_HIDDEN int block_barrier(int kind, int pred, const char* file, int line);
CUDASIM_HIDDEN unsigned long long warp_op(int kind, const char* op, unsigned mask,
                                          unsigned long long val, int src, const char* file,
                                          int line);
CUDASIM_HIDDEN void warp_collective(CollectiveFn fn, void* data, const char* op, unsigned mask,
                                    const char* file, int line);
CUDASIM_HIDDEN int run_launch(const char* kernel, const long long* cfg, void (*entry)(void*),
                              void* ctx, char* err, long long errlen);
}  // namespace detail
}  // namespace cudasim

// Module exports used by the driver (defined in the implementation part).
CUDASIM_EXPORT int cudasim_abi_version(void);
CUDASIM_EXPORT int cudasim_asan_enabled(void);
CUDASIM_EXPORT void cudasim_set_tls_layout(long long off_a, long long off_b);
CUDASIM_EXPORT int cudasim_set_shared_ranges(int nkernels, int kernel, const long long* ranges, int n);
CUDASIM_EXPORT unsigned long long cudasim_switch_count(void);
CUDASIM_EXPORT void cudasim_shutdown(void);

// ---------------------------------------------------------------------------------
// Built-in variables
// ---------------------------------------------------------------------------------
namespace cudasim {
namespace detail {
// The accessors return pointers that are constant for the whole execution of a kernel
// by one thread (a fiber never migrates to another worker thread), so they are
// `const` functions: the compiler calls each once per kernel invocation and hoists it
// out of loops, instead of calling __tls_get_addr again after every store that might
// alias the worker's state.  (Returning a struct by value would defeat the hoisting.)
__attribute__((const, noinline, unused)) static const uint3* cur_thread_idx() noexcept { return &t_fiber->tid; }
__attribute__((const, noinline, unused)) static const uint3* cur_block_idx() noexcept { return &t_worker->block_idx; }
__attribute__((const, noinline, unused)) static const dim3* cur_block_dim() noexcept { return &t_worker->block_dim; }
__attribute__((const, noinline, unused)) static const dim3* cur_grid_dim() noexcept { return &t_worker->grid_dim; }
}  // namespace detail
}  // namespace cudasim
#define threadIdx (*::cudasim::detail::cur_thread_idx())
#define blockIdx (*::cudasim::detail::cur_block_idx())
#define blockDim (*::cudasim::detail::cur_block_dim())
#define gridDim (*::cudasim::detail::cur_grid_dim())

// ---------------------------------------------------------------------------------
// Synchronisation.  The call site (file:line, honouring #line directives) is
// captured through default arguments evaluated at the caller.
// ---------------------------------------------------------------------------------
namespace cudasim {
namespace detail {
template <class T>
static inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                  "warp shuffles move values of at most 8 bytes");
    unsigned long long r = 0;
    std::memcpy(&r, &v, sizeof(T));
    return r;
}
template <class T>
static inline T from_bits(unsigned long long b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}
static inline int check_width(int width, const char* op, const char* file, int line) {
    if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
        fiber_fail("%s at %s:%d: width %d is not a power of two in [1, 32]", op, file, line, width);
    }
    return width;
}
}  // namespace detail
}  // namespace cudasim

static inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    cudasim::detail::block_barrier(cudasim::detail::BAR_PLAIN, 0, file, line);
}
static inline int __syncthreads_count(int pred, const char* file = __builtin_FILE(),
                                      int line = __builtin_LINE()) {
    return cudasim::detail::block_barrier(cudasim::detail::BAR_COUNT, pred, file, line);
}
static inline int __syncthreads_and(int pred, const char* file = __builtin_FILE(),
                                    int line = __builtin_LINE()) {
    return cudasim::detail::block_barrier(cudasim::detail::BAR_AND, pred, file, line);
}
static inline int __syncthreads_or(int pred, const char* file = __builtin_FILE(),
                                   int line = __builtin_LINE()) {
    return cudasim::detail::block_barrier(cudasim::detail::BAR_OR, pred, file, line);
}
static inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    cudasim::detail::warp_op(cudasim::detail::W_SYNC, "__syncwarp", mask, 0, 0, file, line);
}

template <class T>
static inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize,
                            const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    using namespace cudasim::detail;
    width = check_width(width, "__shfl_sync", file, line);
    const int lane = (int)(t_fiber ? t_fiber->linear & 31u : 0);
    const int src = (lane & ~(width - 1)) + (srcLane & (width - 1));
    return from_bits<T>(warp_op(W_SHFL, "__shfl_sync", mask, to_bits(var), src, file, line));
}
template <class T>
static inline T __shfl_up_sync(unsigned mask, T var, unsigned int delta, int width = warpSize,
                               const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    using namespace cudasim::detail;
    width = check_width(width, "__shfl_up_sync", file, line);
    const int lane = (int)(t_fiber ? t_fiber->linear & 31u : 0);
    const long long local = lane & (width - 1);
    const int src = local >= (long long)delta ? lane - (int)delta : lane;
    return from_bits<T>(warp_op(W_SHFL, "__shfl_up_sync", mask, to_bits(var), src, file, line));
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = warpSize,
                                 const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    using namespace cudasim::detail;
    width = check_width(width, "__shfl_down_sync", file, line);
    const int lane = (int)(t_fiber ? t_fiber->linear & 31u : 0);
    const long long local = lane & (width - 1);
    const int src = local + (long long)delta < width ? lane + (int)delta : lane;
    return from_bits<T>(warp_op(W_SHFL, "__shfl_down_sync", mask, to_bits(var), src, file, line));
}
template <class T>
static inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize,
                                const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    using namespace cudasim::detail;
    width = check_width(width, "__shfl_xor_sync", file, line);
    const int lane = (int)(t_fiber ? t_fiber->linear & 31u : 0);
    const int s = lane ^ (laneMask & 31);
    // Lanes may read from their own or earlier width-groups, not from later ones.
    const int src = s < (lane / width + 1) * width ? s : lane;
    return from_bits<T>(warp_op(W_SHFL, "__shfl_xor_sync", mask, to_bits(var), src, file, line));
}

static inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                                     int line = __builtin_LINE()) {
    return (unsigned)cudasim::detail::warp_op(cudasim::detail::W_BALLOT, "__ballot_sync", mask,
                                              pred != 0, 0, file, line);
}
static inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                             int line = __builtin_LINE()) {
    return (int)cudasim::detail::warp_op(cudasim::detail::W_ANY, "__any_sync", mask, pred != 0, 0,
                                         file, line);
}
static inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                             int line = __builtin_LINE()) {
    return (int)cudasim::detail::warp_op(cudasim::detail::W_ALL, "__all_sync", mask, pred != 0, 0,
                                         file, line);
}
static inline int __uni_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                             int line = __builtin_LINE()) {
    const unsigned b = (unsigned)cudasim::detail::warp_op(cudasim::detail::W_BALLOT, "__uni_sync",
                                                          mask, pred != 0, 0, file, line);
    return b == 0 || b == (mask & cudasim::detail::t_worker->warp_present[cudasim::detail::t_fiber->linear >> 5]);
}
// The lanes of the warp that have not exited.  Fibers cannot observe divergence,
// so inside a divergent branch this is wider than on a GPU.
static inline unsigned __activemask() {
    using namespace cudasim::detail;
    Fiber* f = t_fiber;
    if (f == nullptr) return 0;
    Worker* w = f->worker;
    const unsigned warp = f->linear >> 5;
    unsigned m = 0;
    for (unsigned l = 0; l < 32; ++l) {
        if (((w->warp_present[warp] >> l) & 1u) && w->threads[warp * 32 + l].state != F_EXITED) m |= 1u << l;
    }
    return m;
}
template <class T>
static inline unsigned __match_any_sync(unsigned mask, T value, const char* file = __builtin_FILE(),
                                        int line = __builtin_LINE()) {
    using namespace cudasim::detail;
    return (unsigned)warp_op(W_MATCH_ANY, "__match_any_sync", mask, to_bits(value), 0, file, line);
}
template <class T>
static inline unsigned __match_all_sync(unsigned mask, T value, int* pred,
                                        const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    using namespace cudasim::detail;
    const unsigned r = (unsigned)warp_op(W_MATCH_ALL, "__match_all_sync", mask, to_bits(value), 0, file, line);
    *pred = r != 0;
    return r;
}
#define CUDASIM_REDUCE(NAME, KIND, T)                                                              \
    static inline T NAME(unsigned mask, T value, const char* file = __builtin_FILE(),              \
                         int line = __builtin_LINE()) {                                            \
        return (T)cudasim::detail::warp_op(cudasim::detail::KIND, #NAME, mask,                     \
                                           (unsigned long long)(unsigned)value, 0, file, line);    \
    }
CUDASIM_REDUCE(__reduce_add_sync, W_ADD, unsigned)
CUDASIM_REDUCE(__reduce_add_sync, W_ADD, int)
CUDASIM_REDUCE(__reduce_min_sync, W_UMIN, unsigned)
CUDASIM_REDUCE(__reduce_min_sync, W_MIN, int)
CUDASIM_REDUCE(__reduce_max_sync, W_UMAX, unsigned)
CUDASIM_REDUCE(__reduce_max_sync, W_MAX, int)
CUDASIM_REDUCE(__reduce_and_sync, W_AND, unsigned)
CUDASIM_REDUCE(__reduce_or_sync, W_OR, unsigned)
CUDASIM_REDUCE(__reduce_xor_sync, W_XOR, unsigned)

static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
// All threads of a block run on one OS thread: a compiler barrier is enough.
static inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
// Cooperative fibers cannot wait for each other in a spin loop; sleeping is a no-op.
static inline void __nanosleep(unsigned) {}

// ---------------------------------------------------------------------------------
// PTX's tensor-core and asynchronous-copy instructions (cudasim::ptx), which CUDA C++
// reaches only through inline assembly.  Device code calls them through small wrappers
// (netc's templates/mma.cuh) that are the PTX instruction on a GPU and these functions here.
// Each follows the PTX ISA's definition lane by lane:
//  * mma_m16n8k16 (mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32): a warp
//    collective; every lane brings its fragments in the ISA's layout (groupID = lane / 4,
//    t = lane % 4: A's register i holds row groupID + 8 * (i % 2), columns 2t + 8 * (i / 2)
//    and + 1; B's register i holds rows 2t + 8 * i and + 1 of column groupID; C and D's
//    element i is row groupID + 8 * (i / 2), column 2t + i % 2), the last lane to arrive
//    computes D = A . B + C for the warp, and every lane takes its own fragment of D.  The
//    16-bit products are exact in float; they are added to C in float in k order 0..15 (the
//    GPU's order of addition inside the instruction is not specified).
//  * ldmatrix (ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].shared.b16): a warp collective;
//    lanes 8j..8j+7 give the addresses of the 8 rows (16 bytes each, 16-byte aligned) of
//    matrix j, and lane i receives in register j the elements (i / 4, 2 (i % 4)) and
//    (i / 4, 2 (i % 4) + 1) of matrix j, or with .trans (2 (i % 4), i / 4) and
//    (2 (i % 4) + 1, i / 4); the low half holds the first.
//  * cp_async (cp.async.{ca,cg}.shared.global, 4, 8 or 16 bytes, src-size for zero fill),
//    cp_async_commit_group, cp_async_wait_group(n): a copy is only recorded when issued and
//    lands when the issuing thread waits for its group -- the latest moment the ISA allows --
//    so a kernel that reads shared memory before waiting reads the 0xFF poison (NaN in
//    float, f16 and bf16), and a thread that exits with copies never waited for fails the
//    launch.
// ---------------------------------------------------------------------------------
namespace cudasim {
namespace ptx {
namespace detail {
using ::cudasim::detail::fiber_fail;

struct MmaLane {
    float* d;
    const unsigned* a;
    const unsigned* b;
    const float* c;
};

// D = A . B + C of one warp's 16x8xK tile, gathered from the lanes as matrices; each lane's d
// gets its four elements (groupID = lane / 4, t = lane % 4: rows groupID and groupID + 8,
// columns 2t and 2t + 1), each summed in float in k order 0..K-1 onto C.
template <int K>
static void mma_accumulate(void* const* lanes, const float (&a)[16][K], const float (&b)[K][8],
                           const float (&c)[16][8]) {
    for (int lane = 0; lane < 32; ++lane) {
        const MmaLane* l = static_cast<const MmaLane*>(lanes[lane]);
        const int g = lane / 4, t = lane % 4;
        for (int i = 0; i < 4; ++i) {
            const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
            float sum = c[row][col];
            for (int k = 0; k < K; ++k) sum += a[row][k] * b[k][col];
            l->d[i] = sum;
        }
    }
}

template <bool BF16>
static inline float half_at(unsigned reg, int which) {
    const unsigned short bits = (unsigned short)(which ? reg >> 16 : reg & 0xffffu);
    return BF16 ? ::cudasim::detail::bf16_to_f32(bits) : ::cudasim::detail::f16_to_f32(bits);
}

template <bool BF16>
static void mma_m16n8k16_warp(void* const* lanes, unsigned eff) {
    if (eff != 0xffffffffu) fiber_fail("mma.sync.aligned needs all 32 lanes of the warp (mask 0x%08x)", eff);
    float a[16][16], b[16][8], c[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        const MmaLane* l = static_cast<const MmaLane*>(lanes[lane]);
        const int g = lane / 4, t = lane % 4;
        for (int i = 0; i < 4; ++i) {
            const int row = g + 8 * (i % 2), col = 2 * t + 8 * (i / 2);
            a[row][col] = half_at<BF16>(l->a[i], 0);
            a[row][col + 1] = half_at<BF16>(l->a[i], 1);
            c[g + 8 * (i / 2)][2 * t + i % 2] = l->c[i];
        }
        for (int i = 0; i < 2; ++i) {
            b[2 * t + 8 * i][g] = half_at<BF16>(l->b[i], 0);
            b[2 * t + 8 * i + 1][g] = half_at<BF16>(l->b[i], 1);
        }
    }
    mma_accumulate(lanes, a, b, c);
}

struct LdmatrixLane {
    unsigned* r;
    const void* row;
};

template <int NUM, bool TRANS>
static void ldmatrix_warp(void* const* lanes, unsigned eff) {
    if (eff != 0xffffffffu) fiber_fail("ldmatrix.sync.aligned needs all 32 lanes of the warp (mask 0x%08x)", eff);
    unsigned short m[NUM][8][8];
    for (int j = 0; j < NUM; ++j) {
        for (int row = 0; row < 8; ++row) {
            const void* p = static_cast<const LdmatrixLane*>(lanes[8 * j + row])->row;
            if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
                fiber_fail("ldmatrix: lane %d's row address %p is not 16-byte aligned", 8 * j + row, p);
            }
            std::memcpy(m[j][row], p, 16);
        }
    }
    for (int lane = 0; lane < 32; ++lane) {
        unsigned* r = static_cast<const LdmatrixLane*>(lanes[lane])->r;
        const int row = lane / 4, col = 2 * (lane % 4);
        for (int j = 0; j < NUM; ++j) {
            const unsigned lo = TRANS ? m[j][col][row] : m[j][row][col];
            const unsigned hi = TRANS ? m[j][col + 1][row] : m[j][row][col + 1];
            r[j] = lo | (hi << 16);
        }
    }
}
}  // namespace detail

// d = a . b + c for the warp's 16x8x16 tile (f16 or bf16 inputs, float accumulators).
template <bool BF16>
static inline void mma_m16n8k16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                const float (&c)[4], const char* file = __builtin_FILE(),
                                int line = __builtin_LINE()) {
    float out[4];
    detail::MmaLane mine{out, a, b, c};
    ::cudasim::detail::warp_collective(&detail::mma_m16n8k16_warp<BF16>, &mine,
                                       "mma.sync.aligned.m16n8k16", 0xffffffffu, file, line);
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}

// TF32 (netc's --precision tf32): cvt.rna.tf32.f32 rounds a float to TF32 (10 mantissa bits,
// round to nearest, ties away from zero) in a 32-bit register, low 13 bits zero; NaN stays NaN
// (canonical 0x7fffffff).  mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 is a warp
// collective in the ISA's layout (groupID = lane / 4, t = lane % 4: A's register i holds row
// groupID + 8 * (i % 2), column t + 4 * (i / 2); B's register i holds row t + 4 * i of column
// groupID; C and D as for m16n8k16); it reads the top 19 bits of each operand (the low 13 are
// ignored, as by the hardware for operands not rounded first), the products are exact in
// float, added to C in float in k order 0..7.
namespace detail {
static inline float tf32_at(unsigned reg) { return ::cudasim::detail::bit_cast<float>(reg & 0xffffe000u); }

static void mma_m16n8k8_tf32_warp(void* const* lanes, unsigned eff) {
    if (eff != 0xffffffffu) fiber_fail("mma.sync.aligned needs all 32 lanes of the warp (mask 0x%08x)", eff);
    float a[16][8], b[8][8], c[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        const MmaLane* l = static_cast<const MmaLane*>(lanes[lane]);
        const int g = lane / 4, t = lane % 4;
        for (int i = 0; i < 4; ++i) {
            a[g + 8 * (i % 2)][t + 4 * (i / 2)] = tf32_at(l->a[i]);
            c[g + 8 * (i / 2)][2 * t + i % 2] = l->c[i];
        }
        for (int i = 0; i < 2; ++i) b[t + 4 * i][g] = tf32_at(l->b[i]);
    }
    mma_accumulate(lanes, a, b, c);
}
}  // namespace detail

static inline unsigned cvt_rna_tf32(float x) {
    const unsigned bits = ::cudasim::detail::bit_cast<unsigned>(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fffffffu;
    return (bits + 0x1000u) & 0xffffe000u;  // past the largest finite TF32: infinity, as rna
}

// d = a . b + c for the warp's 16x8x8 tile (TF32 inputs in 32-bit registers, float accumulators).
static inline void mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                    const float (&c)[4], const char* file = __builtin_FILE(),
                                    int line = __builtin_LINE()) {
    float out[4];
    detail::MmaLane mine{out, a, b, c};
    ::cudasim::detail::warp_collective(&detail::mma_m16n8k8_tf32_warp, &mine,
                                       "mma.sync.aligned.m16n8k8.tf32", 0xffffffffu, file, line);
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}

// NUM 8x8 matrices of 16-bit elements from shared memory; `row` is this lane's row address.
template <int NUM, bool TRANS>
static inline void ldmatrix(unsigned (&r)[NUM], const void* row, const char* file = __builtin_FILE(),
                            int line = __builtin_LINE()) {
    static_assert(NUM == 1 || NUM == 2 || NUM == 4, "ldmatrix loads 1, 2 or 4 matrices");
    detail::LdmatrixLane mine{r, row};
    ::cudasim::detail::warp_collective(&detail::ldmatrix_warp<NUM, TRANS>, &mine,
                                       TRANS ? "ldmatrix.sync.aligned.trans" : "ldmatrix.sync.aligned",
                                       0xffffffffu, file, line);
}

// Copies `size` bytes (4, 8 or 16) from global to shared memory asynchronously: the first
// `src_size` bytes from `src`, zeros after them.
static inline void cp_async(void* dst, const void* src, unsigned size, unsigned src_size) {
    using namespace ::cudasim::detail;
    Fiber* f = t_fiber;
    if (f == nullptr) fiber_fail("cp.async called outside a kernel launch");
    if (size != 4 && size != 8 && size != 16) fiber_fail("cp.async copies 4, 8 or 16 bytes, not %u", size);
    if (src_size > size) fiber_fail("cp.async: src-size %u is more than the %u bytes copied", src_size, size);
    if (reinterpret_cast<uintptr_t>(dst) % size != 0 || (src_size != 0 && reinterpret_cast<uintptr_t>(src) % size != 0)) {
        fiber_fail("cp.async of %u bytes: the addresses %p (shared) and %p (global) must be %u-byte aligned",
                   size, dst, src, size);
    }
    if (f->cp == nullptr) {
        f->cp = static_cast<CpAsyncQueue*>(calloc(1, sizeof(CpAsyncQueue)));
        if (f->cp == nullptr) fiber_fail("cp.async: out of memory for the copies in flight");
    }
    CpAsyncQueue& queue = *f->cp;
    if (queue.n == kMaxCpAsync) {
        fiber_fail("more than %u cp.async copies in flight in one thread (wait for some with cp.async.wait_group)",
                   kMaxCpAsync);
    }
    queue.copy[queue.n++] = CpAsyncCopy{dst, src, size, src_size, queue.groups};
}

static inline void cp_async_commit_group() {
    ::cudasim::detail::Fiber* f = ::cudasim::detail::t_fiber;
    if (f == nullptr) ::cudasim::detail::fiber_fail("cp.async.commit_group called outside a kernel launch");
    if (f->cp != nullptr) ++f->cp->groups;  // without copies yet, every group is empty
}

// Completes every committed group but the `n` most recent ones.
static inline void cp_async_wait_group(unsigned n) {
    using namespace ::cudasim::detail;
    Fiber* f = t_fiber;
    if (f == nullptr) fiber_fail("cp.async.wait_group called outside a kernel launch");
    if (f->cp == nullptr) return;
    CpAsyncQueue& queue = *f->cp;
    unsigned kept = 0;
    for (unsigned i = 0; i < queue.n; ++i) {
        const CpAsyncCopy& copy = queue.copy[i];
        if (copy.group + n < queue.groups) {
            if (copy.src_size) std::memcpy(copy.dst, copy.src, copy.src_size);
            std::memset(static_cast<char*>(copy.dst) + copy.src_size, 0, copy.size - copy.src_size);
        } else {
            queue.copy[kept++] = copy;
        }
    }
    queue.n = kept;
}
}  // namespace ptx
}  // namespace cudasim

__attribute__((noreturn)) static inline void __trap() { cudasim::detail::fiber_fail("__trap() called"); }
__attribute__((noreturn)) static inline void __brkpt() { cudasim::detail::fiber_fail("__brkpt() called"); }

static inline long long clock64() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
static inline unsigned long long __globaltimer() { return (unsigned long long)clock64(); }

// ---------------------------------------------------------------------------------
// Atomics (real ones: blocks run concurrently on several OS threads)
// ---------------------------------------------------------------------------------
#define CUDASIM_ATOMIC_INT(T)                                                                      \
    static inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }    \
    static inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }    \
    static inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }  \
    static inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }    \
    static inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }      \
    static inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST); }    \
    static inline T atomicCAS(T* p, T compare, T v) {                                              \
        __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);    \
        return compare;                                                                            \
    }                                                                                              \
    static inline T atomicMax(T* p, T v) {                                                         \
        T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);                                              \
        while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST,        \
                                                       __ATOMIC_SEQ_CST)) {}                       \
        return old;                                                                                \
    }                                                                                              \
    static inline T atomicMin(T* p, T v) {                                                         \
        T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);                                              \
        while (old > v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST,        \
                                                       __ATOMIC_SEQ_CST)) {}                       \
        return old;                                                                                \
    }
CUDASIM_ATOMIC_INT(int)
CUDASIM_ATOMIC_INT(unsigned int)
CUDASIM_ATOMIC_INT(long long)
CUDASIM_ATOMIC_INT(unsigned long long)

static inline unsigned short atomicCAS(unsigned short* p, unsigned short compare, unsigned short v) {
    __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;
}
static inline unsigned atomicInc(unsigned* p, unsigned limit) {
    unsigned old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (!__atomic_compare_exchange_n(p, &old, old >= limit ? 0u : old + 1u, false,
                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    return old;
}
static inline unsigned atomicDec(unsigned* p, unsigned limit) {
    unsigned old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (!__atomic_compare_exchange_n(p, &old, (old == 0 || old > limit) ? limit : old - 1u,
                                        false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    return old;
}

// Floating-point atomics: compare-and-swap on the bit pattern.
#define CUDASIM_ATOMIC_FLOAT(T, U, NAME, EXPR)                                                     \
    static inline T NAME(T* p, T v) {                                                              \
        U* u = reinterpret_cast<U*>(p);                                                            \
        U old = __atomic_load_n(u, __ATOMIC_SEQ_CST);                                              \
        for (;;) {                                                                                 \
            const T a = cudasim::detail::bit_cast<T>(old);                                         \
            const T r = (EXPR);                                                                    \
            if (__atomic_compare_exchange_n(u, &old, cudasim::detail::bit_cast<U>(r), false,       \
                                            __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))                   \
                return a;                                                                          \
        }                                                                                          \
    }
CUDASIM_ATOMIC_FLOAT(float, uint32_t, atomicAdd, a + v)
CUDASIM_ATOMIC_FLOAT(double, uint64_t, atomicAdd, a + v)
CUDASIM_ATOMIC_FLOAT(float, uint32_t, atomicSub, a - v)
CUDASIM_ATOMIC_FLOAT(float, uint32_t, atomicMax, fmaxf(a, v))
CUDASIM_ATOMIC_FLOAT(float, uint32_t, atomicMin, fminf(a, v))
CUDASIM_ATOMIC_FLOAT(double, uint64_t, atomicMax, fmax(a, v))
CUDASIM_ATOMIC_FLOAT(double, uint64_t, atomicMin, fmin(a, v))
CUDASIM_ATOMIC_FLOAT(__half, unsigned short, atomicAdd, a + v)
CUDASIM_ATOMIC_FLOAT(__nv_bfloat16, unsigned short, atomicAdd, a + v)
static inline float atomicExch(float* p, float v) {
    return cudasim::detail::bit_cast<float>(
        __atomic_exchange_n(reinterpret_cast<uint32_t*>(p), cudasim::detail::bit_cast<uint32_t>(v),
                            __ATOMIC_SEQ_CST));
}

// Scoped variants: every scope is as strong as the system scope here.
#define CUDASIM_ATOMIC_SCOPED(NAME)                                                                \
    template <class... A> static inline auto NAME##_block(A... a) { return NAME(a...); }           \
    template <class... A> static inline auto NAME##_system(A... a) { return NAME(a...); }
CUDASIM_ATOMIC_SCOPED(atomicAdd)
CUDASIM_ATOMIC_SCOPED(atomicSub)
CUDASIM_ATOMIC_SCOPED(atomicExch)
CUDASIM_ATOMIC_SCOPED(atomicMax)
CUDASIM_ATOMIC_SCOPED(atomicMin)
CUDASIM_ATOMIC_SCOPED(atomicCAS)
CUDASIM_ATOMIC_SCOPED(atomicAnd)
CUDASIM_ATOMIC_SCOPED(atomicOr)
CUDASIM_ATOMIC_SCOPED(atomicXor)
CUDASIM_ATOMIC_SCOPED(atomicInc)
CUDASIM_ATOMIC_SCOPED(atomicDec)

// ---------------------------------------------------------------------------------
// Loads/stores with cache hints (plain accesses here)
// ---------------------------------------------------------------------------------
template <class T> static inline T __ldg(const T* p) { return *p; }
template <class T> static inline T __ldcg(const T* p) { return *p; }
template <class T> static inline T __ldca(const T* p) { return *p; }
template <class T> static inline T __ldcs(const T* p) { return *p; }
template <class T> static inline T __ldlu(const T* p) { return *p; }
template <class T> static inline T __ldcv(const T* p) { return *p; }
template <class T> static inline void __stcg(T* p, T v) { *p = v; }
template <class T> static inline void __stcs(T* p, T v) { *p = v; }
template <class T> static inline void __stwb(T* p, T v) { *p = v; }
template <class T> static inline void __stwt(T* p, T v) { *p = v; }

// ---------------------------------------------------------------------------------
// Math.  <cmath> supplies expf, logf, sqrtf, tanhf, erff, fmaf, ...; these are the
// CUDA-only names.  No -ffast-math: results are IEEE (a product feeding an addition is
// contracted into one FMA, as on the GPU), and the intrinsics (__expf, __fdividef, ...) are
// computed as their accurate counterparts.
// ---------------------------------------------------------------------------------
#define CUDART_INF_F (__builtin_inff())
#define CUDART_NAN_F (__builtin_nanf(""))
#define CUDART_INF (__builtin_inf())
#define CUDART_NAN (__builtin_nan(""))
#define CUDART_PI_F 3.141592654f
#define CUDART_PI 3.1415926535897931e+0
#define CUDART_SQRT_HALF_F 0.707106781f
#define CUDART_SQRT_2PI_F 2.506628275f
#define CUDART_L2E_F 1.442695041f
#define CUDART_LN2_F 0.693147181f
#define CUDART_ZERO_F 0.0f
#define CUDART_ONE_F 1.0f
#define CUDART_MAX_NORMAL_F 3.40282347e+38f

static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
// glibc's <math.h> already declares (without defining) __expf, __logf, ... as
// internal aliases, so these intrinsics are function-like macros.
#define __expf(x) expf(x)
#define __exp10f(x) exp10f(x)
#define __logf(x) logf(x)
#define __log2f(x) log2f(x)
#define __log10f(x) log10f(x)
#define __powf(x, y) powf((x), (y))
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanf(x) tanf(x)
#define __sincosf(x, s, c) sincosf((x), (s), (c))
#define __tanhf(x) tanhf(x)
static inline float __fdividef(float a, float b) { return a / b; }
static inline float fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
// The modules build with -ffp-contract=fast, as nvcc's -fmad=true (protocol.py says what
// that guarantees).  The _rn intrinsics are never contracted on a GPU: their operand and
// result go through `opaque`, an empty asm statement the compiler cannot see through, so it
// neither fuses the operation into a later addition nor merges it with an equal a * b
// elsewhere (a product with a use that is not an addition is fused nowhere by g++).
namespace cudasim {
namespace detail {
template <class T>
static inline T opaque(T v) {
#if defined(__x86_64__)
    __asm__("" : "+x"(v));
#elif defined(__aarch64__)
    __asm__("" : "+w"(v));
#else
    volatile T copy = v;
    v = copy;
#endif
    return v;
}
}  // namespace detail
}  // namespace cudasim
#define CUDASIM_UNCONTRACTED(T, NAME, OP) \
    static inline T NAME(T a, T b) { return cudasim::detail::opaque(cudasim::detail::opaque(a) OP b); }
CUDASIM_UNCONTRACTED(float, __fadd_rn, +)
CUDASIM_UNCONTRACTED(float, __fsub_rn, -)
CUDASIM_UNCONTRACTED(float, __fmul_rn, *)
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
CUDASIM_UNCONTRACTED(double, __dadd_rn, +)
CUDASIM_UNCONTRACTED(double, __dmul_rn, *)
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
static inline double __drcp_rn(double x) { return 1.0 / x; }
static inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }
static inline float normcdff(float x) { return 0.5f * erfcf(-x * 0.70710678118654752f); }
static inline double normcdf(double x) { return 0.5 * erfc(-x * 0.70710678118654752); }
static inline float sinpif(float x) { return sinf(3.14159265358979323846f * x); }
static inline float cospif(float x) { return cosf(3.14159265358979323846f * x); }

static inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
static inline int __float2int_rz(float x) { return (int)truncf(x); }
static inline int __float2int_rd(float x) { return (int)floorf(x); }
static inline int __float2int_ru(float x) { return (int)ceilf(x); }
static inline unsigned __float2uint_rn(float x) { return (unsigned)nearbyintf(x); }
static inline unsigned __float2uint_rz(float x) { return (unsigned)truncf(x); }
static inline long long __float2ll_rn(float x) { return (long long)nearbyintf(x); }
static inline long long __float2ll_rz(float x) { return (long long)truncf(x); }
static inline float __int2float_rn(int x) { return (float)x; }
static inline float __uint2float_rn(unsigned x) { return (float)x; }
static inline float __ll2float_rn(long long x) { return (float)x; }
static inline float __double2float_rn(double x) { return (float)x; }
static inline int __double2int_rn(double x) { return (int)nearbyint(x); }
static inline int __float_as_int(float x) { return cudasim::detail::bit_cast<int>(x); }
static inline unsigned __float_as_uint(float x) { return cudasim::detail::bit_cast<unsigned>(x); }
static inline float __int_as_float(int x) { return cudasim::detail::bit_cast<float>(x); }
static inline float __uint_as_float(unsigned x) { return cudasim::detail::bit_cast<float>(x); }
static inline long long __double_as_longlong(double x) { return cudasim::detail::bit_cast<long long>(x); }
static inline double __longlong_as_double(long long x) { return cudasim::detail::bit_cast<double>(x); }

static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
static inline unsigned long long __brevll(unsigned long long x) {
    return ((unsigned long long)__brev((unsigned)x) << 32) | __brev((unsigned)(x >> 32));
}
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned)((v >> (((s >> (4 * i)) & 7u) * 8)) & 0xffu) << (8 * i);
    return r;
}
static inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned sh) {
    const unsigned long long v = ((unsigned long long)hi << 32) | lo;
    return (unsigned)((v << (sh & 31u)) >> 32);
}
static inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned sh) {
    const unsigned long long v = ((unsigned long long)hi << 32) | lo;
    return (unsigned)(v >> (sh & 31u));
}
static inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
static inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
static inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
static inline int __mul24(int a, int b) { return (int)((long long)((a << 8) >> 8) * ((b << 8) >> 8)); }
static inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
static inline int __hadd(int a, int b) { return (int)(((long long)a + b) >> 1); }
static inline int __rhadd(int a, int b) { return (int)(((long long)a + b + 1) >> 1); }
static inline unsigned __uhadd(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a + b) >> 1); }
static inline unsigned __sad(int a, int b, unsigned c) { return c + (unsigned)(a > b ? a - b : b - a); }
static inline unsigned __usad(unsigned a, unsigned b, unsigned c) { return c + (a > b ? a - b : b - a); }

// CUDA's overload set of min/max (note: min(1.0f, 0) is ambiguous there too).
#define CUDASIM_MINMAX(T)                                                                          \
    static inline T max(T a, T b) { return a > b ? a : b; }                                        \
    static inline T min(T a, T b) { return a < b ? a : b; }
CUDASIM_MINMAX(int)
CUDASIM_MINMAX(unsigned int)
CUDASIM_MINMAX(long)
CUDASIM_MINMAX(unsigned long)
CUDASIM_MINMAX(long long)
CUDASIM_MINMAX(unsigned long long)
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline float min(float a, float b) { return fminf(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(float a, double b) { return fmax((double)a, b); }
static inline double max(double a, float b) { return fmax(a, (double)b); }
static inline double min(float a, double b) { return fmin((double)a, b); }
static inline double min(double a, float b) { return fmin(a, (double)b); }
static inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
static inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
static inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
static inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
static inline long long llmax(long long a, long long b) { return a > b ? a : b; }
static inline long long llmin(long long a, long long b) { return a < b ? a : b; }
static inline unsigned umax(unsigned a, unsigned b) { return a > b ? a : b; }
static inline unsigned umin(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned long long ullmax(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
static inline unsigned long long ullmin(unsigned long long a, unsigned long long b) { return a < b ? a : b; }

namespace cudasim {
namespace detail {
// ---- kernel launch and signature deduction from the kernel's function type
template <class F>
struct Thunk {
    static void run(void* p) { (*static_cast<F*>(p))(); }
};

template <class... A, std::size_t... I>
static int launch_impl(void (*fn)(A...), const char* name, const long long* cfg, void** args,
                       char* err, long long errlen, std::index_sequence<I...>) {
    // Each kernel parameter is read once from the driver's argument slot; every
    // thread then gets its own copy (parameters are by value).
    std::tuple<std::decay_t<A>...> vals{*static_cast<std::decay_t<A>*>(args[I])...};
    (void)args;
    auto call = [&vals, fn]() { fn(std::get<I>(vals)...); };
    (void)vals;
    return run_launch(name, cfg, &Thunk<decltype(call)>::run, &call, err, errlen);
}

template <class... A>
static int launch(void (*fn)(A...), const char* name, const long long* cfg, void** args, char* err,
                  long long errlen) {
    return launch_impl(fn, name, cfg, args, err, errlen, std::index_sequence_for<A...>{});
}

template <class T>
static void type_code(Msg& m) {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_pointer_v<U>) {
        m.add("ptr<");
        type_code<std::remove_pointer_t<U>>(m);
        m.add(">");
    } else if constexpr (std::is_void_v<U>) {
        m.add("void");
    } else if constexpr (std::is_same_v<U, bool>) {
        m.add("bool");
    } else if constexpr (std::is_same_v<U, __half>) {
        m.add("f16");
    } else if constexpr (std::is_same_v<U, __nv_bfloat16>) {
        m.add("bf16");
    } else if constexpr (std::is_enum_v<U>) {
        type_code<std::underlying_type_t<U>>(m);
    } else if constexpr (std::is_integral_v<U>) {
        m.add("%c%zu", std::is_signed_v<U> ? 'i' : 'u', sizeof(U) * 8);
    } else if constexpr (std::is_same_v<U, float>) {
        m.add("f32");
    } else if constexpr (std::is_same_v<U, double>) {
        m.add("f64");
    } else {
        m.add("raw<%zu:%zu>", sizeof(U), alignof(U));
    }
}

template <class... A>
static const char* signature_of(void (*)(A...)) {
    static char buf[1024];
    Msg m{buf, sizeof buf, 0};
    int i = 0;
    ((m.add("%s", i++ ? "," : ""), type_code<A>(m)), ...);
    (void)i;
    return buf;
}

}  // namespace detail

// Base of the current block's dynamic shared memory (see the top comment).
// The region is mapped before a worker runs its first block and never moves, so the
// pointer may be cached (the namespace-scope rewrite keeps it in a thread_local).
template <class T>
static inline T* dynamic_shared() {
    detail::Worker* w = detail::t_worker;
    if (w == nullptr || w->dyn_shared == nullptr) {
        detail::fiber_fail("dynamic shared memory used outside a kernel launch");
    }
    return reinterpret_cast<T*>(w->dyn_shared);
}
}  // namespace cudasim

#define NETC_DYNAMIC_SHARED(type, name) type* name = ::cudasim::dynamic_shared<type>()


// =================================================================================
// Runtime implementation: compiled once by the driver with -DCUDASIM_IMPLEMENTATION
// (`g++ -c -x c++ cudasim.h`) and linked into every module.
// =================================================================================
#if defined(CUDASIM_IMPLEMENTATION)

extern "C" {
// x86-64 context switch (below): saves the callee-saved registers on the current
// stack, stores the stack pointer to *save_sp and continues on new_sp.  glibc's
// swapcontext would also save/restore the signal mask with a syscall per switch.
CUDASIM_HIDDEN void cudasim_swap_context(void** save_sp, void* new_sp);
CUDASIM_HIDDEN void cudasim_fiber_trampoline(void);
// Two thread-local anchors whose offsets in this module's TLS block the driver reads
// from the ELF symbol table; with them the runtime finds the static __shared__
// variables of the current worker thread (see set_tls_layout).
CUDASIM_HIDDEN __thread char cudasim_tls_anchor_a;
CUDASIM_HIDDEN __thread char cudasim_tls_anchor_b[8];
}

#if !defined(CUDASIM_UCONTEXT)
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".globl cudasim_swap_context\n"
    ".hidden cudasim_swap_context\n"
    ".type cudasim_swap_context,@function\n"
    "cudasim_swap_context:\n"
    "    pushq %rbp\n"
    "    pushq %rbx\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    movq %rsp, (%rdi)\n"
    "    movq %rsi, %rsp\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbx\n"
    "    popq %rbp\n"
    "    ret\n"
    ".size cudasim_swap_context, .-cudasim_swap_context\n"
    // A new fiber's first switch "returns" here with r12 = entry function and
    // r13 = its argument (see stack_reset); the entry never returns.
    ".p2align 4\n"
    ".globl cudasim_fiber_trampoline\n"
    ".hidden cudasim_fiber_trampoline\n"
    ".type cudasim_fiber_trampoline,@function\n"
    "cudasim_fiber_trampoline:\n"
    "    .cfi_startproc\n"
    "    .cfi_undefined rip\n"
    "    movq %r13, %rdi\n"
    "    callq *%r12\n"
    "    ud2\n"
    "    .cfi_endproc\n"
    ".size cudasim_fiber_trampoline, .-cudasim_fiber_trampoline\n");
#endif

namespace cudasim {
namespace detail {
__thread Fiber* t_fiber = nullptr;
__thread Worker* t_worker = nullptr;

// Module-wide state set by the driver after loading (see the cudasim_* exports).
static long long g_tls_off_a = -1, g_tls_off_b = -1;
static const long long** g_kernel_ranges = nullptr;
static int* g_kernel_nranges = nullptr;
static int g_nkernels_ranges = 0;
static unsigned long long g_total_switches = 0;

static inline unsigned long long splitmix64(unsigned long long& s) {
    unsigned long long z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// ---- AddressSanitizer fiber annotations (no-ops without ASan)
static inline void asan_start_switch(void** fake, const void* lo, size_t size) {
#if defined(CUDASIM_ASAN)
    __sanitizer_start_switch_fiber(fake, lo, size);
#else
    (void)fake; (void)lo; (void)size;
#endif
}
static inline void asan_finish_switch(void* fake, const void** lo, size_t* size) {
#if defined(CUDASIM_ASAN)
    __sanitizer_finish_switch_fiber(fake, lo, size);
#else
    (void)fake; (void)lo; (void)size;
#endif
}

static inline void ctx_switch(Context* from, Context* to) {
#if defined(CUDASIM_UCONTEXT)
    swapcontext(&from->uc, &to->uc);
#else
    cudasim_swap_context(&from->sp, to->sp);
#endif
}

static void fiber_main(void*);
#if defined(CUDASIM_UCONTEXT)
static void fiber_entry_uc(unsigned hi, unsigned lo) {
    fiber_main(reinterpret_cast<void*>(((uintptr_t)hi << 32) | (uintptr_t)lo));
}
#endif

// Prepares a stack to start thread `f` at fiber_main.
static void stack_reset(Stack* s, Fiber* f) {
#if defined(CUDASIM_ASAN)
    // A thread starts on a clean stack: frames abandoned mid-kernel, and the scopes of
    // earlier threads, leave poisoned redzones behind (a flag set where a stack is abandoned
    // missed some: a false stack-use-after-scope in the next thread's start).
    __asan_unpoison_memory_region(s->lo, s->size);
#endif
    s->asan_fake = nullptr;
#if defined(CUDASIM_UCONTEXT)
    getcontext(&s->ctx.uc);
    s->ctx.uc.uc_stack.ss_sp = s->lo;
    s->ctx.uc.uc_stack.ss_size = s->size - s->color;
    s->ctx.uc.uc_link = nullptr;
    const uintptr_t p = reinterpret_cast<uintptr_t>(f);
    makecontext(&s->ctx.uc, (void (*)())fiber_entry_uc, 2, (unsigned)(p >> 32),
                (unsigned)(p & 0xffffffffu));
#else
    // Initial frame consumed by cudasim_swap_context: r15 r14 r13 r12 rbx rbp ret.
    // top - 72 makes rsp 16-byte aligned when the trampoline is entered, so the
    // call into fiber_main sees the ABI's alignment.
    char* top = s->lo + s->size - s->color;
    void** sp = reinterpret_cast<void**>(top - 72);
    sp[0] = nullptr;                                             // r15
    sp[1] = nullptr;                                             // r14
    sp[2] = static_cast<void*>(f);                               // r13: argument
    sp[3] = reinterpret_cast<void*>(&fiber_main);                // r12: entry
    sp[4] = nullptr;                                             // rbx
    sp[5] = nullptr;                                             // rbp (ends backtraces)
    sp[6] = reinterpret_cast<void*>(&cudasim_fiber_trampoline);  // return address
    s->ctx.sp = sp;
#endif
}

// Stack `index` of a worker starts `color` bytes below the top of its mapping.  Without
// it, the hot top frames of all the stacks (mapped page-aligned) would share the same few
// sets of the L1 cache, whose ways are 4 KiB: 17 cache lines apart, 64 colours spread them
// over all 64 sets.  (Its gain alone was within the noise of the shared development VM.)
static Stack* stack_create(size_t size, unsigned index) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t color = (size_t)(index % 64) * 17 * 64;
    size = (size + color + page - 1) / page * page;
    const size_t map_size = size + page;
    void* m = mmap(nullptr, map_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    // Guard page: a stack overflow faults instead of silently corrupting a neighbour.
    mprotect(m, page, PROT_NONE);
    Stack* s = static_cast<Stack*>(calloc(1, sizeof(Stack)));
    if (s == nullptr) {
        munmap(m, map_size);
        return nullptr;
    }
    s->map_base = static_cast<char*>(m);
    s->map_size = map_size;
    s->lo = s->map_base + page;
    s->size = size;
    s->color = color;
    return s;
}

static void worker_release_stacks(Worker* w) {
    for (unsigned i = 0; i < w->nstacks; ++i) {
        munmap(w->stacks[i]->map_base, w->stacks[i]->map_size);
        free(w->stacks[i]);
    }
    w->nstacks = 0;
    w->free_stacks = nullptr;
}

static Stack* take_stack(Worker* w) {
    Stack* s = w->free_stacks;
    if (s != nullptr) {
        w->free_stacks = s->next_free;
        return s;
    }
    if (w->nstacks == w->stacks_cap) {
        const unsigned cap = w->stacks_cap ? 2 * w->stacks_cap : 64;
        Stack** grown = static_cast<Stack**>(realloc(w->stacks, cap * sizeof(Stack*)));
        if (grown == nullptr) return nullptr;
        w->stacks = grown;
        w->stacks_cap = cap;
    }
    s = stack_create(w->stack_size, w->nstacks);
    if (s != nullptr) w->stacks[w->nstacks++] = s;
    return s;
}

static inline void give_stack(Worker* w, Fiber* f) {
    f->stack->next_free = w->free_stacks;
    w->free_stacks = f->stack;
    f->stack = nullptr;
}

// ---- switching between the threads of a block.  There is no scheduler loop between two
// threads: a thread that waits (barrier, warp operation) or exits picks the next one itself
// (next_fiber: the launch's schedule order) and switches straight to it; one that has not
// started yet runs on the exiting thread's stack without any switch.  Only the end of the
// block (all exited, a failure, a deadlock, a cancelled launch) goes back to run_block.
static Fiber* next_fiber(Worker* w);

// Gives `f` a fresh stack that starts it at fiber_main.  False: out of memory (the block
// fails with a message).
static bool start_stack(Worker* w, Fiber* f) {
    Stack* s = take_stack(w);
    if (s == nullptr) {
        w->failed = true;
        snprintf(w->fail_msg, sizeof w->fail_msg,
                 "thread (%u,%u,%u): cannot allocate a fiber stack (%zu KiB)", f->tid.x,
                 f->tid.y, f->tid.z, w->stack_size >> 10);
        return false;
    }
    stack_reset(s, f);
    f->stack = s;
    return true;
}

// run_block -> the block's first thread; returns when the block is over.
static void enter_block(Worker* w, Fiber* f) {
    Stack* s = f->stack;
    *w->fiber_slot = f;
    ++w->switches;
    w->sched_entry = true;
    asan_start_switch(&w->sched_asan_fake, s->lo, s->size);
    w->in_fiber = 1;
    ctx_switch(&w->sched, &s->ctx);
    w->in_fiber = 0;
    asan_finish_switch(w->sched_asan_fake, nullptr, nullptr);
    *w->fiber_slot = nullptr;
}

// The running thread `from` (on stack `own`; null when its context is abandoned) -> thread
// `to` (null: back to run_block, the block is over).
static inline void switch_to(Worker* w, Stack* own, Context* save, Fiber* to) {
    ++w->switches;
    if (to == nullptr) {
        asan_start_switch(own ? &own->asan_fake : nullptr, w->sched_stack_lo, w->sched_stack_size);
        ctx_switch(save, &w->sched);
    } else {
        *w->fiber_slot = to;
        asan_start_switch(own ? &own->asan_fake : nullptr, to->stack->lo, to->stack->size);
        ctx_switch(save, &to->stack->ctx);
    }
    if (own != nullptr) asan_finish_switch(own->asan_fake, nullptr, nullptr);
}

// Thread `f` waits (its state says for what); returns when it may go on.  The bookkeeping
// runs with in_fiber clear: a cancelling signal must not jump out of take_stack's malloc.
static inline void wait_for_others(Fiber* f) {
    Worker* w = f->worker;
    w->in_fiber = 0;
    Fiber* to = next_fiber(w);
    if (to == f) {  // released at once, and first in the next pass
        w->in_fiber = 1;
        return;
    }
    if (to != nullptr && to->stack == nullptr && !start_stack(w, to)) to = nullptr;
    w->in_fiber = 1;
    switch_to(w, f->stack, &f->stack->ctx, to);  // to == null: never resumed
}

// Thread `f` exited: the next one, if it has not started, runs on this stack (the caller's
// loop); if it is suspended, this stack goes back to the free list and the switch to it
// never returns.
static inline Fiber* after_exit(Fiber* f) {
    Worker* w = f->worker;
    w->in_fiber = 0;
    Fiber* to = next_fiber(w);
    if (to != nullptr && to->stack == nullptr) {
        to->stack = f->stack;
        f->stack = nullptr;
        *w->fiber_slot = to;
        w->in_fiber = 1;
        return to;
    }
    // Nothing runs on this stack once the switch below is made, and nothing else takes it
    // from the free list before then (one OS thread per worker).  Its frames are abandoned,
    // not returned from: AddressSanitizer's redzones in them are cleared at its next use.
    give_stack(w, f);
    w->in_fiber = to != nullptr;
    Context abandoned;
    switch_to(w, nullptr, &abandoned, to);
    abort();  // never resumed
}

// A failed thread -> run_block, for good (the block is over).
__attribute__((noreturn)) static void leave_fiber(Fiber* f) {
    Worker* w = f->worker;
    switch_to(w, nullptr, &f->stack->ctx, nullptr);
    abort();  // never resumed
}

// After a failed block: threads stopped mid-kernel give their stacks back.
static void reclaim_stacks(Worker* w, unsigned n) {
    for (unsigned i = 0; i < n; ++i) {
        Fiber* f = &w->threads[i];
        if (f->stack != nullptr) give_stack(w, f);
    }
}

// Stops the calling fiber for good and fails its block (kernel bugs detected from
// inside a thread: bad warp masks, assert(), __trap(), C++ exceptions).
void fiber_fail(const char* fmt, ...) {
    Fiber* f = t_fiber;
    if (f == nullptr) {  // not inside a launch: nothing to unwind to
        va_list ap;
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        abort();
    }
    Worker* w = f->worker;
    if (!w->failed) {
        w->failed = true;
        Msg m{w->fail_msg, sizeof w->fail_msg, 0};
        m.add("thread (%u,%u,%u): ", f->tid.x, f->tid.y, f->tid.z);
        va_list ap;
        va_start(ap, fmt);
        if (m.len + 1 < m.cap) {
            int n = vsnprintf(m.buf + m.len, m.cap - m.len, fmt, ap);
            (void)n;
        }
        va_end(ap);
    }
    f->state = F_ABORTED;
    leave_fiber(f);
}

// Runs GPU thread `f`'s kernel to its end (or fails the block).
static inline void run_thread(Worker* w, Fiber* f) {
    // The C++ runtime's exception-handling state is per OS thread, i.e. shared by all
    // fibers of a worker: leave the catch block before failing (fiber_fail never
    // returns).
    char what[256];
    bool threw = false;
    if (f->cp != nullptr) {
        f->cp->n = 0;
        f->cp->groups = 0;
    }
    try {
        w->job->entry(w->job->ctx);
    } catch (const std::exception& e) {
        threw = true;
        snprintf(what, sizeof what, ": %s", e.what());
    } catch (...) {
        threw = true;
        what[0] = 0;
    }
    if (threw) fiber_fail("C++ exception escaped the kernel%s", what);
    if (f->cp != nullptr && f->cp->n != 0) {
        fiber_fail("the thread exited with %u cp.async copies never waited for "
                   "(cp.async.wait_group / wait_all): their data never lands", f->cp->n);
    }
    f->state = F_EXITED;
}

// A fiber stack's first frame: runs threads one after another as long as each exits and
// the next has not started (a kernel without barriers: one stack, no switches).
static void fiber_main(void* arg) {
    Fiber* f = static_cast<Fiber*>(arg);
    Worker* w = f->worker;
    // Entered from run_block: learn the bounds of its stack for the switches back.
    if (w->sched_entry) {
        w->sched_entry = false;
        asan_finish_switch(nullptr, &w->sched_stack_lo, &w->sched_stack_size);
    } else {
        asan_finish_switch(nullptr, nullptr, nullptr);
    }
    for (;;) {
        run_thread(w, f);
        f = after_exit(f);
    }
}

// The Workers of this module's threads, for the signal handlers, which must not touch
// thread-local storage (a dlopen'ed module's TLS may be allocated on first use, by malloc).
constexpr int kRegistrySize = 1024;
static Worker* g_registry[kRegistrySize];
static pthread_mutex_t g_registry_mu = PTHREAD_MUTEX_INITIALIZER;

static void registry_set(Worker* from, Worker* to) {
    pthread_mutex_lock(&g_registry_mu);
    for (int i = 0; i < kRegistrySize; ++i) {
        if (g_registry[i] == from) {
            __atomic_store_n(&g_registry[i], to, __ATOMIC_RELEASE);
            break;
        }
    }
    pthread_mutex_unlock(&g_registry_mu);
}

static Worker* worker_of_this_thread() {  // async-signal-safe
    const pthread_t me = pthread_self();
    for (int i = 0; i < kRegistrySize; ++i) {
        Worker* w = __atomic_load_n(&g_registry[i], __ATOMIC_ACQUIRE);
        if (w != nullptr && pthread_equal(w->self, me)) return w;
    }
    return nullptr;
}

// Owns the per-OS-thread Worker; destroyed when the thread exits.
struct WorkerHolder {
    Worker* w = nullptr;
    ~WorkerHolder() {
        if (w == nullptr) return;
        registry_set(w, nullptr);
        if (w->alt_stack != nullptr) {
            stack_t off;
            memset(&off, 0, sizeof off);
            off.ss_flags = SS_DISABLE;
            sigaltstack(&off, nullptr);
            free(w->alt_stack);
        }
        worker_release_stacks(w);
        free(w->stacks);
        for (unsigned i = 0; i < kMaxBlockThreads; ++i) free(w->threads[i].cp);
        free(w->threads);
        free(w->order);
        if (w->dyn_shared) munmap(w->dyn_shared, kDynSharedReserve);
        free(w);
        w = nullptr;
        t_worker = nullptr;
    }
};
static thread_local WorkerHolder t_worker_holder;

static Worker* get_worker() {
    if (t_worker != nullptr) return t_worker;
    Worker* w = static_cast<Worker*>(calloc(1, sizeof(Worker)));
    if (w == nullptr) return nullptr;
    w->threads = static_cast<Fiber*>(calloc(kMaxBlockThreads, sizeof(Fiber)));
    w->order = static_cast<unsigned*>(calloc(kMaxBlockThreads, sizeof(unsigned)));
    if (w->threads == nullptr || w->order == nullptr) {
        free(w->threads);
        free(w->order);
        free(w);
        return nullptr;
    }
    w->fiber_slot = &t_fiber;
    w->self = pthread_self();
    t_worker_holder.w = w;
    t_worker = w;
    registry_set(nullptr, w);
    return w;
}

// Stack size for this launch and the dynamic shared memory region.  Returns false
// (with a message) when memory runs out.
static bool worker_prepare(Worker* w, size_t stack_size, char* err, size_t errlen) {
    if (w->stack_size != stack_size) {  // no stack is in use between launches
        worker_release_stacks(w);
        w->stack_size = stack_size;
    }
    if (w->dyn_shared == nullptr) {
        void* m = mmap(nullptr, kDynSharedReserve, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            snprintf(err, errlen, "cannot reserve dynamic shared memory");
            return false;
        }
        w->dyn_shared = static_cast<char*>(m);
    }
    return true;
}

// ---- error message helpers: groups of threads with what they wait for
static void add_thread(Msg& m, const Worker* w, unsigned linear) {
    const unsigned bx = w->block_dim.x, by = w->block_dim.y;
    m.add("(%u,%u,%u)", linear % bx, (linear / bx) % by, linear / (bx * by));
}

static void add_thread_set(Msg& m, const Worker* w, const unsigned char* in_set) {
    unsigned count = 0, ranges = 0;
    for (unsigned i = 0; i < w->nthreads; ++i) count += in_set[i];
    m.add("%s ", count == 1 ? "thread" : "threads");
    for (unsigned i = 0; i < w->nthreads;) {
        if (!in_set[i]) { ++i; continue; }
        unsigned j = i;
        while (j + 1 < w->nthreads && in_set[j + 1]) ++j;
        if (ranges == 4) { m.add(", ..."); break; }
        if (ranges) m.add(", ");
        add_thread(m, w, i);
        if (j > i) { m.add("..");  add_thread(m, w, j); }
        ++ranges;
        i = j + 1;
    }
    if (count > 1) m.add(" [%u threads]", count);
}

static const char* barrier_name(int kind) {
    switch (kind) {
        case BAR_COUNT: return "__syncthreads_count()";
        case BAR_AND: return "__syncthreads_and()";
        case BAR_OR: return "__syncthreads_or()";
        default: return "__syncthreads()";
    }
}

static bool same_site(const Fiber* a, const Fiber* b) {
    if (a->state != b->state) return false;
    if (a->state == F_EXITED) return true;
    if (a->kind != b->kind || a->line != b->line) return false;
    if (a->state == F_WARP && a->wmask != b->wmask) return false;
    return a->file == b->file || (a->file && b->file && strcmp(a->file, b->file) == 0);
}

// Called when no fiber can run but not all exited: either every thread waits at the
// same barrier (release it) or the block is stuck -- describe who waits where.
static bool block_quiescent(Worker* w, bool* done) {
    const unsigned n = w->nthreads;
    Fiber* fs = w->threads;
    *done = false;
    // Every thread waits at the same barrier (block_barrier counted and compared them).
    if (w->bar_arrived == n && !w->bar_mixed) {
        switch (w->bar_first->kind) {
            case BAR_COUNT: w->bar_result = (int)w->bar_true; break;
            case BAR_AND: w->bar_result = w->bar_true == n; break;
            case BAR_OR: w->bar_result = w->bar_true != 0; break;
            default: w->bar_result = 0;
        }
        for (unsigned i = 0; i < n; ++i) fs[i].state = F_READY;
        w->bar_arrived = w->bar_true = 0;
        return true;
    }
    unsigned exited = 0, barrier = 0;
    for (unsigned i = 0; i < n; ++i) {
        exited += fs[i].state == F_EXITED;
        barrier += fs[i].state == F_BARRIER;
    }
    if (exited == n) { *done = true; return true; }
    // Stuck.  Group the threads by what they are doing and say so.
    const bool warp_issue = barrier + exited < n;
    Msg m{w->fail_msg, sizeof w->fail_msg, 0};
    w->fail_title = warp_issue ? "warp synchronisation deadlock" : "barrier divergence";
    unsigned char* in_set = static_cast<unsigned char*>(calloc(n, 1));
    unsigned char* seen = static_cast<unsigned char*>(calloc(n, 1));
    if (in_set == nullptr || seen == nullptr) {
        m.add("threads of the block wait at different synchronisation points");
    } else {
        int groups = 0;
        for (unsigned i = 0; i < n; ++i) {
            if (seen[i]) continue;
            memset(in_set, 0, n);
            for (unsigned j = i; j < n; ++j) {
                if (!seen[j] && same_site(&fs[i], &fs[j])) { in_set[j] = 1; seen[j] = 1; }
            }
            if (groups == 6) { m.add("; ..."); break; }
            if (groups++) m.add("; ");
            add_thread_set(m, w, in_set);
            const Fiber* f = &fs[i];
            if (f->state == F_EXITED) {
                m.add(" exited");
            } else if (f->state == F_BARRIER) {
                m.add(" wait at %s:%d (%s)", f->file, f->line, barrier_name(f->kind));
            } else {
                m.add(" wait at %s:%d (%s with mask 0x%08x)", f->file, f->line, f->op, f->wmask);
            }
        }
    }
    free(in_set);
    free(seen);
    w->failed = true;
    return false;
}

static void poison_shared(Worker* w, Job* job) {
#if defined(CUDASIM_ASAN)
    // Make the bytes past the launch's dynamic shared size unaddressable (a redzone).
    __asan_unpoison_memory_region(w->dyn_shared, job->shared_bytes);
    size_t red = 64 << 10;
    if (job->shared_bytes + red > kDynSharedReserve) red = kDynSharedReserve - job->shared_bytes;
    __asan_poison_memory_region(w->dyn_shared + job->shared_bytes, red);
#endif
    if (job->shared_bytes) memset(w->dyn_shared, 0xff, job->shared_bytes);
    if (job->nranges == 0 || g_tls_off_a < 0) return;
    if (!w->tls_checked) {
        // Only trust the offsets from the ELF symbol table if they agree with this
        // thread's actual TLS block (guards against a layout we did not expect).
        w->tls_checked = true;
        w->tls_ok = (char*)cudasim_tls_anchor_b - (char*)&cudasim_tls_anchor_a ==
                    (ptrdiff_t)(g_tls_off_b - g_tls_off_a);
    }
    if (!w->tls_ok) return;
    char* base = (char*)&cudasim_tls_anchor_a - g_tls_off_a;
    for (int i = 0; i < job->nranges; ++i) {
        memset(base + job->shared_ranges[2 * i], 0xff, (size_t)job->shared_ranges[2 * i + 1]);
    }
}

static unsigned shuffled_order_pass(Worker* w, unsigned long long& rng, unsigned n) {
    unsigned* o = w->order;
    for (unsigned i = 0; i < n; ++i) o[i] = i;
    for (unsigned i = n - 1; i > 0; --i) {
        unsigned j = (unsigned)(splitmix64(rng) % (i + 1));
        unsigned t = o[i]; o[i] = o[j]; o[j] = t;
    }
    return n;
}

// A new pass over the block's threads in the launch's schedule order (a new permutation
// for each pass of the shuffled schedule).
static inline void start_pass(Worker* w) {
    w->pos = 0;
    w->ran = false;
    if (w->job->schedule == SCHED_SHUFFLED) shuffled_order_pass(w, w->rng, w->nthreads);
}

// The thread at position `k` of the current pass.
static inline unsigned thread_at(const Worker* w, unsigned k) {
    const int schedule = w->job->schedule;
    return schedule == SCHED_IN_ORDER ? k
         : schedule == SCHED_REVERSED ? w->nthreads - 1 - k
                                      : w->order[k];
}

// The thread to run next: the next ready one of the pass, in schedule order.  A pass that
// ran nobody, or ends with every thread at a barrier, ends in block_quiescent, which
// releases a barrier all threads reached (and a new pass starts) or finds the block done or
// stuck.  Null: the block is over (done, failed, stuck or cancelled; w->failed tells
// which).
static Fiber* next_fiber(Worker* w) {
    Job* job = w->job;
    const unsigned n = w->nthreads;
    for (;;) {
        while (w->pos < n) {
            Fiber* f = &w->threads[thread_at(w, w->pos++)];
            if (f->state != F_READY) continue;
            if (__atomic_load_n(&job->cancel, __ATOMIC_RELAXED) != CANCEL_NONE) {
                w->failed = true;
                snprintf(w->fail_msg, sizeof w->fail_msg,
                         "thread (%u,%u,%u): stopped: the launch was cancelled", f->tid.x,
                         f->tid.y, f->tid.z);
                return nullptr;
            }
            w->ran = true;
            // The thread after this one in the pass is likely the next to run: load the top
            // of its stack, which its switch and frames read first, while this one runs (a
            // block's suspended stacks do not fit in L1: 12% of ResNet-18's time).
            if (w->pos < n) {
                const Stack* next = w->threads[thread_at(w, w->pos)].stack;
                if (next != nullptr) {
                    const char* top = static_cast<const char*>(next->ctx_top());
                    for (int line = 0; line < 6; ++line) __builtin_prefetch(top + 64 * line);
                }
            }
            return f;
        }
        // Every thread at one barrier: the next pass would run nobody; release it now.
        if (!w->ran || w->bar_arrived == n) {
            bool done = false;
            if (!block_quiescent(w, &done) || done) return nullptr;
        }
        start_pass(w);
    }
}

// ---- stopping a running thread: a cancelled launch (Ctrl-C, the time limit) and a
// stack overflow.  Fibers switch only at barriers and warp operations, so a thread in an
// endless loop never returns to the scheduler by itself: cudasim_cancel sends each OS
// thread of the launch kInterruptSignal, whose handler jumps from the running fiber back
// to run_block (the fiber's stack is abandoned, as after any failed block).  A stack
// overflow touches the guard page below a fiber stack; the SIGSEGV handler, on a signal
// stack of its own, recognises the page and does the same.  Anything else goes on to the
// handler that was installed before (Python's faulthandler, the default action).
enum : int { ABORT_NONE = 0, ABORT_CANCELLED = 1, ABORT_STACK_OVERFLOW = 2 };
static struct sigaction g_old_interrupt, g_old_segv, g_old_bus;
static bool g_handlers_installed = false;  // under g_launch_mu
static pthread_mutex_t g_job_mu = PTHREAD_MUTEX_INITIALIZER;
static Job* g_current_job = nullptr;  // the launch in progress, for cudasim_cancel

static int interrupt_signal() { return SIGRTMIN + 4; }

static void chain_signal(const struct sigaction* old, int sig, siginfo_t* info, void* uc,
                         bool fault) {
    if (old->sa_flags & SA_SIGINFO) {
        if (old->sa_sigaction != nullptr) old->sa_sigaction(sig, info, uc);
        return;
    }
    if (old->sa_handler == SIG_IGN) return;
    if (old->sa_handler == SIG_DFL) {
        // A fault: the instruction runs again and gets the default action (a core dump).
        // A stray interrupt signal is ignored, not fatal.
        if (fault) sigaction(sig, old, nullptr);
        return;
    }
    old->sa_handler(sig);
}

static void on_interrupt_signal(int sig, siginfo_t* info, void* uc) {
    Worker* w = worker_of_this_thread();
    if (w != nullptr && w->in_fiber && w->job != nullptr &&
        __atomic_load_n(&w->job->cancel, __ATOMIC_RELAXED) != CANCEL_NONE) {
        w->abort_reason = ABORT_CANCELLED;
        siglongjmp(w->abort_jmp, 1);
    }
    chain_signal(&g_old_interrupt, sig, info, uc, false);
}

static void on_fault_signal(int sig, siginfo_t* info, void* uc) {
    Worker* w = worker_of_this_thread();
    if (w != nullptr && w->in_fiber) {
        const Fiber* f = *w->fiber_slot;
        const char* address = static_cast<const char*>(info->si_addr);
        if (f != nullptr && f->stack != nullptr && address >= f->stack->map_base &&
            address < f->stack->lo) {
            w->abort_reason = ABORT_STACK_OVERFLOW;
            siglongjmp(w->abort_jmp, 1);
        }
    }
    chain_signal(sig == SIGSEGV ? &g_old_segv : &g_old_bus, sig, info, uc, true);
}

static void install_signal_handlers() {  // under g_launch_mu; once per module
    if (g_handlers_installed) return;
    g_handlers_installed = true;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    sigemptyset(&action.sa_mask);
    // SA_NODEFER: the handler leaves with siglongjmp, which (sigsetjmp(.., 0)) does not
    // restore the signal mask, so the signal must not be blocked while it runs.
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER | SA_RESTART;
    action.sa_sigaction = on_interrupt_signal;
    sigaction(interrupt_signal(), &action, &g_old_interrupt);
#if !defined(CUDASIM_ASAN)  // AddressSanitizer reports stack overflows itself
    action.sa_sigaction = on_fault_signal;
    sigaction(SIGSEGV, &action, &g_old_segv);
    sigaction(SIGBUS, &action, &g_old_bus);
#endif
}

// The SIGSEGV handler of a stack overflow cannot run on the exhausted stack.
static void ensure_signal_stack(Worker* w) {
    if (w->alt_stack_checked) return;
    w->alt_stack_checked = true;
    stack_t current;
    if (sigaltstack(nullptr, &current) == 0 && !(current.ss_flags & SS_DISABLE)) return;
    const size_t size = 64 * 1024;
    void* memory = malloc(size);
    if (memory == nullptr) return;
    stack_t ours;
    memset(&ours, 0, sizeof ours);
    ours.ss_sp = memory;
    ours.ss_size = size;
    if (sigaltstack(&ours, nullptr) == 0) {
        w->alt_stack = memory;
    } else {
        free(memory);
    }
}

// Runs one block to completion on this worker.  False: the block failed and
// w->fail_msg says why.
static bool run_block(Worker* w, Job* job, unsigned long long lin) {
    const unsigned n = job->nthreads;
    w->block_idx = make_uint3((unsigned)(lin % job->grid.x),
                              (unsigned)((lin / job->grid.x) % job->grid.y),
                              (unsigned)(lin / ((unsigned long long)job->grid.x * job->grid.y)));
    w->failed = false;
    w->fail_title = nullptr;
    w->fail_msg[0] = 0;
    poison_shared(w, job);
    for (unsigned i = 0; i < n; ++i) w->threads[i].state = F_READY;
    for (unsigned wi = 0; wi < (n + 31) / 32; ++wi) {
        const unsigned lanes = n - wi * 32 >= 32 ? 32 : n - wi * 32;
        w->warp_arrived[wi] = 0;
        w->warp_present[wi] = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
    }
    w->bar_arrived = w->bar_true = 0;
    w->bar_mixed = false;
    w->rng = job->seed * 0x9e3779b97f4a7c15ull ^ (lin + 1) * 0xd1b54a32d192ed03ull;
    w->abort_reason = ABORT_NONE;
    if (sigsetjmp(w->abort_jmp, 0) != 0) {
        // A signal handler stopped the running thread mid-kernel (see on_interrupt_signal).
        const Fiber* f = *w->fiber_slot;
        w->in_fiber = 0;
        *w->fiber_slot = nullptr;
        w->failed = true;
        w->fail_title = nullptr;
        const uint3 tid = f != nullptr ? f->tid : make_uint3(0, 0, 0);
        if (w->abort_reason == ABORT_STACK_OVERFLOW) {
            __atomic_store_n(&job->stack_overflow, 1, __ATOMIC_SEQ_CST);
            snprintf(w->fail_msg, sizeof w->fail_msg,
                     "thread (%u,%u,%u): stack overflow: the thread used more than its %zu KiB "
                     "stack (deep recursion or large local arrays)",
                     tid.x, tid.y, tid.z, w->stack_size >> 10);
        } else {
            snprintf(w->fail_msg, sizeof w->fail_msg,
                     "thread (%u,%u,%u): stopped: the launch was cancelled", tid.x, tid.y, tid.z);
        }
        reclaim_stacks(w, n);
        return false;
    }
    // The threads hand over to each other (next_fiber); control comes back here when the
    // block is over.
    start_pass(w);
    Fiber* first = next_fiber(w);
    if (first != nullptr && start_stack(w, first)) enter_block(w, first);
    if (w->failed) {
        reclaim_stacks(w, n);
        return false;
    }
    return true;
}

static void job_fail(Job* job, Worker* w) {
    pthread_mutex_lock(&job->err_mu);
    if (!job->failed) {
        job->failed = 1;
        if (w->fail_title != nullptr) {
            snprintf(job->err, job->errlen, "%s in kernel %s block (%u,%u,%u): %s", w->fail_title,
                     job->kernel, w->block_idx.x, w->block_idx.y, w->block_idx.z, w->fail_msg);
        } else {  // fail_msg starts with "thread (x,y,z): "
            snprintf(job->err, job->errlen, "kernel %s block (%u,%u,%u) %s", job->kernel,
                     w->block_idx.x, w->block_idx.y, w->block_idx.z, w->fail_msg);
        }
    }
    pthread_mutex_unlock(&job->err_mu);
    __atomic_store_n(&job->stop, 1, __ATOMIC_SEQ_CST);
}

static void run_worker(Job* job) {
    Worker* w = get_worker();
    char local_err[256];
    if (w == nullptr || !worker_prepare(w, job->stack_size, local_err, sizeof local_err)) {
        pthread_mutex_lock(&job->err_mu);
        if (!job->failed) {
            job->failed = 1;
            snprintf(job->err, job->errlen, "kernel %s: %s", job->kernel,
                     w ? local_err : "out of memory");
        }
        pthread_mutex_unlock(&job->err_mu);
        __atomic_store_n(&job->stop, 1, __ATOMIC_SEQ_CST);
        return;
    }
    ensure_signal_stack(w);
    pthread_mutex_lock(&g_job_mu);
    if (job->nthreads_running < kMaxWorkers) job->threads[job->nthreads_running++] = pthread_self();
    pthread_mutex_unlock(&g_job_mu);
    w->job = job;
    w->block_dim = job->block;
    w->grid_dim = job->grid;
    w->nthreads = job->nthreads;
    for (unsigned i = 0; i < job->nthreads; ++i) {
        Fiber* f = &w->threads[i];
        f->worker = w;
        f->stack = nullptr;
        f->linear = i;
        f->tid = make_uint3(i % job->block.x, (i / job->block.x) % job->block.y,
                            i / (job->block.x * job->block.y));
    }
    w->switches = 0;
    while (!__atomic_load_n(&job->stop, __ATOMIC_RELAXED)) {
        const unsigned long long k = __atomic_fetch_add(&job->next, 1ull, __ATOMIC_RELAXED);
        if (k >= job->nblocks) break;
        const unsigned long long lin = job->schedule == SCHED_IN_ORDER ? k
                                     : job->schedule == SCHED_REVERSED ? job->nblocks - 1 - k
                                                                       : job->block_order[k];
        if (!run_block(w, job, lin)) {
            job_fail(job, w);
            break;
        }
    }
    __atomic_fetch_add(&job->switches, w->switches, __ATOMIC_RELAXED);
    w->job = nullptr;
    // Every compiled module holds its own copy of this runtime, so stacks kept for the next
    // launch would stay mapped for as long as the process lives, per module and thread: a
    // process that loads a few hundred modules then runs out of memory maps (Linux's
    // vm.max_map_count, 65530), and thread creation and dlopen start failing. A launch maps
    // at most one stack per thread of a block, so mapping them again costs little.
    worker_release_stacks(w);
}

// ---- the worker pool: persistent helper threads; the launching thread is worker 0.
struct Pool {
    pthread_mutex_t mu;
    pthread_cond_t cv_start, cv_done;
    pthread_t threads[kMaxWorkers];
    int nthreads;
    unsigned long long generation;
    Job* job;
    int pending;
    bool quit;
};
static pthread_mutex_t g_launch_mu = PTHREAD_MUTEX_INITIALIZER;
static Pool* g_pool = nullptr;  // heap-allocated and never destroyed at exit on purpose

struct PoolThreadArg { Pool* pool; int index; unsigned long long start_generation; };

static void* pool_thread_main(void* p) {
    PoolThreadArg a = *static_cast<PoolThreadArg*>(p);
    free(p);
    Pool* pool = a.pool;
    unsigned long long seen = a.start_generation;
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        while (!pool->quit && pool->generation == seen) pthread_cond_wait(&pool->cv_start, &pool->mu);
        if (pool->quit) break;
        seen = pool->generation;
        Job* job = pool->job;
        if (a.index < job->workers) {
            pthread_mutex_unlock(&pool->mu);
            run_worker(job);
            pthread_mutex_lock(&pool->mu);
            if (--pool->pending == 0) pthread_cond_broadcast(&pool->cv_done);
        }
    }
    pthread_mutex_unlock(&pool->mu);
    return nullptr;
}

// After fork() only the forking thread exists in the child: forget the pool (its
// threads are gone; a new one starts on demand) and the launch lock's state.
static void pool_after_fork_in_child() {
    g_pool = nullptr;
    g_launch_mu = PTHREAD_MUTEX_INITIALIZER;
}

static bool pool_ensure(int helpers, char* err, size_t errlen) {
    static bool atfork_registered = false;
    if (!atfork_registered) {
        pthread_atfork(nullptr, nullptr, pool_after_fork_in_child);
        atfork_registered = true;
    }
    if (g_pool == nullptr) {
        g_pool = static_cast<Pool*>(calloc(1, sizeof(Pool)));
        if (g_pool == nullptr) { snprintf(err, errlen, "out of memory"); return false; }
        pthread_mutex_init(&g_pool->mu, nullptr);
        pthread_cond_init(&g_pool->cv_start, nullptr);
        pthread_cond_init(&g_pool->cv_done, nullptr);
    }
    while (g_pool->nthreads < helpers) {
        PoolThreadArg* a = static_cast<PoolThreadArg*>(malloc(sizeof(PoolThreadArg)));
        if (a == nullptr) { snprintf(err, errlen, "out of memory"); return false; }
        a->pool = g_pool;
        a->index = g_pool->nthreads + 1;  // worker 0 is the launching thread
        pthread_mutex_lock(&g_pool->mu);
        // A new thread must not mistake the current generation for a new job.
        a->start_generation = g_pool->generation;
        int rc = pthread_create(&g_pool->threads[g_pool->nthreads], nullptr, pool_thread_main, a);
        if (rc != 0) {
            pthread_mutex_unlock(&g_pool->mu);
            free(a);
            snprintf(err, errlen, "cannot start worker thread: %s", strerror(rc));
            return false;
        }
        g_pool->nthreads++;
        pthread_mutex_unlock(&g_pool->mu);
    }
    return true;
}

static void pool_shutdown() {
    if (g_pool == nullptr) return;
    pthread_mutex_lock(&g_pool->mu);
    g_pool->quit = true;
    pthread_cond_broadcast(&g_pool->cv_start);
    pthread_mutex_unlock(&g_pool->mu);
    for (int i = 0; i < g_pool->nthreads; ++i) pthread_join(g_pool->threads[i], nullptr);
    pthread_mutex_destroy(&g_pool->mu);
    pthread_cond_destroy(&g_pool->cv_start);
    pthread_cond_destroy(&g_pool->cv_done);
    free(g_pool);
    g_pool = nullptr;
}

#if defined(CUDASIM_ASAN)
// AddressSanitizer runs in recover mode (-fsanitize-recover=address,
// halt_on_error=0): the report comes here, on the faulting thread, and the launch
// turns it into an error naming the kernel, block and thread.
static pthread_mutex_t g_asan_mu = PTHREAD_MUTEX_INITIALIZER;
static char g_asan_report[12288];
static size_t g_asan_len = 0;
static int g_asan_reports = 0;
static void asan_report_cb(const char* report) {
    pthread_mutex_lock(&g_asan_mu);
    if (g_asan_reports++ == 0) {
        Msg m{g_asan_report, sizeof g_asan_report, 0};
        const Fiber* f = t_fiber;
        const Worker* w = t_worker;
        if (f != nullptr && w != nullptr && w->job != nullptr) {
            m.add("AddressSanitizer: invalid memory access in kernel %s block (%u,%u,%u) thread (%u,%u,%u)\n",
                  w->job->kernel, w->block_idx.x, w->block_idx.y, w->block_idx.z, f->tid.x,
                  f->tid.y, f->tid.z);
        }
        m.add("%s", report);
        g_asan_len = m.len;
    }
    pthread_mutex_unlock(&g_asan_mu);
}
#endif

int run_launch(const char* kernel, const long long* cfg, void (*entry)(void*), void* ctx,
                      char* err, long long errlen) {
    if (errlen > 0) err[0] = 0;
    for (int i = CFG_GRID_X; i <= CFG_BLOCK_Z; ++i) {
        if (cfg[i] < 1 || cfg[i] > 0x7fffffffLL) {
            snprintf(err, (size_t)errlen, "kernel %s: invalid launch dimensions", kernel);
            return 1;
        }
    }
    Job job = Job();
    job.kernel = kernel;
    job.entry = entry;
    job.ctx = ctx;
    job.grid = dim3((unsigned)cfg[CFG_GRID_X], (unsigned)cfg[CFG_GRID_Y], (unsigned)cfg[CFG_GRID_Z]);
    job.block = dim3((unsigned)cfg[CFG_BLOCK_X], (unsigned)cfg[CFG_BLOCK_Y], (unsigned)cfg[CFG_BLOCK_Z]);
    job.nblocks = (unsigned long long)job.grid.x * job.grid.y * job.grid.z;
    const unsigned long long nthreads = (unsigned long long)job.block.x * job.block.y * job.block.z;
    if (nthreads > kMaxBlockThreads) {
        snprintf(err, (size_t)errlen, "kernel %s: %llu threads per block exceeds %u", kernel,
                 nthreads, kMaxBlockThreads);
        return 1;
    }
    if (cfg[CFG_SHARED] < 0 || (size_t)cfg[CFG_SHARED] > kDynSharedReserve) {
        snprintf(err, (size_t)errlen, "kernel %s: dynamic shared memory size %lld out of range",
                 kernel, cfg[CFG_SHARED]);
        return 1;
    }
    job.nthreads = (unsigned)nthreads;
    job.shared_bytes = (size_t)cfg[CFG_SHARED];
    job.schedule = (int)cfg[CFG_SCHEDULE];
    job.seed = (unsigned long long)cfg[CFG_SEED];
    job.workers = (int)cfg[CFG_WORKERS];
    if (job.workers < 1) job.workers = 1;
    if (job.workers > kMaxWorkers) job.workers = kMaxWorkers;
    if ((unsigned long long)job.workers > job.nblocks) job.workers = (int)job.nblocks;
    job.stack_size = cfg[CFG_STACK] > 16384 ? (size_t)cfg[CFG_STACK] : 16384;
    const long long kidx = cfg[CFG_KERNEL_INDEX];
    if (kidx >= 0 && kidx < g_nkernels_ranges) {
        job.shared_ranges = g_kernel_ranges[kidx];
        job.nranges = g_kernel_nranges[kidx];
    }
    job.err = err;
    job.errlen = (size_t)errlen;
    pthread_mutex_init(&job.err_mu, nullptr);

    pthread_mutex_lock(&g_launch_mu);  // one launch at a time per module
    if (job.schedule == SCHED_SHUFFLED && job.nblocks > 1) {
        if (job.nblocks > 0xffffffffull) {
            snprintf(err, (size_t)errlen, "kernel %s: too many blocks for the shuffled schedule", kernel);
            pthread_mutex_unlock(&g_launch_mu);
            return 1;
        }
        job.block_order = static_cast<unsigned*>(malloc(job.nblocks * sizeof(unsigned)));
        if (job.block_order == nullptr) {
            snprintf(err, (size_t)errlen, "kernel %s: out of memory", kernel);
            pthread_mutex_unlock(&g_launch_mu);
            return 1;
        }
        unsigned long long rng = job.seed ^ 0x5851f42d4c957f2dull;
        for (unsigned long long i = 0; i < job.nblocks; ++i) job.block_order[i] = (unsigned)i;
        for (unsigned long long i = job.nblocks - 1; i > 0; --i) {
            unsigned long long j = splitmix64(rng) % (i + 1);
            unsigned t = job.block_order[i]; job.block_order[i] = job.block_order[j]; job.block_order[j] = t;
        }
    } else if (job.schedule == SCHED_SHUFFLED) {
        static unsigned zero = 0;
        job.block_order = &zero;
    }
#if defined(CUDASIM_ASAN)
    __asan_set_error_report_callback(asan_report_cb);
    pthread_mutex_lock(&g_asan_mu);
    g_asan_reports = 0;
    g_asan_len = 0;
    pthread_mutex_unlock(&g_asan_mu);
#endif
    install_signal_handlers();
    pthread_mutex_lock(&g_job_mu);
    g_current_job = &job;
    pthread_mutex_unlock(&g_job_mu);
    const int helpers = job.workers - 1;
    bool ok = helpers == 0 || pool_ensure(helpers, err, (size_t)errlen);
    if (ok) {
        if (helpers > 0) {
            pthread_mutex_lock(&g_pool->mu);
            g_pool->job = &job;
            g_pool->pending = helpers;
            g_pool->generation++;
            pthread_cond_broadcast(&g_pool->cv_start);
            pthread_mutex_unlock(&g_pool->mu);
        }
        run_worker(&job);
        if (helpers > 0) {
            pthread_mutex_lock(&g_pool->mu);
            while (g_pool->pending > 0) pthread_cond_wait(&g_pool->cv_done, &g_pool->mu);
            g_pool->job = nullptr;
            pthread_mutex_unlock(&g_pool->mu);
        }
    }
    pthread_mutex_lock(&g_job_mu);
    g_current_job = nullptr;
    pthread_mutex_unlock(&g_job_mu);
    g_total_switches += job.switches;
#if defined(CUDASIM_ASAN)
    pthread_mutex_lock(&g_asan_mu);
    if (g_asan_reports > 0) {
        // A memory error outranks whatever it may have caused afterwards.
        snprintf(err, (size_t)errlen, "%s", g_asan_report);
        job.failed = 1;
    }
    pthread_mutex_unlock(&g_asan_mu);
#endif
    if (job.block_order && job.nblocks > 1) free(job.block_order);
    fflush(stdout);  // device printf output appears when the launch completes
    pthread_mutex_unlock(&g_launch_mu);
    pthread_mutex_destroy(&job.err_mu);
    if (ok && !job.failed) return LAUNCH_OK;
    if (job.stack_overflow) return LAUNCH_STACK_OVERFLOW;
    return job.cancel != CANCEL_NONE ? LAUNCH_CANCELLED : LAUNCH_FAILED;
}

int block_barrier(int kind, int pred, const char* file, int line) {
    Fiber* f = t_fiber;
    if (f == nullptr) fiber_fail("__syncthreads() called outside a kernel launch");
    f->state = F_BARRIER;
    f->kind = kind;
    f->pred = pred;
    f->file = file;
    f->line = line;
    // Count the arrivals and compare each with the first, for block_quiescent.
    Worker* w = f->worker;
    if (w->bar_arrived++ == 0) {
        w->bar_first = f;
    } else if (!same_site(w->bar_first, f)) {
        w->bar_mixed = true;
    }
    w->bar_true += pred != 0;
    wait_for_others(f);
    return f->worker->bar_result;
}

static void warp_complete(Worker* w, unsigned warp, unsigned eff, int kind) {
    Fiber* lanes = &w->threads[warp * 32];
    unsigned long long acc = 0;
    unsigned ballot = 0;
    bool first = true;
    for (unsigned l = 0; l < 32; ++l) {
        if (!((eff >> l) & 1u)) continue;
        const unsigned long long v = lanes[l].wval;
        if (v) ballot |= 1u << l;
        switch (kind) {
            case W_ADD: acc = first ? v : (unsigned)(acc + v); break;
            case W_MIN: acc = first ? v : ((int)v < (int)acc ? v : acc); break;
            case W_MAX: acc = first ? v : ((int)v > (int)acc ? v : acc); break;
            case W_UMIN: acc = first ? v : ((unsigned)v < (unsigned)acc ? v : acc); break;
            case W_UMAX: acc = first ? v : ((unsigned)v > (unsigned)acc ? v : acc); break;
            case W_AND: acc = first ? v : (acc & v); break;
            case W_OR: acc = first ? v : (acc | v); break;
            case W_XOR: acc = first ? v : (acc ^ v); break;
            default: break;
        }
        first = false;
    }
    for (unsigned l = 0; l < 32; ++l) {
        if (!((eff >> l) & 1u)) continue;
        Fiber* f = &lanes[l];
        switch (kind) {
            case W_SHFL: {
                // An out-of-range source was mapped to the lane itself at the call; a
                // source that is not taking part yields the lane's own value.
                const int s = f->wsrc;
                f->wres = ((eff >> s) & 1u) ? lanes[s].wval : f->wval;
                break;
            }
            case W_BALLOT: f->wres = ballot; break;
            case W_ANY: f->wres = ballot != 0; break;
            case W_ALL: f->wres = ballot == eff; break;
            case W_ADD: case W_MIN: case W_MAX: case W_UMIN: case W_UMAX:
            case W_AND: case W_OR: case W_XOR: f->wres = acc; break;
            case W_MATCH_ANY: {
                unsigned m = 0;
                for (unsigned k = 0; k < 32; ++k) {
                    if (((eff >> k) & 1u) && lanes[k].wval == f->wval) m |= 1u << k;
                }
                f->wres = m;
                break;
            }
            default: f->wres = 0;
        }
    }
    if (kind == W_COLLECTIVE) {
        void* data[32];
        for (unsigned l = 0; l < 32; ++l) {
            data[l] = ((eff >> l) & 1u) ? reinterpret_cast<void*>(lanes[l].wval) : nullptr;
        }
        lanes[__builtin_ctz(eff)].wfn(data, eff);
    }
    for (unsigned l = 0; l < 32; ++l) {
        if (!((eff >> l) & 1u)) continue;
        if (kind == W_MATCH_ALL) {
            bool eq = true;
            for (unsigned k = 0; k < 32; ++k) {
                if (((eff >> k) & 1u) && lanes[k].wval != lanes[l].wval) eq = false;
            }
            lanes[l].wres = eq ? eff : 0;
        }
        lanes[l].state = F_READY;
    }
    w->warp_arrived[warp] &= ~eff;
}

// A warp-synchronous operation: every lane named in `mask` (that exists in the block)
// must arrive; the last one to arrive computes all lanes' results.
unsigned long long warp_op(int kind, const char* op, unsigned mask, unsigned long long val,
                                  int src, const char* file, int line) {
    Fiber* f = t_fiber;
    if (f == nullptr) fiber_fail("%s called outside a kernel launch", op);
    Worker* w = f->worker;
    const unsigned lane = f->linear & 31u, warp = f->linear >> 5;
    if (!((mask >> lane) & 1u)) {
        fiber_fail("%s at %s:%d: mask 0x%08x does not include the calling lane %u", op, file,
                   line, mask, lane);
    }
    // Lanes beyond the end of a partial last warp do not exist: they are not waited for.
    const unsigned eff = mask & w->warp_present[warp];
    f->state = F_WARP;
    f->kind = kind;
    f->op = op;
    f->wmask = mask;
    f->wval = val;
    f->wsrc = src;
    f->file = file;
    f->line = line;
    w->warp_arrived[warp] |= 1u << lane;
    if ((w->warp_arrived[warp] & eff) == eff) {
        Fiber* lanes = &w->threads[warp * 32];
        bool agree = true;
        for (unsigned l = 0; l < 32 && agree; ++l) {
            if (((eff >> l) & 1u) && lanes[l].wmask != mask) agree = false;
        }
        if (agree) {
            for (unsigned l = 0; l < 32; ++l) {
                const Fiber* g = &lanes[l];
                if (((eff >> l) & 1u) && g->kind != kind) {
                    fiber_fail("lanes of warp %u disagree: lane %u is in %s at %s:%d while lane %u is in %s at %s:%d",
                               warp, lane, op, file, line, l, g->op, g->file, g->line);
                }
            }
            if (kind == W_COLLECTIVE) {
                for (unsigned l = 0; l < 32; ++l) {
                    if (((eff >> l) & 1u) && lanes[l].wfn != f->wfn) {
                        fiber_fail("lanes of warp %u disagree: lane %u is in %s at %s:%d while lane %u is in %s at %s:%d",
                                   warp, lane, op, file, line, l, lanes[l].op, lanes[l].file, lanes[l].line);
                    }
                }
            }
            warp_complete(w, warp, eff, kind);
        }
    }
    if (f->state != F_READY) wait_for_others(f);
    return f->wres;
}

void warp_collective(CollectiveFn fn, void* data, const char* op, unsigned mask, const char* file,
                     int line) {
    Fiber* f = t_fiber;
    if (f == nullptr) fiber_fail("%s called outside a kernel launch", op);
    f->wfn = fn;
    warp_op(W_COLLECTIVE, op, mask, reinterpret_cast<unsigned long long>(data), 0, file, line);
}

}  // namespace detail
}  // namespace cudasim

// Device-side assert(): fail the launch with the message instead of aborting the
// process.  glibc's assert() macro calls __assert_fail; this module's definition
// takes precedence for calls made from inside it.
extern "C" CUDASIM_HIDDEN __attribute__((noreturn)) void __assert_fail(const char* expr,
                                                                       const char* file,
                                                                       unsigned int line,
                                                                       const char* function) noexcept {
    cudasim::detail::fiber_fail("assertion `%s` failed at %s:%u in %s", expr, file, line, function);
}

// ---------------------------------------------------------------------------------
// Module exports used by the driver (netc.sim.cudasim).  The per-kernel launch
// and signature functions are appended after the user's source by the driver:
//     CUDASIM_EXPORT const char* cudasim_sig_<i>(void);
//     CUDASIM_EXPORT int cudasim_launch_<i>(const long long* cfg, void** args,
//                                           char* err, long long errlen);
// ---------------------------------------------------------------------------------
CUDASIM_EXPORT int cudasim_abi_version(void) { return CUDASIM_ABI_VERSION; }

CUDASIM_EXPORT int cudasim_asan_enabled(void) {
#if defined(CUDASIM_ASAN)
    return 1;
#else
    return 0;
#endif
}

// Offsets (in this module's TLS block) of the two anchors, from the ELF symbol table.
CUDASIM_EXPORT void cudasim_set_tls_layout(long long off_a, long long off_b) {
    cudasim::detail::g_tls_off_a = off_a;
    cudasim::detail::g_tls_off_b = off_b;
}

// (offset, size) pairs of the static __shared__ variables a kernel may use; they are
// filled with 0xFF at the start of each of its blocks.
CUDASIM_EXPORT int cudasim_set_shared_ranges(int nkernels, int kernel, const long long* ranges, int n) {
    using namespace cudasim::detail;
    pthread_mutex_lock(&g_launch_mu);
    if (g_kernel_ranges == nullptr) {
        g_kernel_ranges = static_cast<const long long**>(calloc((size_t)nkernels, sizeof(long long*)));
        g_kernel_nranges = static_cast<int*>(calloc((size_t)nkernels, sizeof(int)));
        g_nkernels_ranges = (g_kernel_ranges && g_kernel_nranges) ? nkernels : 0;
    }
    int ok = 0;
    if (kernel >= 0 && kernel < g_nkernels_ranges) {
        long long* copy = static_cast<long long*>(malloc(sizeof(long long) * 2 * (size_t)(n > 0 ? n : 1)));
        if (copy != nullptr) {
            memcpy(copy, ranges, sizeof(long long) * 2 * (size_t)n);
            free(const_cast<long long*>(g_kernel_ranges[kernel]));
            g_kernel_ranges[kernel] = copy;
            g_kernel_nranges[kernel] = n;
            ok = 1;
        }
    }
    pthread_mutex_unlock(&g_launch_mu);
    return ok;
}

// Total fiber context switches performed by this module's launches.
CUDASIM_EXPORT unsigned long long cudasim_switch_count(void) {
    return __atomic_load_n(&cudasim::detail::g_total_switches, __ATOMIC_RELAXED);
}

// Stops the launch in progress (from another thread): `reason` is CANCEL_INTERRUPT or
// CANCEL_TIMEOUT.  Its threads stop where they are, and the launch returns
// LAUNCH_CANCELLED.  Returns 0 when no launch is in progress.  The driver calls it again
// until the launch returns: a thread that was between two fibers when signalled sees the
// flag at its next switch, one that had just been resumed needs the next signal.
CUDASIM_EXPORT int cudasim_cancel(int reason) {
    using namespace cudasim::detail;
    pthread_mutex_lock(&g_job_mu);
    Job* job = g_current_job;
    if (job != nullptr) {
        __atomic_store_n(&job->cancel, reason, __ATOMIC_SEQ_CST);
        __atomic_store_n(&job->stop, 1, __ATOMIC_SEQ_CST);
        for (int i = 0; i < job->nthreads_running; ++i) pthread_kill(job->threads[i], interrupt_signal());
    }
    pthread_mutex_unlock(&g_job_mu);
    return job != nullptr;
}

// Joins the worker threads (the driver calls it when the simulator is closed; a later
// launch starts them again).
CUDASIM_EXPORT void cudasim_shutdown(void) {
    pthread_mutex_lock(&cudasim::detail::g_launch_mu);
    cudasim::detail::pool_shutdown();
    pthread_mutex_unlock(&cudasim::detail::g_launch_mu);
}

#endif  // CUDASIM_IMPLEMENTATION

#endif  // NETC_CUDASIM_H
