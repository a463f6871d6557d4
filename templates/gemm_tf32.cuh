// ---------------------------------------------------------------------------------------------
// gemm_tf32.cuh: the TF32 tensor-core GEMM for f32 tensors (`--precision tf32`),
// C[M x N] = A[M x K] . B[K x N] (+ bias), batched as netc_gemm in gemm.cuh, whose launch,
// arguments and epilogue it shares. Storage stays f32; each operand is rounded to TF32 (10
// mantissa bits, cvt.rna.tf32.f32) in shared memory, and the products are summed in float.
//
// Design note.
//   Block:  one BM x BN tile of C for one matrix of the batch, WM x WN warps; each warp owns a
//           (BM / WM) x (BN / WN) sub-tile: MI x NI tiles of mma.sync m16n8k8 (TF32), their
//           float accumulators in registers (4 a lane each).
//   K loop: the pipeline of gemm_mma.cuh: k-tiles of BK (a multiple of 8) through a
//           STAGES-deep ring of shared buffers filled by cp.async, 16 bytes (4 floats) a copy;
//           each step waits for the oldest group, rounds the thread's own chunks of it to
//           TF32 in place (each staged float is converted once a block, not once a warp that
//           reads it: a third of the conversions on the 128 x 128 tile), synchronises, issues
//           the copies of k-tile t + STAGES - 1, then multiplies k-tile t in steps of 8.
//   Shared: A as [BM][BK + 4] floats; B as [BN][BK + 4] (dense's [N, K] weight) or [BK][BN + 8]
//           (matmul's [K, N]). The pads shift the 8 rows an ldmatrix reads into 8 distinct
//           16-byte bank groups, and spread matmul's scalar B reads (rows t, columns g of a
//           lane) over 32 banks: no bank conflicts.
//   Fragments: an 8x8 b16 matrix of ldmatrix is 8 rows of 4 floats, lane i getting the float
//           (i / 4, i % 4): exactly a TF32 fragment. ldmatrix.x4 loads A's 16x8 fragment
//           (rows lane % 16, k half lane / 16) and, from dense's [N][K] B, two n8 fragments.
//           Matmul's [K][N] B has k along columns, which ldmatrix cannot transpose at 32
//           bits: its two registers are read as floats, (k t and t + 4, column g).
//   Ragged: copies of rows past M (or N) and chunks past K are zero-filled (src-size 0). The
//           cp.async path needs rows whose length (K for A and dense's B, N for matmul's B) is a
//           multiple of 4 and 16-byte aligned matrices; otherwise both operands are staged
//           element by element, rounded as they are stored (a second instantiation of the
//           main loop, chosen per block).
//   Bytes:  as gemm_mma.cuh: A read ceil(N / BN) times from global memory, B ceil(M / BM)
//           times, C written once.
//   Fallback: where there are no tensor cores (sm_75, and nvcc's host pass), the same launch
//           runs netc_gemm (plain f32) with a SIMT tile of the same block shape and threads.
//   Split-K: as gemm_mma.cuh's.
// ---------------------------------------------------------------------------------------------

// The tensor-core GEMM's shape (gemm_mma.cuh) with rows of floats padded by 4 (16 bytes) and
// k-steps of 8 (mma.sync m16n8k8).
template <int BM, int BN, int BK, int WM, int WN, int STAGES, bool B_TRANSPOSED>
using NetcTf32Shape = NetcMmaShape<BM, BN, BK, WM, WN, STAGES, B_TRANSPOSED, 4, 8>;

#if NETC_HAS_MMA
// x rounded to TF32 (cvt.rna.tf32.f32), as a float.
__device__ __forceinline__ float netc_tf32(float x) { return __uint_as_float(netc_cvt_tf32(x)); }

// This thread's cp.async copies of one operand's k-tiles: the ROWS x COLS tile (row-major,
// PITCH floats a row, 16-byte chunks of 4 floats) for rows or columns [x0, x_end) of the
// matrix, whichever does not walk k; K_ALONG_COLS: k runs along the tile's columns (A and
// dense's B), else along its rows (matmul's B). The threads cover ROWS_PER_PASS whole rows a
// pass, so a thread's chunks lie one pass stride apart: one pointer and a mask of the chunks
// inside the matrix per thread, whatever the number of passes (NetcMmaCopies in gemm_mma.cuh
// keeps a pointer a chunk, which f32's twice as many chunks cannot afford in registers).
template <int ROWS, int COLS, int PITCH, int THREADS, bool K_ALONG_COLS>
struct NetcTf32Copies {
    static constexpr int CHUNKS_PER_ROW = COLS / 4;
    static constexpr int ROWS_PER_PASS = THREADS / CHUNKS_PER_ROW;
    static constexpr int PASSES = (ROWS + ROWS_PER_PASS - 1) / ROWS_PER_PASS;
    static_assert(COLS % 4 == 0 && THREADS % CHUNKS_PER_ROW == 0 && PASSES <= 32,
                  "whole rows of chunks a pass");
    const float* source;     // the first pass's chunk in the next k-tile
    long long pass_stride;   // floats from one pass's chunk to the next's, in the matrix
    int row;                 // the first pass's row in the tile
    int column;              // and column
    unsigned inside;         // bit i: pass i's chunk is in the tile and in the matrix along x
    long long step;          // floats from one k-tile to the next

