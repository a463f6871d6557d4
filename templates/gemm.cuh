// ---------------------------------------------------------------------------------------------
// gemm.cuh: tiled shared-memory GEMM, C[M x N] = A[M x K] . B[K x N] (+ bias), batched.
//
// Design note.
//   Block:  computes one BM x BN tile of C for one matrix of the batch. It walks K in steps of
//           BK: the block stages an A tile (BM x BK) and a B tile (BK x BN) in shared memory,
//           converted to float, then every thread multiplies out of shared memory.
//   Thread: THREADS = (BM / TM) * (BN / TN) threads; the thread at (row, col) of that grid
//           holds a TM x TN register tile of float accumulators for rows row + i * (BM / TM) and
//           columns col + j * (BN / TN). The interleaved ownership makes a warp's shared-memory
//           reads of B and its global writes of C consecutive in n.
//   Shared: BK * (BM + 1 + BN + 1) floats; the +1 pads each k-row so that a tile staged with
//           k as the fastest index does not hit one bank with every thread.
//   Ragged: any M, N, K. Staging writes zeros outside the matrix, so the inner product needs
//           no bounds checks; the epilogue stores only inside C.
//   Bytes:  each element of A is read from global memory ceil(N / BN) times (once per column
//           tile), each element of B ceil(M / BM) times, C is written once. From shared
//           memory, each staged A element is read BN / TN times and each B element BM / TM
//           times per k-step.
//
// The main loop is generic over where A and B come from (a "source" of the element at (x, k),
// where x is m for A and n for B): a plain strided matrix here, an im2col view of the input in
// conv2d.cuh. `K_CONTIGUOUS` tells the staging loop which index to run fastest across threads,
// so that global reads are coalesced for either memory order.
// ---------------------------------------------------------------------------------------------

template <int BM, int BN, int BK, int TM, int TN>
struct NetcGemmShape {
    static_assert(BM % TM == 0 && BN % TN == 0, "the register tile must divide the block tile");
    static constexpr int THREADS_M = BM / TM;
    static constexpr int THREADS_N = BN / TN;
    static constexpr int THREADS = THREADS_M * THREADS_N;
    static constexpr int A_PITCH = BM + 1;
    static constexpr int B_PITCH = BN + 1;
    static constexpr int SHARED_FLOATS = BK * (A_PITCH + B_PITCH);
};

// A source hands out the elements of A (x = m) or B (x = n) in two steps: `column(x)` does
// the work that depends only on x (once per staged column), `at(column, k)` reads one element.
// Both are called only for x < x_end and k < k_end.

// A matrix in memory with one unit-stride index. K_CONTIGUOUS: element (x, k) is at
// x * pitch + k (A as [M, K], or B stored as [N, K]); otherwise it is at k * pitch + x
// (B as [K, N]).
template <typename T, bool K_CONTIGUOUS_>
struct NetcMatrixSource {
    static constexpr bool K_CONTIGUOUS = K_CONTIGUOUS_;
    const T* data;
    long long pitch;

    struct Column {
        const T* first;  // element (x, 0)
    };

    __device__ __forceinline__ Column column(long long x) const
    {
        return {data + (K_CONTIGUOUS ? x * pitch : x)};
    }

    __device__ __forceinline__ float at(const Column& column, long long k) const
    {
        return netc_load(column.first + (K_CONTIGUOUS ? k : k * pitch));
    }
};

__host__ __device__ constexpr int netc_gcd(int a, int b) { return b == 0 ? a : netc_gcd(b, a % b); }

