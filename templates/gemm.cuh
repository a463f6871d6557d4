// ---------------------------------------------------------------------------------------------
// gemm.cuh: warp-tiled, double-buffered shared-memory GEMM, C[M x N] = A[M x K] . B[K x N]
// (+ bias), batched.
//
// Design note.
//   Block:  computes one BM x BN tile of C for one matrix of the batch. It walks K in k-tiles
//           of BK: the block stages an A tile (BK x BM) and a B tile (BK x BN) in shared
//           memory, converted to float, and every thread multiplies out of shared memory.
//   Thread: THREADS = (BM / TM) * (BN / TN) threads, each a TM x TN register tile of float
//           accumulators. Its rows come in TM / VM groups of VM consecutive rows (VM = 4, 2 or
//           1, whatever divides TM), group g at g * BM / (TM / VM); likewise its columns (VN).
//           A k-step reads each group with one 128-bit (64-, 32-bit) shared load, so a thread
//           issues TM / 4 + TN / 4 loads for TM * TN FFMA (8 x 8: 4 loads, 64 FFMA).
//   Warps:  where the thread grid allows, the 32 lanes of a warp form a 4 x 8 grid of
//           register tiles (else a row of threads): a k-step's fragment loads of a warp touch
//           4 distinct A and 8 distinct B vectors, one shared-memory wavefront each.
//   Pipeline: two shared buffers. While the block multiplies k-tile t out of one, each thread
//           holds its share of k-tile t + 1 in registers (loaded before the math, so the
//           global latency hides behind it) and writes it into the other buffer after the
//           math: one barrier per k-tile.
//   Staging: aligned operands whose rows are whole 16-byte vectors (K % 4 == 0 for A and
//           dense's [N, K] B, N % 4 == 0 for matmul's [K, N] B) are read with 128-bit loads,
//           4 elements along the contiguous index (NetcGemmVectorStager); anything else, and
//           any source that is not a plain matrix (conv2d.cuh's im2col), element by element
//           (NetcGemmStager). The choice is made per block at run time between two
//           instantiations of the main loop, so that each main loop holds one way of staging.
//   Shared: 2 * BK * (A_PITCH + B_PITCH) floats, a pitch being the extent rounded up to 4
//           plus 4: vectors stay 16-byte aligned, and the 4 k-rows a thread writes from one
//           128-bit load of a K-contiguous operand fall in different banks.
//   Ragged: any M, N, K. Staging writes zeros outside the matrix, so the inner product needs
//           no bounds checks; the epilogue stores only inside C.
//   Bytes:  each element of A is read from global memory ceil(N / BN) times (once per column
//           tile), each element of B ceil(M / BM) times, C is written once. From shared
//           memory, each staged A element is read BN / TN times and each B element BM / TM
//           times per k-step.
//   Split-K: a GEMM whose tiles launch fewer blocks than the GPU has SMs may split K over
//           grid.z (NetcSplitK, below; the tensor-core and conv kernels alike): each split's
//           block accumulates a run of whole k-tiles and stores its raw float sums, no bias
//           or epilogue, into its own float copy of the output (the partials, through the
//           kernel's own store); netc_split_k_reduce then adds the splits in order 0, 1, ...
//           (deterministic, no atomics) and applies the bias, the epilogue and the store.
//           Partials cost 2 x splits x |C| floats of traffic.
//
// The main loop is generic over where A and B come from (a "source" of the element at (x, k),
// where x is m for A and n for B): a plain strided matrix here, an im2col view of the input in
// conv2d.cuh. `K_CONTIGUOUS` tells the staging which index to run fastest across threads, so
// that global reads are coalesced for either memory order.
// ---------------------------------------------------------------------------------------------

__host__ __device__ constexpr int netc_gcd(int a, int b) { return b == 0 ? a : netc_gcd(b, a % b); }

// The widest vector (4, 2 or 1 floats) whose length divides `extent`.
__host__ __device__ constexpr int netc_vector_width(int extent)
{
    return extent % 4 == 0 ? 4 : extent % 2 == 0 ? 2 : 1;
}

