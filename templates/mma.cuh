// ---------------------------------------------------------------------------------------------
// mma.cuh: the tensor-core and asynchronous-copy instructions netc's kernels use, as small
// wrappers that are the PTX instruction on a GPU (sm_80 and later) and the simulator's
// emulation of it (cudasim::ptx in simulator/include/cudasim.h, which follows the PTX ISA's
// fragment layouts lane by lane) on the CPU.
//
//   netc_mma_m16n8k16<BF16>(d, a, b, c)  mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}
//                                        d = a . b + c for the warp's 16x8 tile, k = 16; a, b are
//                                        the ISA's fragments (4 and 2 registers of two 16-bit
//                                        elements), c and d 4 floats a lane.
//   netc_mma_m16n8k8_tf32(d, a, b, c)     mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: k = 8,
//                                        a, b 4 and 2 registers of one TF32 element each.
//   netc_cvt_tf32(x)                     cvt.rna.tf32.f32: x rounded to TF32 (nearest, ties away),
//                                        its 32-bit pattern.
//   netc_ldmatrix_x4<TRANS>(r, row)      ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: four
//                                        8x8 matrices; lanes 8j..8j+7 address matrix j's rows.
//   netc_cp_async_16(dst, src, bytes)    cp.async.cg.shared.global, 16 bytes, the first `bytes`
//                                        (16 or 0) from src, zeros after them.
//   netc_cp_async_commit()               cp.async.commit_group
//   netc_cp_async_wait<N>()              cp.async.wait_group N: all but the N newest groups landed.
//
// NETC_HAS_MMA is 1 where they exist (the simulator, and device code for sm_80 and later); a
// kernel using them keeps a fallback for the rest (sm_75, and nvcc's host pass).
// ---------------------------------------------------------------------------------------------

#if defined(NETC_CUDASIM) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
#define NETC_HAS_MMA 1
#else
#define NETC_HAS_MMA 0
#endif

#if NETC_HAS_MMA

#ifdef NETC_CUDASIM

template <bool BF16>
__device__ __forceinline__ void netc_mma_m16n8k16(float (&d)[4], const unsigned (&a)[4],
                                                  const unsigned (&b)[2], const float (&c)[4])
{
    cudasim::ptx::mma_m16n8k16<BF16>(d, a, b, c);
}

__device__ __forceinline__ void netc_mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4],
                                                      const unsigned (&b)[2], const float (&c)[4])
{
    cudasim::ptx::mma_m16n8k8_tf32(d, a, b, c);
}

__device__ __forceinline__ unsigned netc_cvt_tf32(float x) { return cudasim::ptx::cvt_rna_tf32(x); }

template <bool TRANS>
__device__ __forceinline__ void netc_ldmatrix_x4(unsigned (&r)[4], const void* row)
{
    cudasim::ptx::ldmatrix<4, TRANS>(r, row);
}

__device__ __forceinline__ void netc_cp_async_16(void* dst, const void* src, unsigned bytes)
{
    cudasim::ptx::cp_async(dst, src, 16, bytes);
}

__device__ __forceinline__ void netc_cp_async_commit() { cudasim::ptx::cp_async_commit_group(); }

template <int N>
__device__ __forceinline__ void netc_cp_async_wait() { cudasim::ptx::cp_async_wait_group(N); }

#else

template <bool BF16>
__device__ __forceinline__ void netc_mma_m16n8k16(float (&d)[4], const unsigned (&a)[4],
                                                  const unsigned (&b)[2], const float (&c)[4])
{
    if (BF16)
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%10,%11,%12,%13};\n"
            : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
              "f"(c[1]), "f"(c[2]), "f"(c[3]));
    else
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%10,%11,%12,%13};\n"
            : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
              "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

__device__ __forceinline__ void netc_mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4],
                                                      const unsigned (&b)[2], const float (&c)[4])
{
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
}

__device__ __forceinline__ unsigned netc_cvt_tf32(float x)
{
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ unsigned netc_shared_address(const void* pointer)
{
    return static_cast<unsigned>(__cvta_generic_to_shared(pointer));
}

template <bool TRANS>
__device__ __forceinline__ void netc_ldmatrix_x4(unsigned (&r)[4], const void* row)
{
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(netc_shared_address(row)));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(netc_shared_address(row)));
}

__device__ __forceinline__ void netc_cp_async_16(void* dst, const void* src, unsigned bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(netc_shared_address(dst)),
                 "l"(src), "r"(bytes));
}

__device__ __forceinline__ void netc_cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::);
}

template <int N>
__device__ __forceinline__ void netc_cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

#endif  // NETC_CUDASIM
#endif  // NETC_HAS_MMA
