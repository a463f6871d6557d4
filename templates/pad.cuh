// ---------------------------------------------------------------------------------------------
// pad.cuh: F.pad over the last RANK dimensions of a contiguous tensor: constant (a negative pad
// crops), reflect (mirror, the edge not repeated) or replicate (the edge repeated).
//
// Design note.
//   The tensor is viewed as [outer, d_0, ..., d_(RANK-1)]: `outer` (what is left of the
//   index) is never padded.
//   Thread: one output element. Walking the padded dims from the innermost, it turns the output
//           coordinate o into the input coordinate o - before: constant mode writes `value`
//           where that falls outside the input; reflect mirrors it once about each edge (pads
//           are smaller than the dim, so once suffices); replicate clamps it to the input.
//   Block:  BLOCK consecutive output elements: writes are coalesced, and so are reads along
//           the innermost dim.
//   Bytes:  each output element is written once and reads at most one input element.
//
// Launch: block BLOCK, grid.x = ceil(output elements / BLOCK).
// ---------------------------------------------------------------------------------------------

enum NetcPadMode { NETC_PAD_CONSTANT = 0, NETC_PAD_REFLECT = 1, NETC_PAD_REPLICATE = 2 };

template <typename T, int MODE, int RANK>
__device__ __forceinline__ void netc_pad(const T* __restrict__ x, T* __restrict__ y,
                                         long long total, const long long (&out_sizes)[RANK],
                                         const long long (&in_sizes)[RANK],
                                         const long long (&before)[RANK], float value)
{
    const long long index = netc_global_thread_index();
    if (index >= total)
        return;
    long long rest = index;
    long long offset = 0;
    long long in_stride = 1;
    bool inside = true;
#pragma unroll
    for (int d = RANK - 1; d >= 0; --d) {
        const long long out = rest % out_sizes[d];
        rest /= out_sizes[d];
        const long long size = in_sizes[d];
        long long in = out - before[d];
        if (MODE == NETC_PAD_CONSTANT) {
            inside = inside && in >= 0 && in < size;
        } else if (MODE == NETC_PAD_REFLECT) {
            in = in < 0 ? -in : in;
            in = in >= size ? 2 * (size - 1) - in : in;
        } else {
            in = in < 0 ? 0 : (in >= size ? size - 1 : in);
        }
        offset += in * in_stride;
        in_stride *= size;
    }
    offset += rest * in_stride;  // the unpadded outer dims
    netc_store(y + index, inside ? netc_load(x + offset) : value);
}