template <int BM, int BN, int BK, int TM, int TN>
struct NetcGemmShape {
    static_assert(BM % TM == 0 && BN % TN == 0, "the register tile must divide the block tile");
    static constexpr int THREADS_M = BM / TM;
    static constexpr int THREADS_N = BN / TN;
    static constexpr int THREADS = THREADS_M * THREADS_N;
    static constexpr int VM = netc_vector_width(TM);  // consecutive rows a thread owns
    static constexpr int VN = netc_vector_width(TN);  // consecutive columns
    // The lanes of a warp as a LANES_M x LANES_N grid of threads.
    static constexpr bool WARP_TILED = THREADS_M % 4 == 0 && THREADS_N % 8 == 0;
    static constexpr int LANES_M = WARP_TILED ? 4 : 1;
    static constexpr int LANES_N = WARP_TILED ? 8 : THREADS_N;
    static constexpr int A_PITCH = (BM + 3) / 4 * 4 + 4;
    static constexpr int B_PITCH = (BN + 3) / 4 * 4 + 4;
    static constexpr int A_STAGE = BK * A_PITCH;  // floats of one buffer
    static constexpr int B_STAGE = BK * B_PITCH;
    static constexpr int SHARED_FLOATS = 2 * (A_STAGE + B_STAGE);

    // This thread's first row (column) of C in the block tile: rows row() + g * BM / (TM / VM)
    // + v for groups g < TM / VM and v < VM.
    __device__ __forceinline__ static int row()
    {
        const int warp = threadIdx.x / (LANES_M * LANES_N);
        const int lane = threadIdx.x % (LANES_M * LANES_N);
        return (warp / (THREADS_N / LANES_N) * LANES_M + lane / LANES_N) * VM;
    }
    __device__ __forceinline__ static int col()
    {
        const int warp = threadIdx.x / (LANES_M * LANES_N);
        const int lane = threadIdx.x % (LANES_M * LANES_N);
        return (warp % (THREADS_N / LANES_N) * LANES_N + lane % LANES_N) * VN;
    }
    // Row (column) i of the register tile, relative to row() (col()).
    __host__ __device__ static constexpr int m_of(int i) { return i / VM * THREADS_M * VM + i % VM; }
    __host__ __device__ static constexpr int n_of(int j) { return j / VN * THREADS_N * VN + j % VN; }
};

// Sources -------------------------------------------------------------------------------------
//
// A source hands out the elements of A (x = m) or B (x = n) in parts that a thread computes
// once: `column(x)` what depends only on x, `tap(k)` what depends only on k, and
// `at(column, tap)` reads one element (called only for x < x_end and k < k_end).
// `advance(tap, by)` moves a tap k to k + j, `by` being tap(j): each thread stages the same k
// lanes of every k-tile, so it carries its taps from one lane and k-tile to the next instead
// of recomputing them. A source with only `column(x)` and `at(column, k)`
// (conv_transpose2d.cuh's) gets taps that are k itself (NetcTapsOf).

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
    typedef long long Tap;  // the offset of k from element (x, 0)

    __device__ __forceinline__ Column column(long long x) const
    {
        return {data + (K_CONTIGUOUS ? x * pitch : x)};
    }
    __device__ __forceinline__ Tap tap(long long k) const { return K_CONTIGUOUS ? k : k * pitch; }
    __device__ __forceinline__ void advance(Tap& tap, Tap by) const { tap += by; }
    __device__ __forceinline__ float at(const Column& column, Tap tap) const
    {
        return netc_load(column.first + tap);
    }
};

template <class...> struct NetcVoid { typedef void type; };

// The taps of a source: its own (Source::Tap), or k for a source read as at(column, k).
template <class Source, class = void>
struct NetcTapsOf {
    typedef long long Tap;
    __device__ __forceinline__ static Tap tap(const Source&, long long k) { return k; }
    __device__ __forceinline__ static void advance(const Source&, Tap& k, Tap by) { k += by; }
};

