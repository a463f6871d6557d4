// ---------------------------------------------------------------------------------------------
// gemv.cuh: C[M x N] = A[M x K] . B (+ bias) for few rows M (batch-1 dense layers, decoding
// steps), batched: the GEMM of gemm.cuh with its arguments and grid layout, for the shapes
// where a BM x BN tile would be mostly padding (at M = 1 the 16-row tile wastes 15 of every
// 16 FMAs and launches a handful of blocks).
//
// Design note.
//   Rows:   a block computes ROWS rows of C (ROWS <= 8); every thread holds ROWS float
//           accumulators, so each weight it loads is used for all ROWS rows. M > ROWS (a batch
//           larger than the one the tile was chosen for) takes more blocks along grid.x.
//   Dense (B_TRANSPOSED: B is the [N, K] weight, K contiguous): a warp per output column n,
//           WARPS columns a block. The 32 lanes stride over K with 128-bit loads (4 floats or
//           8 halves) when K is a multiple of that width and both matrices are 16-byte aligned
//           (decided at run time), else with scalar loads; a warp shuffle sums the lanes, and
//           lane r stores row r. Every weight byte is read once; A (ROWS rows, L1/L2 resident)
//           once per column.
//   Matmul (B is [K, N], N contiguous): 32 columns a block, a column a lane, so a warp's B
//           loads are one coalesced row segment and its A loads one broadcast address. The
//           WARPS warps split K (warp w takes k = w, w + WARPS, ...) and add their partial
//           sums through shared memory (ROWS * WARPS * 32 floats), in warp order.
//   Order:  each output is a sum in float over a strided slice of K per lane (or warp), then a
//           fixed tree (or warp-order sum): deterministic, but not the k-order of gemm.cuh.
//   Epilogue: NetcRowMajorStore of gemm.cuh (bias, then the fused pointwise functor).
//
// Launch: block 32 * WARPS; grid.x = ceil(M / ROWS) * matrices, grid.y = ceil(N / columns)
// with columns = WARPS (dense) or 32 (matmul); dynamic shared memory as above for matmul, none
// for dense. E.g. ResNet's 512 -> 1000 classifier at batch 1 with WARPS = 4: 250 blocks of 128
// threads on an H100's 132 SMs.
// ---------------------------------------------------------------------------------------------

// 16 bytes of T: one 128-bit load.
template <typename T>
struct alignas(16) NetcVector16 {
    static constexpr int SIZE = 16 / static_cast<int>(sizeof(T));
    T element[SIZE];
};

// acc[r] += sum over this lane's k of a[r * k_size + k] * w[k] for r < rows: lane `lane`
// takes the 16-byte vectors lane, lane + 32, ... when `vectors`, else the elements lane,
// lane + 32, ...
template <typename T, int ROWS>
__device__ __forceinline__ void netc_gemv_lane_dot(const T* a, const T* w, long long k_size,
                                                   int rows, bool vectors, int lane,
                                                   float (&acc)[ROWS])
{
    using Vector = NetcVector16<T>;
    constexpr int WIDTH = Vector::SIZE;
    if (vectors) {
        for (long long k = static_cast<long long>(lane) * WIDTH; k < k_size; k += 32 * WIDTH) {
            const Vector weights = *reinterpret_cast<const Vector*>(w + k);
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                if (r < rows) {
                    const Vector inputs = *reinterpret_cast<const Vector*>(a + r * k_size + k);
#pragma unroll
                    for (int i = 0; i < WIDTH; ++i)
                        acc[r] = fmaf(netc_to_float(inputs.element[i]),
                                      netc_to_float(weights.element[i]), acc[r]);
                }
            }
        }
        return;
    }
    for (long long k = lane; k < k_size; k += 32) {
        const float weight = netc_load(w + k);
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
            if (r < rows)
                acc[r] = fmaf(netc_load(a + r * k_size + k), weight, acc[r]);
    }
}