    __device__ __forceinline__ NetcTf32Copies(const float* matrix, long long pitch, long long x0,
                                              long long x_end)
    {
        row = static_cast<int>(threadIdx.x) / CHUNKS_PER_ROW;
        column = static_cast<int>(threadIdx.x) % CHUNKS_PER_ROW * 4;
        inside = 0;
#pragma unroll
        for (int i = 0; i < PASSES; ++i) {
            const int r = row + i * ROWS_PER_PASS;
            if (r < ROWS && x0 + (K_ALONG_COLS ? r : column) < x_end)
                inside |= 1u << i;
        }
        source = matrix + (K_ALONG_COLS ? (x0 + row) * pitch + column : row * pitch + x0 + column);
        pass_stride = ROWS_PER_PASS * pitch;
        step = K_ALONG_COLS ? COLS : ROWS * pitch;
    }

    // Issues the copies of the k-tile starting at k0 (zero-filled past k) into `tile`.
    __device__ __forceinline__ void issue(float* tile, const float* matrix, long long k0,
                                          long long k)
    {
#pragma unroll
        for (int i = 0; i < PASSES; ++i) {
            const int r = row + i * ROWS_PER_PASS;
            if (ROWS % ROWS_PER_PASS != 0 && r >= ROWS)
                break;
            const bool copy = (inside >> i & 1u) && k0 + (K_ALONG_COLS ? column : r) < k;
            netc_cp_async_16(tile + r * PITCH + column, copy ? source + i * pass_stride : matrix,
                             copy ? 16u : 0u);
        }
        source += step;
    }

    // Rounds this thread's chunks of `tile` to TF32 in place, once they have landed: each
    // staged float is converted once a block, not once a warp that reads it.
    __device__ __forceinline__ void round(float* tile) const
    {
#pragma unroll
        for (int i = 0; i < PASSES; ++i) {
            const int r = row + i * ROWS_PER_PASS;
            if (ROWS % ROWS_PER_PASS != 0 && r >= ROWS)
                break;
            float4& chunk = *reinterpret_cast<float4*>(tile + r * PITCH + column);
            const float4 value = chunk;
            chunk = make_float4(netc_tf32(value.x), netc_tf32(value.y), netc_tf32(value.z),
                                netc_tf32(value.w));
        }
    }
};

// Stages rows [row0, row0 + ROWS) x columns [col0, col0 + COLS) of a row-major matrix (`pitch`
// floats a row, `row_end` x `col_end` of them real) into tile[r * PITCH + c] rounded to TF32,
// zeros outside, element by element: for operands cp.async cannot copy.
template <int ROWS, int COLS, int PITCH, int THREADS>
__device__ __forceinline__ void netc_tf32_stage(float* tile, const float* matrix, long long pitch,
                                                long long row0, long long row_end, long long col0,
                                                long long col_end)
{
#pragma unroll 4
    for (int step = 0; step < ROWS * COLS; step += THREADS) {
        const int index = step + static_cast<int>(threadIdx.x);
        if ((ROWS * COLS) % THREADS != 0 && index >= ROWS * COLS)
            break;
        const int r = index / COLS;
        const int c = index % COLS;
        const long long row = row0 + r;
        const long long col = col0 + c;
        tile[r * PITCH + c] =
            row < row_end && col < col_end ? netc_tf32(matrix[row * pitch + col]) : 0.0f;
    }
}