template <class Source>
struct NetcTapsOf<Source, typename NetcVoid<typename Source::Tap>::type> {
    typedef typename Source::Tap Tap;
    __device__ __forceinline__ static Tap tap(const Source& source, long long k)
    {
        return source.tap(k);
    }
    __device__ __forceinline__ static void advance(const Source& source, Tap& tap,
                                                   const Tap& by)
    {
        source.advance(tap, by);
    }
};

// Stagers -------------------------------------------------------------------------------------
//
// A stager is one thread's share of staging an operand's k-tiles: `fetch(k0, k)` loads the
// k-tile starting at k0 (the one after the previous fetch's) into registers, `store(tile)`
// writes them into a shared buffer, tile[kk * PITCH + x] for kk < BK, x < EXTENT, zero outside
// the matrix.

// How many of the k-tile at k0's BK k lie below k: one 64-bit comparison a k-tile, 32-bit
// ones per element.
template <int BK>
__device__ __forceinline__ int netc_k_left(long long k0, long long k)
{
    return k - k0 < BK ? static_cast<int>(k - k0) : BK;
}

// Element by element from any source. The threads are split into FAST lanes along the index
// that is contiguous in memory (so a warp's reads are coalesced) and THREADS / FAST along the
// other; FAST divides both THREADS and that extent, so every element is staged exactly once.
// A thread's columns and k lanes are fixed: it looks its columns up once and carries one tap,
// its first k lane's, from lane to lane (K_LANES apart) and k-tile to k-tile (BK apart).
template <int EXTENT, int BK, int PITCH, int THREADS, class Source>
struct NetcGemmStager {
    typedef NetcTapsOf<Source> Taps;
    static constexpr bool K_FAST = Source::K_CONTIGUOUS;
    static constexpr int FAST = netc_gcd(THREADS, K_FAST ? BK : EXTENT);
    static constexpr int X_LANES = K_FAST ? THREADS / FAST : FAST;
    static constexpr int K_LANES = K_FAST ? FAST : THREADS / FAST;
    static constexpr int X_SLOTS = (EXTENT + X_LANES - 1) / X_LANES;
    static constexpr int K_SLOTS = (BK + K_LANES - 1) / K_LANES;
    const Source& source;
    int x_lane, k_lane;
    typename Source::Column columns[X_SLOTS];
    bool inside[X_SLOTS];  // the column is in the matrix
    typename Taps::Tap first;                // k0 + k_lane of the next k-tile
    typename Taps::Tap lane_step, tile_step;  // K_LANES and BK along k
    float staged[X_SLOTS][K_SLOTS];

    // Slots past the tile exist only where the lanes do not divide it.
    __device__ __forceinline__ bool x_slot(int s) const
    {
        return EXTENT % X_LANES == 0 || s * X_LANES + x_lane < EXTENT;
    }
    __device__ __forceinline__ bool k_slot(int s) const
    {
        return BK % K_LANES == 0 || s * K_LANES + k_lane < BK;
    }

    // k_begin: the first k of the k-tiles it stages (split-K; 0 otherwise).
    __device__ __forceinline__ NetcGemmStager(const Source& source, long long x0, long long x_end,
                                              long long k_begin = 0)
        : source(source),
          x_lane(K_FAST ? threadIdx.x / FAST : threadIdx.x % FAST),
          k_lane(K_FAST ? threadIdx.x % FAST : threadIdx.x / FAST)
    {
#pragma unroll
        for (int s = 0; s < X_SLOTS; ++s) {
            const long long x = x0 + s * X_LANES + x_lane;
            inside[s] = x_slot(s) && x < x_end;
            columns[s] = source.column(inside[s] ? x : x0);
        }
        first = Taps::tap(source, k_begin + k_lane);
        lane_step = Taps::tap(source, K_LANES);
        tile_step = Taps::tap(source, BK);
    }

