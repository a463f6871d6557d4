// ---------------------------------------------------------------------------------------------
// triangle.cuh: `triu` and `tril`: x with the elements of each matrix (the last two dims) off
// one side of a diagonal set to zero, any dtype.
//
// Design note.
//   Thread: one element; its column is index % columns and its row (index / columns) % rows.
//           UPPER keeps column - row >= diagonal (triu), else column - row <= diagonal (tril),
//           PyTorch's numbering (0 the main diagonal, positive above it).
//   Block:  BLOCK consecutive elements: reads and writes are coalesced.
//   Bytes:  every element is read once and written once.
//
// Launch: block BLOCK, grid.x = ceil(total / BLOCK).
// ---------------------------------------------------------------------------------------------

template <bool UPPER, typename T>
__device__ __forceinline__ void netc_triangle(const T* __restrict__ x, T* __restrict__ out,
                                              long long total, long long rows,
                                              long long columns, long long diagonal)
{
    const long long index = netc_global_thread_index();
    if (index >= total)
        return;
    const long long column = index % columns;
    const long long row = (index / columns) % rows;
    const bool keep = UPPER ? column - row >= diagonal : column - row <= diagonal;
    typedef typename netc_compute<T>::type Value;
    netc_store(out + index, keep ? netc_load(x + index) : static_cast<Value>(0));
}