// acc[i][j][r] = the element (m0 + warp_m * WARP_M + i * 16 + lane / 4 + 8 * (r / 2),
// n0 + warp_n * WARP_N + j * 8 + 2 * (lane % 4) + r % 2) of A . B for this lane's warp, the
// operands rounded to TF32. VECTOR: both operands are copied by cp.async, else staged element
// by element; the caller decides, so that the main loop holds one way of staging only. `a` and
// `b` start at the first k summed, `k` of them, in rows of `k_pitch` where k runs along them
// (netc_mma_mainloop).
template <int BM, int BN, int BK, int WM, int WN, int STAGES, bool B_TRANSPOSED, bool VECTOR>
__device__ __forceinline__ void netc_tf32_mainloop(
    const float* a, const float* b, long long m0, long long n0, long long m, long long n,
    long long k_pitch, long long k, float* shared,
    float (&acc)[NetcTf32Shape<BM, BN, BK, WM, WN, STAGES, B_TRANSPOSED>::MI]
                [NetcTf32Shape<BM, BN, BK, WM, WN, STAGES, B_TRANSPOSED>::NI][4])
{
    using Shape = NetcTf32Shape<BM, BN, BK, WM, WN, STAGES, B_TRANSPOSED>;
    constexpr int MI = Shape::MI;
    constexpr int NI = Shape::NI;
    float* a_tiles = shared;                             // [STAGES][BM][A_PITCH]
    float* b_tiles = shared + STAGES * Shape::A_STAGE;  // [STAGES][...][B_PITCH]
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int warp_m = warp / WN;
    const int warp_n = warp % WN;
    const long long b_pitch = B_TRANSPOSED ? k_pitch : n;
    netc_mma_zero<Shape>(acc);

    const long long k_tiles = (k + BK - 1) / BK;
    NetcTf32Copies<BM, BK, Shape::A_PITCH, Shape::THREADS, true> a_copies(a, k_pitch, m0, m);
    NetcTf32Copies<B_TRANSPOSED ? BN : BK, B_TRANSPOSED ? BK : BN, Shape::B_PITCH,
                   Shape::THREADS, B_TRANSPOSED>
        b_copies(b, b_pitch, n0, n);
    // Fills buffer `buffer` with k-tile `tile` (the tiles are staged in order).
    auto stage = [&](long long tile, int buffer) {
        const long long k0 = tile * BK;
        float* a_tile = a_tiles + buffer * Shape::A_STAGE;
        float* b_tile = b_tiles + buffer * Shape::B_STAGE;
        if constexpr (VECTOR) {
            a_copies.issue(a_tile, a, k0, k);
            b_copies.issue(b_tile, b, k0, k);
        } else {
            netc_tf32_stage<BM, BK, Shape::A_PITCH, Shape::THREADS>(a_tile, a, k_pitch, m0, m,
                                                                    k0, k);
            if (B_TRANSPOSED)
                netc_tf32_stage<BN, BK, Shape::B_PITCH, Shape::THREADS>(b_tile, b, b_pitch, n0,
                                                                        n, k0, k);
            else
                netc_tf32_stage<BK, BN, Shape::B_PITCH, Shape::THREADS>(b_tile, b, b_pitch, k0,
                                                                        k, n0, n);
        }
    };

#pragma unroll
    for (int tile = 0; tile < STAGES - 1; ++tile) {
        if (tile < k_tiles)
            stage(tile, tile);
        netc_cp_async_commit();
    }
    int read_buffer = 0;            // k-tile `tile`'s
    int write_buffer = STAGES - 1;  // k-tile `tile + STAGES - 1`'s
    for (long long tile = 0; tile < k_tiles; ++tile) {
        netc_cp_async_wait<STAGES - 2>();
        if constexpr (VECTOR) {  // this thread's copies of k-tile `tile` have landed
            a_copies.round(a_tiles + read_buffer * Shape::A_STAGE);
            b_copies.round(b_tiles + read_buffer * Shape::B_STAGE);
        }
        __syncthreads();
        if (tile + STAGES - 1 < k_tiles)
            stage(tile + STAGES - 1, write_buffer);
        netc_cp_async_commit();
        write_buffer = write_buffer == STAGES - 1 ? 0 : write_buffer + 1;

        const float* a_tile = a_tiles + read_buffer * Shape::A_STAGE;
        const float* b_tile = b_tiles + read_buffer * Shape::B_STAGE;
        read_buffer = read_buffer == STAGES - 1 ? 0 : read_buffer + 1;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 8) {
            unsigned a_fragment[MI][4];
            unsigned b_fragment[NI][2];
#pragma unroll
            for (int i = 0; i < MI; ++i) {
                const int row = warp_m * Shape::WARP_M + i * 16 + lane % 16;
                netc_ldmatrix_x4<false>(a_fragment[i],
                                        a_tile + row * Shape::A_PITCH + kk + lane / 16 * 4);
            }
#pragma unroll
            for (int j = 0; j < NI; j += 2) {
                const int n_first = warp_n * Shape::WARP_N + j * 8;
                if (B_TRANSPOSED) {  // [N][K]: rows n, two n8 tiles x two k halves
                    unsigned r[4];
                    netc_ldmatrix_x4<false>(
                        r, b_tile + (n_first + lane % 8 + lane / 16 * 8) * Shape::B_PITCH + kk +
                               lane / 8 % 2 * 4);
                    b_fragment[j][0] = r[0];
                    b_fragment[j][1] = r[1];
                    b_fragment[j + 1][0] = r[2];
                    b_fragment[j + 1][1] = r[3];
                } else {  // [K][N]: k t and t + 4 of column g, for both n8 tiles
#pragma unroll
                    for (int h = 0; h < 2; ++h)
#pragma unroll
                        for (int r = 0; r < 2; ++r)
                            b_fragment[j + h][r] = __float_as_uint(
                                b_tile[(kk + lane % 4 + 4 * r) * Shape::B_PITCH + n_first +
                                       h * 8 + lane / 4]);
                }
            }
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NI; ++j)
                    netc_mma_m16n8k8_tf32(acc[i][j], a_fragment[i], b_fragment[j], acc[i][j]);
        }
    }
    netc_cp_async_wait<0>();  // only empty groups are left; nothing is in flight at exit
}
#endif  // NETC_HAS_MMA