    __device__ __forceinline__ void fetch(long long k0, long long k)
    {
        const int k_left = netc_k_left<BK>(k0, k);
        typename Taps::Tap tap = first;
#pragma unroll
        for (int t = 0; t < K_SLOTS; ++t) {
            const bool k_inside = t * K_LANES + k_lane < k_left;
#pragma unroll
            for (int s = 0; s < X_SLOTS; ++s)
                staged[s][t] = inside[s] && k_inside ? source.at(columns[s], tap) : 0.0f;
            if (t + 1 < K_SLOTS)
                Taps::advance(source, tap, lane_step);
        }
        Taps::advance(source, first, tile_step);
    }

    __device__ __forceinline__ void store(float* tile) const
    {
#pragma unroll
        for (int t = 0; t < K_SLOTS; ++t)
#pragma unroll
            for (int s = 0; s < X_SLOTS; ++s)
                if (x_slot(s) && k_slot(t))
                    tile[(t * K_LANES + k_lane) * PITCH + s * X_LANES + x_lane] = staged[s][t];
    }
};

// Four consecutive elements as floats: one 128-bit load for f32 (`p` 16-byte aligned), four
// loads of 16 bits for f16 and bf16.
template <typename T>
__device__ __forceinline__ float4 netc_load4(const T* p)
{
    return make_float4(netc_load(p), netc_load(p + 1), netc_load(p + 2), netc_load(p + 3));
}

__device__ __forceinline__ float4 netc_load4(const float* p)
{
    return *reinterpret_cast<const float4*>(p);
}

// Whether a stager can read `matrix` (pitch `pitch` elements) 4 elements at a time.
template <typename T>
__device__ __forceinline__ bool netc_vector_ok(const T* matrix, long long pitch)
{
    return pitch % 4 == 0 && reinterpret_cast<unsigned long long>(matrix) % (4 * sizeof(T)) == 0;
}

// A row-major matrix (`pitch` elements a row, a multiple of 4, 4-element aligned), 4 elements
// along its rows at a time. K_CONTIGUOUS: the rows are x and run along k (A, dense's B), else
// the rows are k and run along x (matmul's B). Chunk c of a tile is thread c % THREADS's.
// A K-contiguous chunk is written as 4 k-rows of the tile, an x-contiguous one as one vector.
template <typename T, int EXTENT, int BK, int PITCH, int THREADS, bool K_CONTIGUOUS>
struct NetcGemmVectorStager {
    static constexpr int ROW = K_CONTIGUOUS ? BK : EXTENT;  // elements along a matrix row
    static constexpr int ROWS = K_CONTIGUOUS ? EXTENT : BK;
    static_assert(ROW % 4 == 0 && PITCH % 4 == 0, "a tile row is whole vectors");
    static constexpr int CHUNKS = ROWS * ROW / 4;
    static constexpr int PER_THREAD = (CHUNKS + THREADS - 1) / THREADS;
    const T* source[PER_THREAD];  // the chunk in the next k-tile
    int destination[PER_THREAD];  // its first element in the tile
    int k_offset[PER_THREAD];     // its first k in the k-tile
    bool inside[PER_THREAD];      // a chunk of the tile, in the matrix along x
    long long step;               // elements from one k-tile to the next
    float4 staged[PER_THREAD];

    __device__ __forceinline__ bool chunk(int i) const
    {
        return CHUNKS % THREADS == 0 || i * THREADS + static_cast<int>(threadIdx.x) < CHUNKS;
    }

    __device__ __forceinline__ NetcGemmVectorStager(const T* matrix, long long pitch,
                                                    long long x0, long long x_end)
    {
#pragma unroll
        for (int i = 0; i < PER_THREAD; ++i) {
            const int c = i * THREADS + static_cast<int>(threadIdx.x);
            const int r = c / (ROW / 4);
            const int along = c % (ROW / 4) * 4;
            const int x = K_CONTIGUOUS ? r : along;
            const int kk = K_CONTIGUOUS ? along : r;
            inside[i] = chunk(i) && x0 + x < x_end;
            k_offset[i] = kk;
            destination[i] = kk * PITCH + x;
            source[i] = matrix + (K_CONTIGUOUS ? (x0 + x) * pitch + kk : kk * pitch + x0 + x);
        }
        step = K_CONTIGUOUS ? BK : BK * pitch;
    }

