// ---------------------------------------------------------------------------------------------
// elementwise.cuh: out[i] = f(in0[...], in1[...], ..., p0, p1, ...) for every element i of a
// contiguous output: activations, broadcasting add/sub/mul (a shape-() constant operand is a
// float argument p), inference batchnorm (the per-channel parameters broadcast over N, H, W),
// fused chains of these, transpose (one input read through permuted strides) and broadcast
// expansion. The same pointwise functors (pointwise.jinja) are the epilogues of the other
// families and the prologues of the row-wise ones.
//
// Design note.
//   Thread: one output element. With RANK 0 every input has the output's shape and is read at
//           the same index. Otherwise the output is viewed as RANK dims (netc merges
//           neighbouring dims that every input walks alike, so RANK is small) and each input
//           has a stride per dim: 0 where it broadcasts, permuted strides for a transpose.
//   Block:  BLOCK consecutive output elements, so writes are coalesced; reads are coalesced
//           whenever the innermost dim has stride 1.
//   Bytes:  each output element is written once; each input element is read once per output
//           element that uses it (once unless it broadcasts; repeats hit the cache).
//   f:      generated from the IR (never from user text) by netc.codegen.pointwise, in float.
//
// Launch: block BLOCK, grid.x = ceil(total / BLOCK).
// ---------------------------------------------------------------------------------------------

// offsets[i] = the offset in input i of output element `index`: sizes[1..RANK-1] are the
// output's dims after the outermost (whose size need not be known: it is what is left over),
// strides[i][d] input i's stride for output dim d.
template <int RANK, int INPUTS>
__device__ __forceinline__ void netc_broadcast_offsets(long long index,
                                                       const long long (&sizes)[RANK],
                                                       const long long (&strides)[INPUTS][RANK],
                                                       long long (&offsets)[INPUTS])
{
#pragma unroll
    for (int i = 0; i < INPUTS; ++i)
        offsets[i] = 0;
#pragma unroll
    for (int d = RANK - 1; d > 0; --d) {
        long long coordinate;
        if (((index | sizes[d]) >> 31) == 0) {
            // Both fit in 31 bits, as they nearly always do: divide in 32 bits (64-bit division
            // is a subroutine call, slow and, in a GEMM or row kernel, a cause of spills).
            const unsigned quotient =
                static_cast<unsigned>(index) / static_cast<unsigned>(sizes[d]);
            coordinate = index - static_cast<long long>(quotient) * sizes[d];
            index = quotient;
        } else {
            coordinate = index % sizes[d];
            index /= sizes[d];
        }
#pragma unroll
        for (int i = 0; i < INPUTS; ++i)
            offsets[i] += coordinate * strides[i][d];
    }
#pragma unroll
    for (int i = 0; i < INPUTS; ++i)
        offsets[i] += index * strides[i][0];
}

// out[i] = producer(-, i) for i < total, one element a thread.
template <typename T, class Producer>
__device__ __forceinline__ void netc_elementwise(T* __restrict__ out, long long total,
                                                 const Producer& producer)
{
    const long long index = netc_global_thread_index();
    if (index < total)
        netc_store(out + index, producer(0.0f, index));
}
