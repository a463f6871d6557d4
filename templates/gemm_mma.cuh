// ---------------------------------------------------------------------------------------------
// gemm_mma.cuh: the tensor-core GEMM for 16-bit tensors (f16, bf16; float accumulators),
// C[M x N] = A[M x K] . B[K x N] (+ bias), batched as netc_gemm in gemm.cuh, whose launch,
// arguments and epilogue it shares.
//
// Design note.
//   Block:  one BM x BN tile of C for one matrix of the batch, WM x WN warps; each warp owns a
//           (BM / WM) x (BN / WN) sub-tile: MI x NI tiles of mma.sync m16n8k16, their float
//           accumulators in registers (4 a lane each).
//   K loop: k-tiles of BK (a multiple of 16) through a STAGES-deep ring of shared-memory
//           buffers filled by cp.async, 16 bytes a copy: while the warps multiply k-tile t,
//           the copies of k-tile t + STAGES - 1 are in flight. Each step waits for the oldest
//           group (cp.async.wait_group STAGES - 2), synchronises the block (the tile is now
//           everyone's, and the buffer the next copies overwrite has been read), issues the
//           next k-tile's copies, then multiplies.
//   Shared: A as [BM][BK + 8] and B as [BN][BK + 8] (dense's [N, K] weight) or [BK][BN + 8]
//           (matmul's [K, N]), 16-bit. The 8-element pad shifts consecutive rows by 16 bytes
//           modulo 128, so the 8 rows an ldmatrix reads at once fall in 8 distinct 4-bank
//           groups: no bank conflicts.
//   Fragments: ldmatrix.x4 loads a 16x16 A fragment (rows lane % 16, k half lane / 16) and two
//           n8 B fragments at once: without .trans from [N][K] rows, with .trans from [K][N].
//   Ragged: copies of rows past M (or N) and k-chunks past K are zero-filled (src-size 0).
//           A copy moves 8 consecutive elements, so cp.async needs rows whose length (K for A
//           and dense's B, N for matmul's B) is a multiple of 8 and 16-byte aligned matrices;
//           otherwise both operands are staged element by element with ordinary loads (same
//           tiles, same math): a second instantiation of the main loop, chosen per block at
//           run time, so that each main loop holds one way of staging.
//   Fallback: where there are no tensor cores (sm_75, and nvcc's host pass), the same launch
//           runs netc_gemm with a SIMT tile of the same block shape and thread count.
//   Split-K: as netc_gemm's (gemm.cuh): the operands from the split's first k on, whole
//           k-tiles of BK (16-byte aligned for cp.async), float partials through the store.
//   Shared with the tensor-core conv (conv2d_mma.cuh): the shape (NetcMmaShape), the A staging
//           (NetcMmaCopies, netc_mma_stage), the fragment loop of one k-tile
//           (netc_mma_tile_product) and the epilogue walk (netc_mma_store).
// ---------------------------------------------------------------------------------------------

// K_PAD: elements padding a k-contiguous row, 16 bytes (8 16-bit elements, 4 floats for TF32,
// gemm_tf32.cuh); K_STEP: the instruction's k (16, or 8 for TF32).
template <int BM, int BN, int BK, int WM, int WN, int STAGES, bool B_TRANSPOSED, int K_PAD = 8,
          int K_STEP = 16>
struct NetcMmaShape {
    static constexpr int WARP_M = BM / WM;  // a warp's rows of C
    static constexpr int WARP_N = BN / WN;  // and columns
    static constexpr int MI = WARP_M / 16;  // its mma tiles along m
    static constexpr int NI = WARP_N / 8;   // and along n
    static constexpr int THREADS = WM * WN * 32;
    static constexpr int A_PITCH = BK + K_PAD;  // elements
    static constexpr int B_PITCH = B_TRANSPOSED ? BK + K_PAD : BN + 8;
    static constexpr int A_STAGE = BM * A_PITCH;
    static constexpr int B_STAGE = (B_TRANSPOSED ? BN : BK) * B_PITCH;
    static constexpr int M_TILE = BM;
    static constexpr int K_TILE = BK;
    static constexpr int STAGE_COUNT = STAGES;
    static constexpr int WARPS_N = WN;
    static constexpr bool B_ROWS_ARE_N = B_TRANSPOSED;  // B staged [BN][..], else [BK][..]
    static_assert(BM % (16 * WM) == 0 && BN % (16 * WN) == 0 && BK % K_STEP == 0,
                  "a warp's tile is whole 16x16 steps (B fragments load two n8 tiles at once)");
    static_assert(STAGES >= 2, "the pipeline needs two buffers at least");
};

