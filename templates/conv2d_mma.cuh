// ---------------------------------------------------------------------------------------------
// conv2d_mma.cuh: conv2d for 16-bit tensors (f16, bf16; float accumulators) as an implicit GEMM
// on tensor cores: netc_conv2d's arguments, grid and GEMM view (conv2d.cuh), gemm_mma.cuh's
// tiles, fragment loop (netc_mma_tile_product) and A staging.
//
// Design note.
//   GEMM:   per group g, C[M x N] = A[M x K] . B[K x N] with M = out_channels / groups,
//           N = images x out pixels, K = in_channels / groups x kh x kw (conv2d.cuh); A is the
//           weight, row-major with k contiguous; B(k, n) the im2col view of the NCHW input.
//   Block:  one BM x BN tile of C of one group, WM x WN warps of mma.sync m16n8k16 tiles, as
//           netc_gemm_mma.
//   A:      a STAGES-deep ring of [BM][BK + 8] tiles filled by cp.async (16 bytes, 8 weights)
//           when K % 8 == 0 and the weight is 16-byte aligned, else element by element
//           (netc_mma_stage): gemm_mma.cuh's staging of dense's A, unchanged.
//   B:      not 16-byte contiguous (a k-run walks channels and kernel taps, an n-run output
//           pixels, with padding between), so cp.async cannot copy it: it is gathered into
//           registers with ordinary loads and stored to shared memory by the thread itself
//           (register prefetch). Thread t owns pixel n0 + t % BN (and every THREADS-th after
//           it when BN > THREADS) and a run of RUN consecutive k from (t / BN) * RUN: the
//           run's first tap is split into (channel, dy, dx) by one 32-bit division pair a
//           k-tile, the others follow by increments (dx, carrying into dy and the channel's
//           offset); a warp's loads are consecutive pixels (coalesced for stride 1).
//           Staged as [BN][BK + 8] (n-major, as dense's B: ldmatrix without .trans), a run
//           is RUN / 8 16-byte stores, rows 16 bytes apart modulo 128: no bank conflicts for
//           the stores or for ldmatrix.
//   Cost:   the gather is most of the main loop (on the 128 x 128 tile ~530 instructions a
//           k-tile, 32 of them HMMA); a per-k-tile tap table in shared memory was tried and
//           cost more (an LDS and the table's upkeep per element, spills).
//   K loop: one barrier a k-tile. Step t: wait for A tile t's copies, barrier (B tile t is
//           stored, and every warp is done with step t - 1's buffers), issue A tile
//           t + STAGES - 1's copies, issue B tile t + 1's loads into registers, multiply
//           tile t, store the registers to B's other buffer (two: it was last read at step
//           t - 1). The loads' latency hides behind the MMAs.
//   Shared: STAGES x [BM][BK + 8] + 2 x [BN][BK + 8] 16-bit elements: within MmaTile's
//           shared_bytes (B gets STAGES >= 2 buffers there).
//   Bytes:  each weight is read ceil(N / BN) times; each input element about
//           kh * kw / (stride_h * stride_w) * ceil(M / BM) times; each output written once.
//   Limits: THREADS % BN == 0 or BN % THREADS == 0, and RUN % 8 == 0 (whole 16-byte stores;
//           netc.codegen.kernels.conv_mma_misfit refuses other tiles). One image's input,
//           in_channels x height x width, and K hold fewer than 2^31 elements (32-bit
//           offsets within an image; the image's own offset is 64-bit).
//   Groups: any (grid.z), whatever M per group: a group of fewer than 16 output channels
//           leaves rows of the 16-row mma tiles idle, still fewer instructions than the SIMT
//           kernel's FFMAs. Depthwise convs have their own kernel and never come here.
//   Fallback: where there are no tensor cores (sm_75, nvcc's host pass), netc_conv2d with a
//           SIMT tile of the same block shape and thread count, as netc_gemm_mma does.
//   Split-K: as conv2d.cuh's: the weight from the split's first k on, the gather's runs offset
//           by it, float partials through the store.
// ---------------------------------------------------------------------------------------------

#if NETC_HAS_MMA
// This thread's share of B's k-tiles (see the design note): `load` gathers a k-tile into
// registers, `store` writes them to a [BN][PITCH] tile.
template <int BN, int BK, int PITCH, int THREADS>
struct NetcIm2colRuns {
    static constexpr int COLUMNS = BN > THREADS ? BN / THREADS : 1;  // pixels of a thread
    static constexpr int RUN = BK / (THREADS > BN ? THREADS / BN : 1);  // its k a k-tile
    static_assert(THREADS % BN == 0 || BN % THREADS == 0, "a thread's pixels are n % THREADS");
    static_assert(RUN % 8 == 0 && RUN > 0, "a run is whole 16-byte stores");

