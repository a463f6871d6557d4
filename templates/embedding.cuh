// ---------------------------------------------------------------------------------------------
// embedding.cuh: out[r, j] = table[ids[r], j], the rows of a table picked by integer ids
// (`embedding`, nn.Embedding; ONNX Gather on axis 0).
//
// Design note.
//   Thread: one output element (r, j): reads id r (i32 or i64) and element j of that row.
//           An id outside [0, rows) is never used as an address: the element is NaN (PyTorch
//           raises an error there; a kernel cannot).
//   Block:  BLOCK consecutive output elements, so writes and the reads of each table row are
//           coalesced; the ids of a block are a few, read from cache.
//   Bytes:  every output element is written once; each id is read `dim` times (from cache),
//           each table element once per id that picks its row.
//
// Launch: block BLOCK, grid.x = ceil(ids * dim / BLOCK).
// ---------------------------------------------------------------------------------------------

template <typename T, typename I>
__device__ __forceinline__ void netc_embedding(const I* __restrict__ ids,
                                               const T* __restrict__ table, T* __restrict__ out,
                                               long long total, long long dim, long long rows)
{
    const long long index = netc_global_thread_index();
    if (index >= total)
        return;
    const long long position = index / dim;
    const long long id = static_cast<long long>(ids[position]);
    const bool inside = id >= 0 && id < rows;
    netc_store(out + index,
               inside ? netc_load(table + id * dim + (index - position * dim))
                      : netc_quiet_nan());
}