#if NETC_HAS_MMA
// This thread's cp.async copies of one operand's k-tiles: the ROWS x COLS tile (row-major,
// `pitch` elements a row, 16-byte chunks of 8 elements; chunk c of the tile is thread
// c % THREADS's) for rows or columns [x0, x0 + extent) of the matrix, whichever does not walk
// k; K_ALONG_COLS: k runs along the tile's columns (A and dense's B), else along its rows
// (matmul's B). Built once per block: each k-tile only checks k and advances the pointers.
template <int ROWS, int COLS, int PITCH, int THREADS, bool K_ALONG_COLS>
struct NetcMmaCopies {
    static constexpr int CHUNKS_PER_ROW = COLS / 8;
    static constexpr int CHUNKS = ROWS * CHUNKS_PER_ROW;
    static constexpr int PER_THREAD = (CHUNKS + THREADS - 1) / THREADS;
    const unsigned short* source[PER_THREAD];  // the chunk in the next k-tile
    int destination[PER_THREAD];               // its offset in the tile
    int k_offset[PER_THREAD];                  // its first k in the tile
    bool inside[PER_THREAD];                   // a chunk of the tile, in the matrix along x
    long long step;                            // elements from one k-tile to the next

    __device__ __forceinline__ NetcMmaCopies(const unsigned short* matrix, long long pitch,
                                             long long x0, long long x_end)
    {
#pragma unroll
        for (int i = 0; i < PER_THREAD; ++i) {
            const int chunk = i * THREADS + static_cast<int>(threadIdx.x);
            const int r = chunk / CHUNKS_PER_ROW;
            const int c = chunk % CHUNKS_PER_ROW * 8;
            inside[i] = chunk < CHUNKS && x0 + (K_ALONG_COLS ? r : c) < x_end;
            k_offset[i] = K_ALONG_COLS ? c : r;
            destination[i] = r * PITCH + c;
            source[i] = matrix + (K_ALONG_COLS ? (x0 + r) * pitch + c : r * pitch + x0 + c);
        }
        step = K_ALONG_COLS ? COLS : ROWS * pitch;
    }

    // Issues the copies of the k-tile starting at k0 (zero-filled past k) into `tile`.
    __device__ __forceinline__ void issue(unsigned short* tile, const unsigned short* matrix,
                                          long long k0, long long k)
    {
#pragma unroll
        for (int i = 0; i < PER_THREAD; ++i) {
            if (CHUNKS % THREADS != 0 && i * THREADS + static_cast<int>(threadIdx.x) >= CHUNKS)
                break;
            const bool copy = inside[i] && k0 + k_offset[i] < k;
            netc_cp_async_16(tile + destination[i], copy ? source[i] : matrix, copy ? 16u : 0u);
            source[i] += step;
        }
    }
};
#endif  // NETC_HAS_MMA