// Stages tile[kk * PITCH + x] = source(x0 + x, k0 + kk) for x < EXTENT, kk < BK, and zero
// outside [0, x_end) x [0, k_end). The threads are split into FAST lanes along the index that is
// contiguous in memory (so a warp's reads are coalesced) and THREADS / FAST along the other;
// FAST divides both THREADS and that extent, so every element is staged exactly once.
template <int EXTENT, int BK, int PITCH, int THREADS, class Source>
__device__ __forceinline__ void netc_gemm_stage(float* tile, const Source& source, long long x0,
                                                long long x_end, long long k0, long long k_end)
{
    constexpr bool K_FAST = Source::K_CONTIGUOUS;
    constexpr int FAST = netc_gcd(THREADS, K_FAST ? BK : EXTENT);
    constexpr int X_LANES = K_FAST ? THREADS / FAST : FAST;
    constexpr int K_LANES = K_FAST ? FAST : THREADS / FAST;
    const int x_lane = K_FAST ? threadIdx.x / FAST : threadIdx.x % FAST;
    const int k_lane = K_FAST ? threadIdx.x % FAST : threadIdx.x / FAST;
    // Fixed trip counts, so that the compiler unrolls both loops.
#pragma unroll
    for (int x_step = 0; x_step < EXTENT; x_step += X_LANES) {
        const int x = x_step + x_lane;
        if (EXTENT % X_LANES != 0 && x >= EXTENT)
            break;
        const long long global_x = x0 + x;
        const bool inside = global_x < x_end;
        const typename Source::Column column = source.column(inside ? global_x : x0);
#pragma unroll
        for (int k_step = 0; k_step < BK; k_step += K_LANES) {
            const int kk = k_step + k_lane;
            if (BK % K_LANES != 0 && kk >= BK)
                break;
            const long long global_k = k0 + kk;
            tile[kk * PITCH + x] =
                (inside && global_k < k_end) ? source.at(column, global_k) : 0.0f;
        }
    }
}

// acc[i][j] = sum over k of A(m0 + row + i * THREADS_M, k) * B(k, n0 + col + j * THREADS_N)
// for this thread's (row, col); `shared` holds Shape::SHARED_FLOATS floats. Every thread of
// the block must call it (it synchronises the block).
template <int BM, int BN, int BK, int TM, int TN, class ASource, class BSource>
__device__ __forceinline__ void netc_gemm_mainloop(const ASource& a, const BSource& b,
                                                   long long m0, long long n0, long long m,
                                                   long long n, long long k, float* shared,
                                                   float (&acc)[TM][TN])
{
    using Shape = NetcGemmShape<BM, BN, BK, TM, TN>;
    float* a_tile = shared;                      // [BK][A_PITCH]
    float* b_tile = shared + BK * Shape::A_PITCH;  // [BK][B_PITCH]
    const int row = threadIdx.x / Shape::THREADS_N;
    const int col = threadIdx.x % Shape::THREADS_N;

#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j)
            acc[i][j] = 0.0f;

    for (long long k0 = 0; k0 < k; k0 += BK) {
        netc_gemm_stage<BM, BK, Shape::A_PITCH, Shape::THREADS>(a_tile, a, m0, m, k0, k);
        netc_gemm_stage<BN, BK, Shape::B_PITCH, Shape::THREADS>(b_tile, b, n0, n, k0, k);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float a_fragment[TM];
            float b_fragment[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i)
                a_fragment[i] = a_tile[kk * Shape::A_PITCH + row + i * Shape::THREADS_M];
#pragma unroll
            for (int j = 0; j < TN; ++j)
                b_fragment[j] = b_tile[kk * Shape::B_PITCH + col + j * Shape::THREADS_N];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j)
                    acc[i][j] = fmaf(a_fragment[i], b_fragment[j], acc[i][j]);
        }
        __syncthreads();  // the next k-step overwrites the tiles
    }
}

// Calls store(m, n, value) for every element of this thread's register tile inside the matrix.
template <int BM, int BN, int TM, int TN, class Store>
__device__ __forceinline__ void netc_gemm_epilogue(const float (&acc)[TM][TN], long long m0,
                                                   long long n0, long long m, long long n,
                                                   const Store& store)
{
    constexpr int THREADS_M = BM / TM;
    constexpr int THREADS_N = BN / TN;
    const int row = threadIdx.x / THREADS_N;
    const int col = threadIdx.x % THREADS_N;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const long long global_m = m0 + row + i * THREADS_M;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const long long global_n = n0 + col + j * THREADS_N;
            if (global_m < m && global_n < n)
                store(global_m, global_n, acc[i][j]);
        }
    }
}