    __device__ __forceinline__ void fetch(long long k0, long long k)
    {
        const int k_left = netc_k_left<BK>(k0, k);
#pragma unroll
        for (int i = 0; i < PER_THREAD; ++i) {
            // K % 4 == 0 (or N % 4 == 0): a chunk is wholly inside or wholly outside.
            staged[i] = inside[i] && k_offset[i] < k_left ? netc_load4(source[i])
                                                          : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            source[i] += step;
        }
    }

    __device__ __forceinline__ void store(float* tile) const
    {
#pragma unroll
        for (int i = 0; i < PER_THREAD; ++i) {
            if (!chunk(i))
                break;
            float* first = tile + destination[i];
            if (K_CONTIGUOUS) {
                first[0] = staged[i].x;
                first[PITCH] = staged[i].y;
                first[2 * PITCH] = staged[i].z;
                first[3 * PITCH] = staged[i].w;
            } else {
                *reinterpret_cast<float4*>(first) = staged[i];
            }
        }
    }
};

// The main loop -------------------------------------------------------------------------------

// V consecutive floats of shared memory (`p` V-float aligned) in one load.
template <int V>
__device__ __forceinline__ void netc_shared_read(const float* p, float* out)
{
    if constexpr (V == 4) {
        const float4 v = *reinterpret_cast<const float4*>(p);
        out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
    } else if constexpr (V == 2) {
        const float2 v = *reinterpret_cast<const float2*>(p);
        out[0] = v.x; out[1] = v.y;
    } else {
        out[0] = *p;
    }
}

// acc[i][j] = sum over the `k` k the stagers walk of A(m0 + Shape::row() + Shape::m_of(i), k) *
// B(k, n0 + Shape::col() + Shape::n_of(j)), the operands staged by `a` and `b` (stagers, above);
// `shared` holds Shape::SHARED_FLOATS floats. Every thread of the block must call it (it
// synchronises the block).
template <int BM, int BN, int BK, int TM, int TN, class AStager, class BStager>
__device__ __forceinline__ void netc_gemm_pipeline(AStager& a, BStager& b, long long k,
                                                   float* shared, float (&acc)[TM][TN])
{
    using Shape = NetcGemmShape<BM, BN, BK, TM, TN>;
    float* const a_tiles = shared;                      // [2][BK][A_PITCH]
    float* const b_tiles = shared + 2 * Shape::A_STAGE;  // [2][BK][B_PITCH]
    const int row = Shape::row();
    const int col = Shape::col();

#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j)
            acc[i][j] = 0.0f;

    a.fetch(0, k);
    b.fetch(0, k);
    a.store(a_tiles);
    b.store(b_tiles);
    __syncthreads();
    int stage = 0;
    for (long long k0 = 0; k0 < k; k0 += BK) {
        const bool more = k0 + BK < k;
        if (more) {  // k-tile t + 1 into registers, in flight during the math
            a.fetch(k0 + BK, k);
            b.fetch(k0 + BK, k);
        }
        const float* a_tile = a_tiles + stage * Shape::A_STAGE + row;
        const float* b_tile = b_tiles + stage * Shape::B_STAGE + col;
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float a_fragment[TM];
            float b_fragment[TN];
#pragma unroll
            for (int i = 0; i < TM; i += Shape::VM)
                netc_shared_read<Shape::VM>(a_tile + kk * Shape::A_PITCH + Shape::m_of(i),
                                            a_fragment + i);
#pragma unroll
            for (int j = 0; j < TN; j += Shape::VN)
                netc_shared_read<Shape::VN>(b_tile + kk * Shape::B_PITCH + Shape::n_of(j),
                                            b_fragment + j);
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j)
                    acc[i][j] = fmaf(a_fragment[i], b_fragment[j], acc[i][j]);
        }
        stage ^= 1;
        if (more) {  // the other buffer was last read before the previous barrier
            a.store(a_tiles + stage * Shape::A_STAGE);
            b.store(b_tiles + stage * Shape::B_STAGE);
        }
        __syncthreads();
    }
}

