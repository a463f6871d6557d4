// ---------------------------------------------------------------------------------------------
// concat.cuh: concat along any axis, one launch per input.
//
// Design note.
//   Seen from the concat axis, the output is `outer` slabs of `pitch` = out_axis * inner
//   elements, and an input is `outer` slabs of `chunk` = in_axis * inner elements that land at
//   `offset` (the input's first axis index * inner) inside each output slab.
//   Thread: copies one element of the input, bit for bit (same dtype, no conversion).
//   Block:  BLOCK consecutive input elements: reads are coalesced, and so are writes within a
//           slab.
//   Bytes:  every input element is read once and every output element written once (by the
//           launch of the input it comes from).
//
// Launch: block BLOCK, grid.x = ceil(input elements / BLOCK).
// ---------------------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ void netc_concat_copy(const T* __restrict__ input, T* __restrict__ out,
                                                 long long total, long long chunk,
                                                 long long pitch, long long offset)
{
    const long long index = netc_global_thread_index();
    if (index >= total)
        return;
    out[(index / chunk) * pitch + offset + index % chunk] = input[index];
}