// Stages rows [row0, row0 + ROWS) x columns [col0, col0 + COLS) of a row-major matrix (`pitch`
// elements a row, `row_end` x `col_end` of them real) into tile[r * PITCH + c], zeros outside,
// element by element: for operands cp.async cannot copy (NetcMmaCopies).
template <int ROWS, int COLS, int PITCH, int THREADS>
__device__ __forceinline__ void netc_mma_stage(unsigned short* tile, const unsigned short* matrix,
                                               long long pitch, long long row0,
                                               long long row_end, long long col0,
                                               long long col_end)
{
    constexpr int CHUNKS_PER_ROW = COLS / 8;
    constexpr int CHUNKS = ROWS * CHUNKS_PER_ROW;
#pragma unroll
    for (int step = 0; step < CHUNKS; step += THREADS) {
        const int chunk = step + static_cast<int>(threadIdx.x);
        if (CHUNKS % THREADS != 0 && chunk >= CHUNKS)
            break;
        const int r = chunk / CHUNKS_PER_ROW;
        const int c = chunk % CHUNKS_PER_ROW * 8;
        const long long row = row0 + r;
        const long long col = col0 + c;
        unsigned short* destination = tile + r * PITCH + c;
#pragma unroll
        for (int e = 0; e < 8; ++e)
            destination[e] = row < row_end && col + e < col_end ? matrix[row * pitch + col + e] : 0;
    }
}

#if NETC_HAS_MMA
// The warp's part of one k-tile, shared by the GEMM and the implicit-GEMM conv: for each 16-deep
// k step, ldmatrix the warp's A fragments (MI of 16x16) and B fragments (NI of 16x8) from the
// staged tiles (A [BM][A_PITCH]; B [BN][B_PITCH] when Shape::B_ROWS_ARE_N, else [BK][B_PITCH])
// and accumulate their mma.sync products into acc (layout: netc_mma_mainloop).
template <bool BF16, class Shape>
__device__ __forceinline__ void netc_mma_tile_product(const unsigned short* a_tile,
                                                      const unsigned short* b_tile,
                                                      float (&acc)[Shape::MI][Shape::NI][4])
{
    constexpr int MI = Shape::MI;
    constexpr int NI = Shape::NI;
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int warp_m = warp / Shape::WARPS_N;
    const int warp_n = warp % Shape::WARPS_N;
#pragma unroll
    for (int kk = 0; kk < Shape::K_TILE; kk += 16) {
        unsigned a_fragment[MI][4];
        unsigned b_fragment[NI][2];
#pragma unroll
        for (int i = 0; i < MI; ++i) {
            const int row = warp_m * Shape::WARP_M + i * 16 + lane % 16;
            netc_ldmatrix_x4<false>(a_fragment[i],
                                    a_tile + row * Shape::A_PITCH + kk + lane / 16 * 8);
        }
#pragma unroll
        for (int j = 0; j < NI; j += 2) {
            unsigned r[4];
            const int n_first = warp_n * Shape::WARP_N + j * 8;
            if (Shape::B_ROWS_ARE_N)  // [N][K]: rows n, two n8 tiles x two k halves
                netc_ldmatrix_x4<false>(
                    r, b_tile + (n_first + lane % 8 + lane / 16 * 8) * Shape::B_PITCH + kk +
                           lane / 8 % 2 * 8);
            else  // [K][N]: rows k, transposed on the way in
                netc_ldmatrix_x4<true>(
                    r, b_tile + (kk + lane % 8 + lane / 8 % 2 * 8) * Shape::B_PITCH +
                           n_first + lane / 16 * 8);
            b_fragment[j][0] = r[0];
            b_fragment[j][1] = r[1];
            b_fragment[j + 1][0] = r[2];
            b_fragment[j + 1][1] = r[3];
        }
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
            for (int j = 0; j < NI; ++j)
                netc_mma_m16n8k16<BF16>(acc[i][j], a_fragment[i], b_fragment[j], acc[i][j]);
    }
}

template <class Shape>
__device__ __forceinline__ void netc_mma_zero(float (&acc)[Shape::MI][Shape::NI][4])
{
#pragma unroll
    for (int i = 0; i < Shape::MI; ++i)
#pragma unroll
        for (int j = 0; j < Shape::NI; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r)
                acc[i][j][r] = 0.0f;
}
#endif  // NETC_HAS_MMA