// The main loop over two sources, staged element by element (see netc_gemm_pipeline).
template <int BM, int BN, int BK, int TM, int TN, class ASource, class BSource>
__device__ __forceinline__ void netc_gemm_mainloop(const ASource& a, const BSource& b,
                                                   long long m0, long long n0, long long m,
                                                   long long n, long long k, float* shared,
                                                   float (&acc)[TM][TN])
{
    using Shape = NetcGemmShape<BM, BN, BK, TM, TN>;
    NetcGemmStager<BM, BK, Shape::A_PITCH, Shape::THREADS, ASource> a_stager(a, m0, m);
    NetcGemmStager<BN, BK, Shape::B_PITCH, Shape::THREADS, BSource> b_stager(b, n0, n);
    netc_gemm_pipeline<BM, BN, BK, TM, TN>(a_stager, b_stager, k, shared, acc);
}

// Calls store(m, n, value) for every element of this thread's register tile inside the matrix.
template <int BM, int BN, int TM, int TN, class Store>
__device__ __forceinline__ void netc_gemm_epilogue(const float (&acc)[TM][TN], long long m0,
                                                   long long n0, long long m, long long n,
                                                   const Store& store)
{
    using Shape = NetcGemmShape<BM, BN, 1, TM, TN>;
    const long long row = m0 + Shape::row();
    const long long col = n0 + Shape::col();
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const long long global_m = row + Shape::m_of(i);
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const long long global_n = col + Shape::n_of(j);
            if (global_m < m && global_n < n)
                store(global_m, global_n, acc[i][j]);
        }
    }
}

// Stores C[m, n] = epilogue(value + bias[n], offset) into a row-major [M, N] matrix; the
// epilogue (a pointwise functor, identity when nothing is fused) sees the element's offset in
// the contiguous output. C: the stored type, T's but float for split-K's partials.
template <typename T, bool HAS_BIAS, class Epilogue, typename C = T>
struct NetcRowMajorStore {
    C* c;
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

// Split-K ------------------------------------------------------------------------------------

// Split `index` of `count` (see the design note); a kernel launched without splits is split 0
// of 1.
struct NetcSplitK {
    int index, count;
};

// The k a split accumulates: [begin, begin + length), runs of ceil(k-tiles / count) whole
// k-tiles (so that 128-bit and cp.async staging stay aligned); the last runs may be short or
// empty (length 0: the split stores zeros).
struct NetcKRange {
    long long begin, length;
};

__device__ __forceinline__ NetcKRange netc_k_range(long long k, int bk, const NetcSplitK& split)
{
    if (split.count == 1)  // a kernel launched without splits: nothing left once inlined
        return {0, k};
    const long long run = netc_ceil_div(netc_ceil_div(k, bk), split.count) * bk;
    const long long begin = netc_min(split.index * run, k);
    return {begin, netc_min(run, k - begin)};
}

// The epilogue of a split's partial sums: the raw value.
struct NetcRawValue {
    __device__ __forceinline__ float operator()(float value, long long) const { return value; }
};

// out[i] = epilogue(sum over s < splits of partials[s * outputs + i] + bias[i / bias_inner %
// bias_count], i) for every element i of the output, one a thread: the bias and epilogue the
// split kernel left out, as its store applies them (NetcRowMajorStore, NetcConvStore), with
// the bias of output element i at (i / bias_inner) % bias_count (a GEMM's column: 1, N; a
// conv's channel: out pixels, out channels). The splits are added in order: deterministic.
template <typename T, bool HAS_BIAS, class Epilogue>
__device__ __forceinline__ void netc_split_k_reduce(const float* __restrict__ partials,
                                                    const T* __restrict__ bias,
                                                    T* __restrict__ out, long long outputs,
                                                    int splits, long long bias_inner,
                                                    long long bias_count,
                                                    const Epilogue& epilogue)
{
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= outputs)
        return;
    float value = partials[i];
    for (int s = 1; s < splits; ++s)
        value += partials[s * outputs + i];
    if (HAS_BIAS)
        value += netc_load(bias + i / bias_inner % bias_count);
    netc_store(out + i, epilogue(value, i));
}

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
// With `split`, the block accumulates only its split's k (netc_k_range) and `c` is that split's
// partials (float, no bias, NetcRawValue).
//
// Launch: block THREADS; grid.x = ceil(M / BM) * matrices (the batch of matrices and the row
// tiles share x, because either may depend on a named dimension), grid.y = ceil(N / BN);
// split-K: grid.z = splits.
template <typename T, int BM, int BN, int BK, int TM, int TN, bool B_TRANSPOSED, bool HAS_BIAS,
          typename C, class Epilogue>