    const unsigned short* x;  // the group's first input channel of image 0
    const unsigned short* corner[COLUMNS];  // channel 0 under kernel tap (0, 0) (may lie
                                            // outside x: only offsets inside are read)
    int top[COLUMNS], left[COLUMNS];  // the input row and column under tap (0, 0)
    int first;                        // the run's first k in a k-tile
    int k_begin;                      // the first k gathered (split-K; else 0)
    int height, width, kernel_w, dilation_h, dilation_w, window;
    int row_end, column_end;          // dx past a kernel row's last tap, dy past its last row
    int row_step, channel_step;       // offset from the last tap of a row (of a channel) on
    int k_end;                        // past the last k gathered (K, or the split's end)
    unsigned values[COLUMNS][RUN / 2];  // the gathered run, two elements a register

    __device__ __forceinline__ NetcIm2colRuns(const unsigned short* group_x,
                                              const NetcConvGeometry& g,
                                              const NetcPixelCursor& cursor, long long n0,
                                              long long n, long long k_begin, long long k_end)
        : x(group_x), first(static_cast<int>(threadIdx.x) / BN * RUN),
          k_begin(static_cast<int>(k_begin)),
          height(static_cast<int>(g.height)), width(static_cast<int>(g.width)),
          kernel_w(g.kernel_w), dilation_h(g.dilation_h), dilation_w(g.dilation_w),
          window(g.kernel_h * g.kernel_w), row_end(g.kernel_w * g.dilation_w),
          column_end(g.kernel_h * g.dilation_h),
          row_step(g.dilation_h * width - g.kernel_w * g.dilation_w),
          channel_step(height * width - g.kernel_h * g.dilation_h * width),
          k_end(static_cast<int>(k_end))
    {
#pragma unroll
        for (int c = 0; c < COLUMNS; ++c) {
            const long long pixel = n0 + static_cast<int>(threadIdx.x) % BN + c * THREADS;
            long long image;
            int within;
            cursor.locate(pixel, image, within);
            const int out_y = within / static_cast<int>(g.out_width);
            const int out_x = within - out_y * static_cast<int>(g.out_width);
            // Past the last pixel: a row no tap reaches, so every element is padding.
            top[c] = pixel < n ? out_y * g.stride_h - g.pad_top : -(1 << 30);
            left[c] = out_x * g.stride_w - g.pad_left;
            corner[c] = x + (pixel < n ? image * g.in_channels * g.height * g.width +
                                             static_cast<long long>(top[c]) * width + left[c]
                                       : 0);
        }
    }

    // Gathers this thread's run of the k-tile starting at k0 (from k_begin; zeros in the
    // padding, past k_end).
    __device__ __forceinline__ void load(long long k0)
    {
        const int start = k_begin + static_cast<int>(k0) + first;
        const int count = k_end - start;  // of the run's elements, the first `count` are in K
        const int channel = start / window;
        const int tap = start - channel * window;
        const int kernel_y = tap / kernel_w;
        int dy = kernel_y * dilation_h;
        int dx = (tap - kernel_y * kernel_w) * dilation_w;
        int offset = (channel * height + dy) * width + dx;
#pragma unroll
        for (int e = 0; e < RUN; ++e) {
#pragma unroll
            for (int c = 0; c < COLUMNS; ++c) {
                const bool inside = e < count &&
                                    static_cast<unsigned>(top[c] + dy) <
                                        static_cast<unsigned>(height) &&
                                    static_cast<unsigned>(left[c] + dx) <
                                        static_cast<unsigned>(width);
                const unsigned value = inside ? corner[c][offset] : 0u;
                values[c][e / 2] = e % 2 == 0 ? value : values[c][e / 2] | value << 16;
            }
            // The next tap: kx + 1, carrying into ky, then into the channel.
            dx += dilation_w;
            offset += dilation_w;
            if (dx == row_end) {
                dx = 0;
                dy += dilation_h;
                offset += row_step;
                if (dy == column_end) {
                    dy = 0;
                    offset += channel_step;
                }
            }
        }
    }

    __device__ __forceinline__ void store(unsigned short* tile) const
    {
#pragma unroll
        for (int c = 0; c < COLUMNS; ++c) {
            unsigned short* row =
                tile + (static_cast<int>(threadIdx.x) % BN + c * THREADS) * PITCH + first;
#pragma unroll
            for (int q = 0; q < RUN / 8; ++q)
                *reinterpret_cast<uint4*>(row + q * 8) =
                    make_uint4(values[c][4 * q], values[c][4 * q + 1], values[c][4 * q + 2],
                               values[c][4 * q + 3]);
        }
    }
};

