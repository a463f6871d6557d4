// ---------------------------------------------------------------------------------------------
// reduce.cuh: reductions over any set of axes: sum, mean, amax, amin, logsumexp, and argmax
// (over one axis, to i64).
//
// Design note.
//   Each output element ("row") reduces the input elements that share its kept coordinates.
//   The input is seen through two strided views (netc merges neighbouring dims first): the
//   kept dims (KEPT_RANK of them, decoded with netc_broadcast_offsets, elementwise.cuh) give a
//   row's first element; of the reduced dims (REDUCED_RANK), the innermost is split among the
//   row's threads and the others are walked in order.
//   Block:  ROWS_PER_BLOCK rows, THREADS_PER_ROW threads each (the row family's tiles and its
//           netc_row_reduce, rowwise.cuh): a warp per row, or a whole block per long row.
//   Thread: elements lane, lane + THREADS_PER_ROW, ... of the innermost reduced dim, at each
//           position of the outer ones, combined in registers, then across the row. Every element is read once and accumulated in float
//           for the float dtypes (whatever the storage type); i32 and i64 inputs (sum, amax,
//           amin, argmax) exactly, in int and long long, a sum wrapping around on overflow.
//   Numerics: amax and amin return NaN for a row holding one (as PyTorch); logsumexp keeps a
//           running (max, sum of exp(x - max)) pair, never subtracting an infinite max from
//           itself, so all -inf gives -inf, a +inf gives +inf and a NaN gives NaN. argmax
//           gives the first position of the max (of the first NaN, if any), as PyTorch.
//   Fusion: elements are read through `load` (the input, or a fused prologue computing it at
//           the input's linear offset); the row's result goes through `epilogue` at the
//           output's linear index (argmax stores its index exactly and takes no epilogue).
//
// Launch: block THREADS_PER_ROW * ROWS_PER_BLOCK, grid.x = ceil(rows / ROWS_PER_BLOCK),
// shared memory ROWS_PER_BLOCK * (THREADS_PER_ROW / 32) * 8 bytes when a row spans warps.
// ---------------------------------------------------------------------------------------------

// x, unless it is NaN or y is larger (or y is NaN): PyTorch's NaN-propagating max. Also on
// integers, where nothing is NaN.
template <typename V>
__device__ __forceinline__ V netc_max_propagating_nan(V x, V y)
{
    return (x > y || x != x) ? x : y;
}

template <typename V>
__device__ __forceinline__ V netc_min_propagating_nan(V x, V y)
{
    return (x < y || x != x) ? x : y;
}

// Whether a computed type is float (not int or long long): known at compile time.
template <typename T> struct netc_is_float { static constexpr bool value = false; };
template <> struct netc_is_float<float> { static constexpr bool value = true; };

// The start of a max and of a min: -inf and +inf for float, the ends of the range for i32
// and i64 (a reduction computes in the input's computed type: float, int or long long).
template <typename V> struct netc_limits;
template <> struct netc_limits<float> {
    __device__ __forceinline__ static float lowest() { return netc_negative_infinity(); }
    __device__ __forceinline__ static float highest() { return -netc_negative_infinity(); }
};
template <> struct netc_limits<int> {
    __device__ __forceinline__ static int lowest() { return -2147483647 - 1; }
    __device__ __forceinline__ static int highest() { return 2147483647; }
};
template <> struct netc_limits<long long> {
    __device__ __forceinline__ static long long lowest() { return -9223372036854775807LL - 1; }
    __device__ __forceinline__ static long long highest() { return 9223372036854775807LL; }
};

// a + b; on integers wrapping around on overflow (computed unsigned: no undefined behaviour),
// as an i32 or i64 sum does in PyTorch.
__device__ __forceinline__ float netc_wrapping_add(float a, float b) { return a + b; }
__device__ __forceinline__ int netc_wrapping_add(int a, int b)
{
    return static_cast<int>(static_cast<unsigned>(a) + static_cast<unsigned>(b));
}
__device__ __forceinline__ long long netc_wrapping_add(long long a, long long b)
{
    return static_cast<long long>(static_cast<unsigned long long>(a) +
                                  static_cast<unsigned long long>(b));
}