// Dense: a warp per column of C (see the design note).
template <typename T, int ROWS, int WARPS, class Store>
__device__ __forceinline__ void netc_gemv_columns_by_warp(const T* a, const T* b,
                                                          const NetcGemmBlock& block, long long m,
                                                          long long n, long long k,
                                                          const Store& store)
{
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const long long column = block.n0 + warp;
    const int rows = static_cast<int>(m - block.m0 < ROWS ? m - block.m0 : ROWS);
    const T* a_rows = a + block.m0 * k;
    const T* weights = b + column * k;
    constexpr int WIDTH = NetcVector16<T>::SIZE;
    const bool vectors = k % WIDTH == 0 &&
                         (reinterpret_cast<unsigned long long>(a_rows) |
                          reinterpret_cast<unsigned long long>(weights)) % 16 == 0;
    float acc[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
        acc[r] = 0.0f;
    if (column < n)  // the same for the whole warp
        netc_gemv_lane_dot<T, ROWS>(a_rows, weights, k, rows, vectors, lane, acc);
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const float sum = netc_warp_sum(acc[r]);  // all 32 lanes take part
        if (lane == r && r < rows && column < n)
            store(block.m0 + r, column, sum);
    }
}

// Matmul: a column of C a lane, K split over the warps (see the design note).
template <typename T, int ROWS, int WARPS, class Store>
__device__ __forceinline__ void netc_gemv_columns_by_lane(const T* a, const T* b,
                                                          const NetcGemmBlock& block, long long m,
                                                          long long n, long long k,
                                                          const Store& store)
{
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const long long column = block.n0 + lane;
    const int rows = static_cast<int>(m - block.m0 < ROWS ? m - block.m0 : ROWS);
    const T* a_rows = a + block.m0 * k;
    float acc[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
        acc[r] = 0.0f;
    if (column < n) {
        for (long long kk = warp; kk < k; kk += WARPS) {
            const float weight = netc_load(b + kk * n + column);
#pragma unroll
            for (int r = 0; r < ROWS; ++r)
                if (r < rows)
                    acc[r] = fmaf(netc_load(a_rows + r * k + kk), weight, acc[r]);
        }
    }
    NETC_DYNAMIC_SHARED(float, partial);  // [ROWS][WARPS][32]
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
        partial[(r * WARPS + warp) * 32 + lane] = acc[r];
    __syncthreads();
    for (int r = warp; r < rows; r += WARPS) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w)
            sum += partial[(r * WARPS + w) * 32 + lane];
        if (column < n)
            store(block.m0 + r, column, sum);
    }
}

// Entry point: netc_gemm's arguments and matrix indexing (gemm.cuh), the grid of the note.
template <typename T, int ROWS, int WARPS, bool B_TRANSPOSED, bool HAS_BIAS, class Epilogue>
__device__ __forceinline__ void netc_gemv(const T* __restrict__ a, const T* __restrict__ b,
                                          const T* __restrict__ bias, T* __restrict__ c,
                                          long long m, long long n, long long k,
                                          long long inner_count, long long a_outer_stride,
                                          long long a_inner_stride, long long b_outer_stride,
                                          long long b_inner_stride, const Epilogue& epilogue)
{
    const NetcGemmBlock block = netc_gemm_block(m, ROWS, B_TRANSPOSED ? WARPS : 32, inner_count);
    const T* a_matrix = block.matrix_of(a, a_outer_stride, a_inner_stride);
    const T* b_matrix = block.matrix_of(b, b_outer_stride, b_inner_stride);
    const NetcRowMajorStore<T, HAS_BIAS, Epilogue> store{c, bias, n, block.matrix * m * n,
                                                         epilogue};
    if (B_TRANSPOSED)
        netc_gemv_columns_by_warp<T, ROWS, WARPS>(a_matrix, b_matrix, block, m, n, k, store);
    else
        netc_gemv_columns_by_lane<T, ROWS, WARPS>(a_matrix, b_matrix, block, m, n, k, store);
}