// Stores C[m, n] = epilogue(value + bias[n], offset) into a row-major [M, N] matrix; the
// epilogue (a pointwise functor, identity when nothing is fused) sees the element's offset in
// the contiguous output.
template <typename T, bool HAS_BIAS, class Epilogue>
struct NetcRowMajorStore {
    T* c;
    const T* bias;
    long long n;
    long long first;  // offset of this matrix in the output
    Epilogue epilogue;

    __device__ __forceinline__ void operator()(long long row, long long col, float value) const
    {
        if (HAS_BIAS)
            value += netc_load(bias + col);
        const long long offset = first + row * n + col;
        netc_store(c + offset, epilogue(value, offset));
    }
};

// Where a block of the batched GEMM's grid (below) works: its matrix of the batch
// (outer * inner_count + inner) and the first row and column of its tile of C.
struct NetcGemmBlock {
    long long matrix, outer, inner, m0, n0;

    // The operand's matrix: outer * outer_stride + inner * inner_stride elements in.
    template <typename T>
    __device__ __forceinline__ const T* matrix_of(const T* operand, long long outer_stride,
                                                  long long inner_stride) const
    {
        return operand + outer * outer_stride + inner * inner_stride;
    }
};

__device__ __forceinline__ NetcGemmBlock netc_gemm_block(long long m, int bm, int bn,
                                                         long long inner_count)
{
    // The tile and matrix counts are below grid.x's limit of 2^31 - 1, so 32-bit division
    // does (64-bit division is a slow subroutine call).
    const unsigned m_tiles = static_cast<unsigned>(netc_ceil_div(m, bm));
    const unsigned matrix = blockIdx.x / m_tiles;
    return {matrix, matrix / static_cast<unsigned>(inner_count),
            matrix % static_cast<unsigned>(inner_count),
            static_cast<long long>(blockIdx.x % m_tiles) * bm,
            static_cast<long long>(blockIdx.y) * bn};
}

// The batched GEMM behind `dense` (B_TRANSPOSED: B is the [N, K] weight, C = A . W^T + bias)
// and `matmul` (B is [K, N]). The batch of matrices is indexed outer * inner_count + inner;
// each operand's matrix starts at outer * outer_stride + inner * inner_stride (a stride of 0
// broadcasts), which covers NumPy's batch broadcasting after netc merges the batch dims.
// C is contiguous [matrices, M, N]; `epilogue` is applied to every element before it is stored.
//
// Launch: block THREADS; grid.x = ceil(M / BM) * matrices (the batch of matrices and the row
// tiles share x, because either may depend on a named dimension), grid.y = ceil(N / BN).
template <typename T, int BM, int BN, int BK, int TM, int TN, bool B_TRANSPOSED, bool HAS_BIAS,
          class Epilogue>
__device__ __forceinline__ void netc_gemm(const T* __restrict__ a, const T* __restrict__ b,
                                          const T* __restrict__ bias, T* __restrict__ c,
                                          long long m, long long n, long long k,
                                          long long inner_count, long long a_outer_stride,
                                          long long a_inner_stride, long long b_outer_stride,
                                          long long b_inner_stride, const Epilogue& epilogue)
{
    const NetcGemmBlock block = netc_gemm_block(m, BM, BN, inner_count);
    const NetcMatrixSource<T, true> a_source{block.matrix_of(a, a_outer_stride, a_inner_stride),
                                             k};
    const NetcMatrixSource<T, B_TRANSPOSED> b_source{
        block.matrix_of(b, b_outer_stride, b_inner_stride), B_TRANSPOSED ? k : n};

    NETC_DYNAMIC_SHARED(float, shared);
    float acc[TM][TN];
    netc_gemm_mainloop<BM, BN, BK, TM, TN>(a_source, b_source, block.m0, block.n0, m, n, k,
                                           shared, acc);
    const NetcRowMajorStore<T, HAS_BIAS, Epilogue> store{c, bias, n, block.matrix * m * n,
                                                         epilogue};
    netc_gemm_epilogue<BM, BN, TM, TN>(acc, block.m0, block.n0, m, n, store);
}
