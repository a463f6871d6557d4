// ---------------------------------------------------------------------------------------------
// rowwise.cuh: reductions along one axis: softmax, log_softmax, layernorm and the row mean
// behind global_avgpool; groupnorm, instancenorm and rmsnorm (`netc_norm_rows`, at the end).
//
// Design note.
//   A "row" is the `length` elements reduced together. Row r starts at
//   (r / inner) * length * inner + r % inner and its elements are `inner` apart: softmax over
//   axis a has inner = the product of the dims after a; layernorm and the row mean have
//   inner = 1.
//   Block:  ROWS_PER_BLOCK rows, THREADS_PER_ROW threads each (a warp per row when
//           THREADS_PER_ROW is 32, a whole block per row for long rows).
//   Thread: elements lane, lane + THREADS_PER_ROW, ... of its row; it reduces them in
//           registers, then the row combines its threads with warp shuffles and, when a row
//           spans several warps, through shared memory (ROWS_PER_BLOCK * THREADS_PER_ROW / 32
//           partial values). Threads of a row past the last one still take part in the
//           shuffles and barriers; they only skip loads and stores.
//   Numerics: softmax keeps a running (max, sum of exp(x - max)) pair per thread and combines
//           pairs (online softmax), so no exp overflows; layernorm takes the mean first and
//           then the mean of squared deviations (two passes, no cancellation).
//   Fusion: every element is read through `load`, a pointwise functor: the plain input, or a
//           fused prologue computing it from other inputs (recomputed on each pass); results
//           go through `epilogue` (fused pointwise ops, or none) before they are stored.
//   Bytes:  softmax reads each element twice (reduce, write) and writes it once; layernorm
//           reads it three times (mean, variance, write) and writes once; the row mean reads
//           each element once and writes one value per row.
//
// Launch: block THREADS_PER_ROW * ROWS_PER_BLOCK, grid.x = ceil(rows / ROWS_PER_BLOCK),
// shared memory ROWS_PER_BLOCK * (THREADS_PER_ROW / 32) * 8 bytes when a row spans warps.
// ---------------------------------------------------------------------------------------------

struct NetcRows {
    long long count;   // rows in this launch
    long long length;  // elements per row
    long long inner;   // distance between consecutive elements of a row

    __device__ __forceinline__ long long start(long long row) const
    {
        return (row / inner) * length * inner + row % inner;
    }
};

// The (max, sum of exp(x - max)) pair of online softmax.
struct NetcMaxSum {
    float max;
    float sum;
};

__device__ __forceinline__ float netc_shuffle_xor(float value, int offset)
{
    return __shfl_xor_sync(NETC_FULL_WARP, value, offset);
}

// The integer sums and extremes of reduce.cuh (declared before netc_row_reduce, which finds
// overloads for built-in types only where it is defined).
__device__ __forceinline__ int netc_shuffle_xor(int value, int offset)
{
    return __shfl_xor_sync(NETC_FULL_WARP, value, offset);
}

__device__ __forceinline__ long long netc_shuffle_xor(long long value, int offset)
{
    return __shfl_xor_sync(NETC_FULL_WARP, value, offset);
}

__device__ __forceinline__ NetcMaxSum netc_shuffle_xor(NetcMaxSum value, int offset)
{
    return {__shfl_xor_sync(NETC_FULL_WARP, value.max, offset),
            __shfl_xor_sync(NETC_FULL_WARP, value.sum, offset)};
}

struct NetcSum {
    __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

struct NetcCombineMaxSum {
    __device__ __forceinline__ NetcMaxSum operator()(NetcMaxSum a, NetcMaxSum b) const
    {
        const float max = fmaxf(a.max, b.max);
        if (max == netc_negative_infinity())
            return {max, a.sum + b.sum};  // no number yet: 0, or NaN if a NaN was seen
        return {max, a.sum * expf(a.max - max) + b.sum * expf(b.max - max)};
    }
};

// The reduction over all THREADS_PER_ROW threads of the calling thread's row, returned to
// every one of them. `scratch` holds ROWS_PER_BLOCK * THREADS_PER_ROW / 32 values (unused for
// a warp per row). Every thread of the block must call it.
template <int THREADS_PER_ROW, class Value, class Combine>
__device__ __forceinline__ Value netc_row_reduce(Value value, const Combine& combine,
                                                 Value* scratch)
{
    static_assert(THREADS_PER_ROW % 32 == 0, "a row is a whole number of warps");
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
        value = combine(value, netc_shuffle_xor(value, offset));
    if (THREADS_PER_ROW == 32)
        return value;

    constexpr int WARPS = THREADS_PER_ROW / 32;
    Value* row_scratch = scratch + (threadIdx.x / THREADS_PER_ROW) * WARPS;
    if (threadIdx.x % 32 == 0)
        row_scratch[(threadIdx.x % THREADS_PER_ROW) / 32] = value;
    __syncthreads();
    Value total = row_scratch[0];
    for (int warp = 1; warp < WARPS; ++warp)
        total = combine(total, row_scratch[warp]);
    __syncthreads();  // the scratch is reused by the next reduction
    return total;
}

template <int THREADS_PER_ROW, int ROWS_PER_BLOCK>
struct NetcRowThread {
    long long row;
    int lane;  // index of this thread within its row
    bool active;