// Each reduction takes V, the type the input is computed in: float for every float dtype, int
// or long long for i32 and i64 (sum, amax, amin and argmax; mean and logsumexp take floats).
template <typename V>
struct NetcReduceSum {
    typedef V Value;
    __device__ __forceinline__ Value start() const { return 0; }
    __device__ __forceinline__ Value add(Value total, V x, long long) const
    {
        return netc_wrapping_add(total, x);
    }
    __device__ __forceinline__ Value operator()(Value a, Value b) const
    {
        return netc_wrapping_add(a, b);
    }
    __device__ __forceinline__ V result(Value total, long long) const { return total; }
};

template <typename V>
struct NetcReduceMean : NetcReduceSum<float> {
    __device__ __forceinline__ float result(Value total, long long length) const
    {
        return total / static_cast<float>(length);
    }
};

template <typename V>
struct NetcReduceMax {
    typedef V Value;
    __device__ __forceinline__ Value start() const { return netc_limits<V>::lowest(); }
    __device__ __forceinline__ Value add(Value total, V x, long long) const
    {
        return netc_max_propagating_nan(total, x);
    }
    __device__ __forceinline__ Value operator()(Value a, Value b) const
    {
        return netc_max_propagating_nan(a, b);
    }
    __device__ __forceinline__ V result(Value total, long long) const { return total; }
};

template <typename V>
struct NetcReduceMin {
    typedef V Value;
    __device__ __forceinline__ Value start() const { return netc_limits<V>::highest(); }
    __device__ __forceinline__ Value add(Value total, V x, long long) const
    {
        return netc_min_propagating_nan(total, x);
    }
    __device__ __forceinline__ Value operator()(Value a, Value b) const
    {
        return netc_min_propagating_nan(a, b);
    }
    __device__ __forceinline__ V result(Value total, long long) const { return total; }
};

template <typename V>
struct NetcReduceLogSumExp {
    typedef NetcMaxSum Value;
    __device__ __forceinline__ Value start() const { return {netc_negative_infinity(), 0.0f}; }

    // exp(from - to) * sum, taking exp(0) for from == to (also when both are infinite).
    __device__ __forceinline__ static float rescale(float sum, float from, float to)
    {
        return from == to ? sum : sum * expf(from - to);
    }

    __device__ __forceinline__ Value add(Value total, float x, long long) const
    {
        if (x > total.max)
            return {x, rescale(total.sum, total.max, x) + 1.0f};
        if (x == netc_negative_infinity())
            return total;  // adds exp(-inf) = 0
        return {total.max, total.sum + rescale(1.0f, x, total.max)};  // NaN for a NaN
    }
    __device__ __forceinline__ Value operator()(Value a, Value b) const
    {
        const float max = fmaxf(a.max, b.max);
        return {max, rescale(a.sum, a.max, max) + rescale(b.sum, b.max, max)};
    }
    __device__ __forceinline__ float result(Value total, long long) const
    {
        // An infinite max is the result's sign of infinity (sum 0 for all -inf: log 0 = -inf
        // added to -inf); a NaN anywhere made the sum NaN.
        return total.max + logf(total.sum);
    }
};

template <typename V>
struct NetcMaxIndex {
    V max;
    long long index;
};

template <typename V>
__device__ __forceinline__ NetcMaxIndex<V> netc_shuffle_xor(NetcMaxIndex<V> value, int offset)
{
    return {__shfl_xor_sync(NETC_FULL_WARP, value.max, offset),
            __shfl_xor_sync(NETC_FULL_WARP, value.index, offset)};
}

template <typename V>
struct NetcReduceArgMax {
    typedef NetcMaxIndex<V> Value;
    __device__ __forceinline__ Value start() const
    {
        return {netc_limits<V>::lowest(), 0x7fffffffffffffffLL};
    }
    // The larger (a NaN above all), the first position among equals.
    __device__ __forceinline__ Value operator()(Value a, Value b) const
    {
        const bool a_nan = a.max != a.max, b_nan = b.max != b.max;
        if (a_nan != b_nan)
            return a_nan ? a : b;
        if (!a_nan && a.max != b.max)
            return a.max > b.max ? a : b;
        return a.index <= b.index ? a : b;
    }
    __device__ __forceinline__ Value add(Value total, V x, long long j) const
    {
        return (*this)(total, Value{x, j});
    }
};