// Hands each element of C this lane holds (acc, as netc_mma_mainloop lays it out) inside the
// m x n matrix to store(row, column, value): the GEMM's and the conv's epilogue.
template <class Shape, class Store>
__device__ __forceinline__ void netc_mma_store(const float (&acc)[Shape::MI][Shape::NI][4],
                                               long long m0, long long n0, long long m,
                                               long long n, const Store& store)
{
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const long long row0 = m0 + warp / Shape::WARPS_N * Shape::WARP_M + lane / 4;
    const long long col0 = n0 + warp % Shape::WARPS_N * Shape::WARP_N + lane % 4 * 2;
#pragma unroll
    for (int i = 0; i < Shape::MI; ++i)
#pragma unroll
        for (int j = 0; j < Shape::NI; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const long long row = row0 + i * 16 + r / 2 * 8;
                const long long col = col0 + j * 8 + r % 2;
                if (row < m && col < n)
                    store(row, col, acc[i][j][r]);
            }
}

#if NETC_HAS_MMA
// acc[i][j][r] = the element (m0 + warp_m * WARP_M + i * 16 + lane / 4 + 8 * (r / 2),
// n0 + warp_n * WARP_N + j * 8 + 2 * (lane % 4) + r % 2) of A . B for this lane's warp.
// VECTOR: both operands are copied by cp.async (NetcMmaCopies), else staged element by element
// (netc_mma_stage); the caller decides, so that the main loop holds one way of staging only.
// `a` and `b` start at the first k summed, `k` of them (split-K: a split's run), in rows of
// `k_pitch` elements (K) where k runs along them.
template <bool BF16, int BM, int BN, int BK, int WM, int WN, int STAGES, bool B_TRANSPOSED,
          bool VECTOR>
__device__ __forceinline__ void netc_mma_mainloop(
    const unsigned short* a, const unsigned short* b, long long m0, long long n0, long long m,
    long long n, long long k_pitch, long long k, unsigned short* shared,
    float (&acc)[NetcMmaShape<BM, BN, BK, WM, WN, STAGES, B_TRANSPOSED>::MI]
                [NetcMmaShape<BM, BN, BK, WM, WN, STAGES, B_TRANSPOSED>::NI][4])
{
    using Shape = NetcMmaShape<BM, BN, BK, WM, WN, STAGES, B_TRANSPOSED>;
    unsigned short* a_tiles = shared;                             // [STAGES][BM][A_PITCH]
    unsigned short* b_tiles = shared + STAGES * Shape::A_STAGE;  // [STAGES][...][B_PITCH]
    const long long b_pitch = B_TRANSPOSED ? k_pitch : n;
    netc_mma_zero<Shape>(acc);

    const long long k_tiles = (k + BK - 1) / BK;
    NetcMmaCopies<BM, BK, Shape::A_PITCH, Shape::THREADS, true> a_copies(a, k_pitch, m0, m);
    NetcMmaCopies<B_TRANSPOSED ? BN : BK, B_TRANSPOSED ? BK : BN, Shape::B_PITCH, Shape::THREADS,
                  B_TRANSPOSED>
        b_copies(b, b_pitch, n0, n);
    // Fills buffer `buffer` with k-tile `tile` (the tiles are staged in order).
    auto stage = [&](long long tile, int buffer) {
        const long long k0 = tile * BK;
        unsigned short* a_tile = a_tiles + buffer * Shape::A_STAGE;
        unsigned short* b_tile = b_tiles + buffer * Shape::B_STAGE;
        if constexpr (VECTOR) {
            a_copies.issue(a_tile, a, k0, k);
            b_copies.issue(b_tile, b, k0, k);
        } else {
            netc_mma_stage<BM, BK, Shape::A_PITCH, Shape::THREADS>(a_tile, a, k_pitch, m0, m,
                                                                   k0, k);
            if (B_TRANSPOSED)
                netc_mma_stage<BN, BK, Shape::B_PITCH, Shape::THREADS>(b_tile, b, b_pitch, n0, n,
                                                                       k0, k);
            else
                netc_mma_stage<BK, BN, Shape::B_PITCH, Shape::THREADS>(b_tile, b, b_pitch, k0, k,
                                                                       n0, n);
        }
    };

#pragma unroll
    for (int tile = 0; tile < STAGES - 1; ++tile) {
        if (tile < k_tiles)
            stage(tile, tile);
        netc_cp_async_commit();
    }
    int read_buffer = 0;              // k-tile `tile`'s
    int write_buffer = STAGES - 1;    // k-tile `tile + STAGES - 1`'s
    for (long long tile = 0; tile < k_tiles; ++tile) {
        netc_cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (tile + STAGES - 1 < k_tiles)
            stage(tile + STAGES - 1, write_buffer);
        netc_cp_async_commit();
        write_buffer = write_buffer == STAGES - 1 ? 0 : write_buffer + 1;

        netc_mma_tile_product<BF16, Shape>(a_tiles + read_buffer * Shape::A_STAGE,
                                           b_tiles + read_buffer * Shape::B_STAGE, acc);
        read_buffer = read_buffer == STAGES - 1 ? 0 : read_buffer + 1;
    }
    netc_cp_async_wait<0>();  // only empty groups are left; nothing is in flight at exit
}
#endif  // NETC_HAS_MMA