    __device__ __forceinline__ NetcRowThread(const NetcRows& rows)
        : row(static_cast<long long>(blockIdx.x) * ROWS_PER_BLOCK + threadIdx.x / THREADS_PER_ROW),
          lane(threadIdx.x % THREADS_PER_ROW),
          active(row < rows.count)
    {
    }
};

template <typename T, int THREADS_PER_ROW, int ROWS_PER_BLOCK, bool LOG, class Load,
          class Epilogue>
__device__ __forceinline__ void netc_softmax_rows(const Load& load, T* __restrict__ y,
                                                  const NetcRows& rows, const Epilogue& epilogue)
{
    const NetcRowThread<THREADS_PER_ROW, ROWS_PER_BLOCK> thread(rows);
    const long long start = thread.active ? rows.start(thread.row) : 0;
    const long long end = thread.active ? rows.length : 0;

    NetcMaxSum partial{netc_negative_infinity(), 0.0f};
    for (long long j = thread.lane; j < end; j += THREADS_PER_ROW) {
        const float value = load(0.0f, start + j * rows.inner);
        if (value > partial.max) {
            partial.sum = partial.sum * expf(partial.max - value) + 1.0f;
            partial.max = value;
        } else if (value != netc_negative_infinity()) {
            partial.sum += expf(value - partial.max);  // NaN for a NaN: the row becomes NaN
        }  // -inf adds exp(-inf) = 0 (and must not compute -inf - -inf while max is -inf)
    }
    NETC_DYNAMIC_SHARED(NetcMaxSum, scratch);
    const NetcMaxSum total =
        netc_row_reduce<THREADS_PER_ROW>(partial, NetcCombineMaxSum(), scratch);

    // As NumPy and PyTorch compute it, x - max(x) is NaN where x = max = +inf, and everywhere
    // when every x is -inf: such a row is all NaN, like a row holding a NaN.
    const bool infinite_max = total.max == -netc_negative_infinity() ||
                              total.max == netc_negative_infinity();
    const float sum = infinite_max ? netc_quiet_nan() : total.sum;
    const float log_sum = logf(sum);
    const float inverse_sum = 1.0f / sum;
    for (long long j = thread.lane; j < end; j += THREADS_PER_ROW) {
        const long long offset = start + j * rows.inner;
        const float shifted = load(0.0f, offset) - total.max;
        netc_store(y + offset,
                   epilogue(LOG ? shifted - log_sum : expf(shifted) * inverse_sum, offset));
    }
}

template <typename T, int THREADS_PER_ROW, int ROWS_PER_BLOCK, class Load, class Epilogue>
__device__ __forceinline__ void netc_layernorm_rows(const Load& load,
                                                    const T* __restrict__ weight,
                                                    const T* __restrict__ bias,
                                                    T* __restrict__ y, const NetcRows& rows,
                                                    float epsilon, const Epilogue& epilogue)
{
    const NetcRowThread<THREADS_PER_ROW, ROWS_PER_BLOCK> thread(rows);
    const long long start = thread.active ? rows.start(thread.row) : 0;
    const long long end = thread.active ? rows.length : 0;
    NETC_DYNAMIC_SHARED(float, scratch);

    float sum = 0.0f;
    for (long long j = thread.lane; j < end; j += THREADS_PER_ROW)
        sum += load(0.0f, start + j * rows.inner);
    const float mean =
        netc_row_reduce<THREADS_PER_ROW>(sum, NetcSum(), scratch) / static_cast<float>(rows.length);

    float squares = 0.0f;
    for (long long j = thread.lane; j < end; j += THREADS_PER_ROW) {
        const float deviation = load(0.0f, start + j * rows.inner) - mean;
        squares += deviation * deviation;
    }
    const float variance = netc_row_reduce<THREADS_PER_ROW>(squares, NetcSum(), scratch) /
                           static_cast<float>(rows.length);
    const float inverse_std = rsqrtf(variance + epsilon);

    for (long long j = thread.lane; j < end; j += THREADS_PER_ROW) {
        const long long offset = start + j * rows.inner;
        const float normalised = (load(0.0f, offset) - mean) * inverse_std;
        netc_store(y + offset,
                   epilogue(normalised * netc_load(weight + j) + netc_load(bias + j), offset));
    }
}

// y[row] = the mean of the row (global_avgpool: a row is one channel of one image).
template <typename T, int THREADS_PER_ROW, int ROWS_PER_BLOCK, class Load, class Epilogue>
__device__ __forceinline__ void netc_mean_rows(const Load& load, T* __restrict__ y,
                                               const NetcRows& rows, const Epilogue& epilogue)
{
    const NetcRowThread<THREADS_PER_ROW, ROWS_PER_BLOCK> thread(rows);
    const long long start = thread.active ? rows.start(thread.row) : 0;
    const long long end = thread.active ? rows.length : 0;
    NETC_DYNAMIC_SHARED(float, scratch);

    float sum = 0.0f;
    for (long long j = thread.lane; j < end; j += THREADS_PER_ROW)
        sum += load(0.0f, start + j * rows.inner);
    const float total = netc_row_reduce<THREADS_PER_ROW>(sum, NetcSum(), scratch);
    if (thread.active && thread.lane == 0)
        netc_store(y + thread.row,
                   epilogue(total / static_cast<float>(rows.length), thread.row));
}

// groupnorm, instancenorm and rmsnorm. A row is the `length` consecutive elements normalised
// together (inner = 1): one group of one sample (groupnorm, instancenorm), or the last
// dimension (rmsnorm). CENTER subtracts the row's mean first (two passes, as layernorm);
// without it the row is divided by its root mean square. Element j of row r is then scaled
// (and shifted) by one channel of `weight` (and `bias`), chosen by CHANNEL: NETC_NORM_GROUP,
// channel (r % groups) * per_group + j / spatial (groupnorm); NETC_NORM_ROW, the row's one
// channel r % groups (instancenorm, groups = C); NETC_NORM_ELEMENT, element j (rmsnorm). The
// last two need no division per element.
#define NETC_NORM_GROUP 0
#define NETC_NORM_ROW 1
#define NETC_NORM_ELEMENT 2
template <typename T, int THREADS_PER_ROW, int ROWS_PER_BLOCK, bool CENTER, int CHANNEL,
          bool HAS_WEIGHT, bool HAS_BIAS, class Load, class Epilogue>
__device__ __forceinline__ void netc_norm_rows(const Load& load, const T* __restrict__ weight,
                                               const T* __restrict__ bias, T* __restrict__ y,
                                               const NetcRows& rows, long long groups,
                                               long long per_group, long long spatial,
                                               float epsilon, const Epilogue& epilogue)
{
    const NetcRowThread<THREADS_PER_ROW, ROWS_PER_BLOCK> thread(rows);
    const long long start = thread.active ? rows.start(thread.row) : 0;
    const long long end = thread.active ? rows.length : 0;
    NETC_DYNAMIC_SHARED(float, scratch);

    float mean = 0.0f;
    if (CENTER) {
        float sum = 0.0f;
        for (long long j = thread.lane; j < end; j += THREADS_PER_ROW)
            sum += load(0.0f, start + j * rows.inner);
        mean = netc_row_reduce<THREADS_PER_ROW>(sum, NetcSum(), scratch) /
               static_cast<float>(rows.length);
    }
    float squares = 0.0f;
    for (long long j = thread.lane; j < end; j += THREADS_PER_ROW) {
        const float deviation = load(0.0f, start + j * rows.inner) - mean;
        squares += deviation * deviation;
    }
    const float variance = netc_row_reduce<THREADS_PER_ROW>(squares, NetcSum(), scratch) /
                           static_cast<float>(rows.length);
    const float inverse = rsqrtf(variance + epsilon);

    const long long first_channel = thread.active ? (thread.row % groups) * per_group : 0;
    for (long long j = thread.lane; j < end; j += THREADS_PER_ROW) {
        const long long offset = start + j * rows.inner;
        const long long channel = CHANNEL == NETC_NORM_ELEMENT ? j
                                  : CHANNEL == NETC_NORM_ROW ? first_channel
                                                             : first_channel + j / spatial;
        float value = (load(0.0f, offset) - mean) * inverse;
        if (HAS_WEIGHT)
            value *= netc_load(weight + channel);
        if (HAS_BIAS)
            value += netc_load(bias + channel);
        netc_store(y + offset, epilogue(value, offset));
    }
}
