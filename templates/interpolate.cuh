// ---------------------------------------------------------------------------------------------
// interpolate.cuh: F.interpolate over the last two dims of NCHW, nearest or bilinear, with
// PyTorch's index rules (netc.ops.spatial's docstring gives them; the ratios come in as float
// arguments computed as PyTorch computes them).
//
// Design note.
//   Thread: one output element (plane, y, x). Nearest: reads the one input element
//           (min(floor(y * ratio_h), H - 1), likewise x; m = n copies, m = 2n halves). Bilinear:
//           reads the four neighbours and blends them as PyTorch's CPU kernel does,
//           w0_h * (w0_w * x00 + w1_w * x01) + w1_h * (w0_w * x10 + w1_w * x11), so a NaN
//           neighbour spreads even at weight 0, as there.
//   Block:  BLOCK consecutive output elements (a row of output pixels of one plane is
//           contiguous): writes are coalesced, reads hit neighbouring input rows.
//   Bytes:  each output element is written once; each input element is read about
//           (m_h / n_h) * (m_w / n_w) times (nearest) or up to four times that (bilinear),
//           repeats from cache.
//
// Launch: block BLOCK, grid.x = ceil(planes * out_height * out_width / BLOCK).
// ---------------------------------------------------------------------------------------------

struct NetcResizeAxis {
    long long size, out_size;
    float ratio;
};

__device__ __forceinline__ long long netc_nearest_source(long long out, const NetcResizeAxis& a)
{
    if (a.out_size == a.size)
        return out;
    if (a.out_size == 2 * a.size)
        return out >> 1;
    const long long source = static_cast<long long>(floorf(static_cast<float>(out) * a.ratio));
    return source < a.size - 1 ? source : a.size - 1;
}

// The two neighbours of output position `out` along one axis and the second one's weight.
template <bool ALIGN_CORNERS>
__device__ __forceinline__ void netc_linear_source(long long out, const NetcResizeAxis& a,
                                                   long long& first, long long& second,
                                                   float& weight)
{
    if (a.out_size == a.size) {
        first = second = out;
        weight = 0.0f;
        return;
    }
    const float position = static_cast<float>(out);
    // One rounding (fmaf), as PyTorch's CPU kernel and netc's reference compute it.
    float source = ALIGN_CORNERS ? a.ratio * position : fmaf(a.ratio, position + 0.5f, -0.5f);
    source = source < 0.0f ? 0.0f : source;
    first = static_cast<long long>(floorf(source));
    first = first < a.size - 1 ? first : a.size - 1;
    second = first + (first < a.size - 1 ? 1 : 0);
    weight = fminf(fmaxf(source - static_cast<float>(first), 0.0f), 1.0f);
}

template <typename T, bool BILINEAR, bool ALIGN_CORNERS>
__device__ __forceinline__ void netc_interpolate(const T* __restrict__ x, T* __restrict__ y,
                                                 long long total, const NetcResizeAxis& rows,
                                                 const NetcResizeAxis& columns)
{
    const long long index = netc_global_thread_index();
    if (index >= total)  // total = planes * out_height * out_width
        return;
    const long long out_x = index % columns.out_size;
    const long long out_y = (index / columns.out_size) % rows.out_size;
    const long long plane = index / (columns.out_size * rows.out_size);
    const T* input = x + plane * rows.size * columns.size;
    if (!BILINEAR) {
        const long long in_y = netc_nearest_source(out_y, rows);
        const long long in_x = netc_nearest_source(out_x, columns);
        y[index] = input[in_y * columns.size + in_x];  // a copy, bit for bit
        return;
    }
    long long top, bottom, left, right;
    float bottom_weight, right_weight;
    netc_linear_source<ALIGN_CORNERS>(out_y, rows, top, bottom, bottom_weight);
    netc_linear_source<ALIGN_CORNERS>(out_x, columns, left, right, right_weight);
    const float top_weight = 1.0f - bottom_weight;
    const float left_weight = 1.0f - right_weight;
    const T* upper = input + top * columns.size;
    const T* lower = input + bottom * columns.size;
    const float blend =
        top_weight * (left_weight * netc_load(upper + left) + right_weight * netc_load(upper + right))
        + bottom_weight * (left_weight * netc_load(lower + left) +
                           right_weight * netc_load(lower + right));
    netc_store(y + index, blend);
}