// acc as netc_mma_mainloop's, for A = `weight` (the group's [m][k], rows of `k_pitch`, from
// the first k summed on, `k` of them) and B gathered by `b`.
// VECTOR: A is copied by cp.async, else staged element by element (one way a main loop).
template <bool BF16, class Shape, bool VECTOR, class Gather>
__device__ __forceinline__ void netc_conv2d_mma_mainloop(const unsigned short* weight,
                                                         long long m0, long long m,
                                                         long long k_pitch, long long k,
                                                         Gather& b, unsigned short* shared,
                                                         float (&acc)[Shape::MI][Shape::NI][4])
{
    constexpr int BM = Shape::M_TILE;
    constexpr int BK = Shape::K_TILE;
    constexpr int STAGES = Shape::STAGE_COUNT;
    unsigned short* a_tiles = shared;                             // [STAGES][BM][A_PITCH]
    unsigned short* b_tiles = shared + STAGES * Shape::A_STAGE;  // [2][BN][B_PITCH]
    netc_mma_zero<Shape>(acc);

    const long long k_tiles = (k + BK - 1) / BK;
    NetcMmaCopies<BM, BK, Shape::A_PITCH, Shape::THREADS, true> a_copies(weight, k_pitch, m0,
                                                                         m);
    auto stage_a = [&](long long tile, int buffer) {
        unsigned short* a_tile = a_tiles + buffer * Shape::A_STAGE;
        if constexpr (VECTOR)
            a_copies.issue(a_tile, weight, tile * BK, k);
        else
            netc_mma_stage<BM, BK, Shape::A_PITCH, Shape::THREADS>(a_tile, weight, k_pitch, m0,
                                                                   m, tile * BK, k);
    };

#pragma unroll
    for (int tile = 0; tile < STAGES - 1; ++tile) {
        if (tile < k_tiles)
            stage_a(tile, tile);
        netc_cp_async_commit();
    }
    b.load(0);
    b.store(b_tiles);
    int read_buffer = 0;            // A's k-tile `tile`
    int write_buffer = STAGES - 1;  // A's k-tile `tile + STAGES - 1`
    for (long long tile = 0; tile < k_tiles; ++tile) {
        netc_cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (tile + STAGES - 1 < k_tiles)
            stage_a(tile + STAGES - 1, write_buffer);
        netc_cp_async_commit();
        write_buffer = write_buffer == STAGES - 1 ? 0 : write_buffer + 1;
        const bool next = tile + 1 < k_tiles;
        if (next)
            b.load((tile + 1) * BK);

        netc_mma_tile_product<BF16, Shape>(a_tiles + read_buffer * Shape::A_STAGE,
                                           b_tiles + (tile & 1) * Shape::B_STAGE, acc);
        read_buffer = read_buffer == STAGES - 1 ? 0 : read_buffer + 1;
        if (next)
            b.store(b_tiles + ((tile + 1) & 1) * Shape::B_STAGE);
    }
    netc_cp_async_wait<0>();  // only empty groups are left; nothing is in flight at exit
}
#endif  // NETC_HAS_MMA

// netc_conv2d (conv2d.cuh) on tensor cores: same arguments (split-K too), same grid
// (grid.x = ceil(N / BN), grid.y = ceil(M / BM), grid.z = groups [* splits]), WM * WN warps a
// block.
template <typename T, int BM, int BN, int BK, int WM, int WN, int STAGES, bool HAS_BIAS,
          typename C, class Epilogue>
__device__ __forceinline__ void netc_conv2d_mma(const T* __restrict__ x,
                                                const T* __restrict__ weight,
                                                const T* __restrict__ bias, C* __restrict__ y,
                                                long long images,
                                                const NetcConvGeometry& geometry,
                                                const Epilogue& epilogue,
                                                const NetcSplitK& split = NetcSplitK{0, 1})
{
    static_assert(sizeof(T) == 2, "the tensor-core conv takes 16-bit tensors");
    using Shape = NetcMmaShape<BM, BN, BK, WM, WN, STAGES, true>;  // B staged [BN][BK + 8]
#if NETC_HAS_MMA
    const NetcConvBlock block(geometry, images, BM, BN);
    const long long m = block.m, n = block.n, k = block.k, m0 = block.m0, n0 = block.n0;
    const NetcKRange range = netc_k_range(k, BK, split);
    const NetcPixelCursor cursor(n0, block.pixels);

    const unsigned short* a =
        reinterpret_cast<const unsigned short*>(weight) + block.weight_offset() + range.begin;
    NetcIm2colRuns<BN, BK, Shape::B_PITCH, Shape::THREADS> b(
        reinterpret_cast<const unsigned short*>(x) + block.input_offset(geometry),
        geometry, cursor, n0, n, range.begin, range.begin + range.length);

    NETC_DYNAMIC_SHARED(unsigned short, shared);
    float acc[Shape::MI][Shape::NI][4];
    // cp.async moves 16 bytes: weight rows of whole chunks, 16-byte aligned.
    if (k % 8 == 0 && reinterpret_cast<unsigned long long>(a) % 16 == 0)
        netc_conv2d_mma_mainloop<NetcIsBf16<T>::value, Shape, true>(a, m0, m, k, range.length,
                                                                    b, shared, acc);
    else
        netc_conv2d_mma_mainloop<NetcIsBf16<T>::value, Shape, false>(a, m0, m, k, range.length,
                                                                     b, shared, acc);

    const auto store = block.store<HAS_BIAS>(y, bias, geometry, cursor, epilogue);
    netc_mma_store<Shape>(acc, m0, n0, m, n, store);
#else
    // The SIMT kernel with this block's shape: (BM / TM) * (BN / TN) = WM * WN * 32 threads.
    netc_conv2d<T, BM, BN, 8, Shape::WARP_M / 8, Shape::WARP_N / 4, HAS_BIAS>(
        x, weight, bias, y, images, geometry, epilogue, split);
#endif
}