// The batched GEMM of netc_gemm (gemm.cuh) for f32 on TF32 tensor cores: same arguments
// (split-K too), same grid (grid.x = ceil(M / BM) * matrices, grid.y = ceil(N / BN), grid.z =
// splits), WM * WN warps a block.
template <typename T, int BM, int BN, int BK, int WM, int WN, int STAGES, bool B_TRANSPOSED,
          bool HAS_BIAS, typename C, class Epilogue>
__device__ __forceinline__ void netc_gemm_tf32(const T* __restrict__ a, const T* __restrict__ b,
                                               const T* __restrict__ bias, C* __restrict__ c,
                                               long long m, long long n, long long k,
                                               long long inner_count, long long a_outer_stride,
                                               long long a_inner_stride,
                                               long long b_outer_stride,
                                               long long b_inner_stride,
                                               const Epilogue& epilogue,
                                               const NetcSplitK& split = NetcSplitK{0, 1})
{
    static_assert(sizeof(T) == 4, "the TF32 GEMM takes f32 tensors");
    using Shape = NetcTf32Shape<BM, BN, BK, WM, WN, STAGES, B_TRANSPOSED>;
#if NETC_HAS_MMA
    const NetcGemmBlock block = netc_gemm_block(m, BM, BN, inner_count);
    const long long m0 = block.m0;
    const long long n0 = block.n0;
    const NetcKRange range = netc_k_range(k, BK, split);

    NETC_DYNAMIC_SHARED(float, shared);
    float acc[Shape::MI][Shape::NI][4];
    const float* a_matrix = block.matrix_of(a, a_outer_stride, a_inner_stride) + range.begin;
    const float* b_matrix = block.matrix_of(b, b_outer_stride, b_inner_stride) +
                            range.begin * (B_TRANSPOSED ? 1 : n);
    // cp.async moves 16 bytes: rows of whole chunks, matrices 16-byte aligned.
    const bool vector = k % 4 == 0 && (B_TRANSPOSED || n % 4 == 0) &&
                        reinterpret_cast<unsigned long long>(a_matrix) % 16 == 0 &&
                        reinterpret_cast<unsigned long long>(b_matrix) % 16 == 0;
    if (vector)
        netc_tf32_mainloop<BM, BN, BK, WM, WN, STAGES, B_TRANSPOSED, true>(
            a_matrix, b_matrix, m0, n0, m, n, k, range.length, shared, acc);
    else
        netc_tf32_mainloop<BM, BN, BK, WM, WN, STAGES, B_TRANSPOSED, false>(
            a_matrix, b_matrix, m0, n0, m, n, k, range.length, shared, acc);

    const NetcRowMajorStore<T, HAS_BIAS, Epilogue, C> store{
        c, bias, n, block.matrix * m * n, epilogue};
    netc_mma_store<Shape>(acc, m0, n0, m, n, store);
#else
    // The SIMT kernel with this block's shape: (BM / TM) * (BN / TN) = WM * WN * 32 threads.
    netc_gemm<T, BM, BN, 8, Shape::WARP_M / 8, Shape::WARP_N / 4, B_TRANSPOSED, HAS_BIAS>(
        a, b, bias, c, m, n, k, inner_count, a_outer_stride, a_inner_stride, b_outer_stride,
        b_inner_stride, epilogue, split);
#endif
}