// Stores a row's result: through the epilogue for the float reductions; argmax's index as it
// is (exact at any length).
template <typename T, class Reduction, class Epilogue>
__device__ __forceinline__ void netc_store_reduced(T* y, long long row,
                                                   typename Reduction::Value total,
                                                   long long length, const Reduction& reduction,
                                                   const Epilogue& epilogue)
{
    netc_store(y + row, epilogue(reduction.result(total, length), row));
}

template <typename T, typename V, class Epilogue>
__device__ __forceinline__ void netc_store_reduced(T* y, long long row, NetcMaxIndex<V> total,
                                                   long long, const NetcReduceArgMax<V>&,
                                                   const Epilogue&)
{
    netc_store(y + row, total.index);
}

template <typename T, int THREADS_PER_ROW, int ROWS_PER_BLOCK, int KEPT_RANK, int REDUCED_RANK,
          class Reduction, class Load, class Epilogue>
__device__ __forceinline__ void netc_reduce_rows(
    const Load& load, T* __restrict__ y, long long rows, long long length,
    const long long (&kept_sizes)[KEPT_RANK], const long long (&kept_strides)[1][KEPT_RANK],
    const long long (&reduced_sizes)[REDUCED_RANK],
    const long long (&reduced_strides)[1][REDUCED_RANK], long long outer_steps,
    const Reduction& reduction, const Epilogue& epilogue)
{
    const NetcRowThread<THREADS_PER_ROW, ROWS_PER_BLOCK> thread(NetcRows{rows, length, 1});
    long long start[1] = {0};
    if (thread.active)
        netc_broadcast_offsets(thread.row, kept_sizes, kept_strides, start);

    // The row's threads split the innermost reduced dim; the outer reduced dims are walked one
    // position at a time, as an odometer (no division in the loop: a 64-bit one is a call, and
    // makes ptxas spill).
    constexpr int LAST = REDUCED_RANK - 1;
    const long long inner = LAST > 0 ? reduced_sizes[LAST] : length;
    const long long inner_stride = reduced_strides[0][LAST];
    if (!thread.active)
        outer_steps = 0;
    typename Reduction::Value partial = reduction.start();
    if (LAST == 0) {
        for (long long j = thread.lane; j < inner * outer_steps; j += THREADS_PER_ROW)
            partial = reduction.add(partial, load(0.0f, start[0] + j * inner_stride), j);
    } else {
        long long coordinates[REDUCED_RANK] = {};
        long long outer_offset = start[0];
        for (long long step = 0; step < outer_steps; ++step) {
            if (netc_is_float<decltype(load(0.0f, 0LL))>::value) {
                for (long long i = thread.lane; i < inner; i += THREADS_PER_ROW)
                    partial = reduction.add(partial, load(0.0f, outer_offset + i * inner_stride),
                                            step * inner + i);
            } else {
                // Integer sums reassociate, and ptxas unrolls them into more registers than
                // a block-per-row tile has (sm_80 spilled): one element at a time.
#pragma unroll 1
                for (long long i = thread.lane; i < inner; i += THREADS_PER_ROW)
                    partial = reduction.add(partial, load(0.0f, outer_offset + i * inner_stride),
                                            step * inner + i);
            }
#pragma unroll
            for (int d = LAST - 1; d >= 0; --d) {  // the next outer position
                outer_offset += reduced_strides[0][d];
                if (d == 0 || ++coordinates[d] < reduced_sizes[d])
                    break;
                outer_offset -= coordinates[d] * reduced_strides[0][d];
                coordinates[d] = 0;
            }
        }
    }
    NETC_DYNAMIC_SHARED(typename Reduction::Value, scratch);
    const typename Reduction::Value total =
        netc_row_reduce<THREADS_PER_ROW>(partial, reduction, scratch);
    if (thread.active && thread.lane == 0)
        netc_store_reduced(y, thread.row, total, length, reduction, epilogue);
}