template <typename T> struct NetcIsBf16 { static constexpr bool value = false; };
template <> struct NetcIsBf16<netc_bf16> { static constexpr bool value = true; };

// The batched GEMM of netc_gemm (gemm.cuh) on tensor cores: same arguments (split-K too), same
// grid (grid.x = ceil(M / BM) * matrices, grid.y = ceil(N / BN), grid.z = splits), WM * WN
// warps a block.
template <typename T, int BM, int BN, int BK, int WM, int WN, int STAGES, bool B_TRANSPOSED,
          bool HAS_BIAS, typename C, class Epilogue>
__device__ __forceinline__ void netc_gemm_mma(const T* __restrict__ a, const T* __restrict__ b,
                                              const T* __restrict__ bias, C* __restrict__ c,
                                              long long m, long long n, long long k,
                                              long long inner_count, long long a_outer_stride,
                                              long long a_inner_stride, long long b_outer_stride,
                                              long long b_inner_stride, const Epilogue& epilogue,
                                              const NetcSplitK& split = NetcSplitK{0, 1})
{
    static_assert(sizeof(T) == 2, "the tensor-core GEMM takes 16-bit tensors");
    using Shape = NetcMmaShape<BM, BN, BK, WM, WN, STAGES, B_TRANSPOSED>;
#if NETC_HAS_MMA
    const NetcGemmBlock block = netc_gemm_block(m, BM, BN, inner_count);
    const long long m0 = block.m0;
    const long long n0 = block.n0;
    const NetcKRange range = netc_k_range(k, BK, split);

    NETC_DYNAMIC_SHARED(unsigned short, shared);
    float acc[Shape::MI][Shape::NI][4];
    const unsigned short* a_matrix = reinterpret_cast<const unsigned short*>(
        block.matrix_of(a, a_outer_stride, a_inner_stride) + range.begin);
    const unsigned short* b_matrix = reinterpret_cast<const unsigned short*>(
        block.matrix_of(b, b_outer_stride, b_inner_stride) +
        range.begin * (B_TRANSPOSED ? 1 : n));
    // cp.async moves 16 bytes: rows of whole chunks, matrices 16-byte aligned.
    const bool vector = k % 8 == 0 && (B_TRANSPOSED || n % 8 == 0) &&
                        reinterpret_cast<unsigned long long>(a_matrix) % 16 == 0 &&
                        reinterpret_cast<unsigned long long>(b_matrix) % 16 == 0;
    if (vector)
        netc_mma_mainloop<NetcIsBf16<T>::value, BM, BN, BK, WM, WN, STAGES, B_TRANSPOSED, true>(
            a_matrix, b_matrix, m0, n0, m, n, k, range.length, shared, acc);
    else
        netc_mma_mainloop<NetcIsBf16<T>::value, BM, BN, BK, WM, WN, STAGES, B_TRANSPOSED, false>(
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