__device__ __forceinline__ void netc_gemm(const T* __restrict__ a, const T* __restrict__ b,
                                          const T* __restrict__ bias, C* __restrict__ c,
                                          long long m, long long n, long long k,
                                          long long inner_count, long long a_outer_stride,
                                          long long a_inner_stride, long long b_outer_stride,
                                          long long b_inner_stride, const Epilogue& epilogue,
                                          const NetcSplitK& split = NetcSplitK{0, 1})
{
    using Shape = NetcGemmShape<BM, BN, BK, TM, TN>;
    const NetcGemmBlock block = netc_gemm_block(m, BM, BN, inner_count);
    const NetcKRange range = netc_k_range(k, BK, split);
    // The operands from the range's first k on (A's rows, and B's, run along k when
    // B_TRANSPOSED; else B's rows are k).
    const T* a_matrix = block.matrix_of(a, a_outer_stride, a_inner_stride) + range.begin;
    const T* b_matrix = block.matrix_of(b, b_outer_stride, b_inner_stride) +
                        range.begin * (B_TRANSPOSED ? 1 : n);
    const long long b_pitch = B_TRANSPOSED ? k : n;

    NETC_DYNAMIC_SHARED(float, shared);
    float acc[TM][TN];
    // 128-bit staging needs k-tiles (or, for matmul's B, column tiles) of whole vectors.
    constexpr bool VECTOR_TILES = BK % 4 == 0 && (B_TRANSPOSED || BN % 4 == 0);
    if (VECTOR_TILES && netc_vector_ok(a_matrix, k) && netc_vector_ok(b_matrix, b_pitch)) {
        if constexpr (VECTOR_TILES) {
            NetcGemmVectorStager<T, BM, BK, Shape::A_PITCH, Shape::THREADS, true> a_stager(
                a_matrix, k, block.m0, m);
            NetcGemmVectorStager<T, BN, BK, Shape::B_PITCH, Shape::THREADS, B_TRANSPOSED>
                b_stager(b_matrix, b_pitch, block.n0, n);
            netc_gemm_pipeline<BM, BN, BK, TM, TN>(a_stager, b_stager, range.length, shared,
                                                   acc);
        }
    } else {
        const NetcMatrixSource<T, true> a_source{a_matrix, k};
        const NetcMatrixSource<T, B_TRANSPOSED> b_source{b_matrix, b_pitch};
        netc_gemm_mainloop<BM, BN, BK, TM, TN>(a_source, b_source, block.m0, block.n0, m, n,
                                               range.length, shared, acc);
    }
    const NetcRowMajorStore<T, HAS_BIAS, Epilogue, C> store{c, bias, n, block.matrix * m * n,
                                                            epilogue};
    netc_gemm_epilogue<BM, BN, TM, TN>(acc, block.m0, block.n0, m, n, store);
}
