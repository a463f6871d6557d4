// ---------------------------------------------------------------------------------------------
// interpolate_grad.cuh: the gradient of interpolate with respect to its input (the internal op
// interpolate_grad), nearest or bilinear, with or without align_corners, as a gather.
//
// Design note.
//   Thread: one input element (plane, y, x). Along each axis, the outputs that read input
//           position i are a run of consecutive positions, since the forward's source index
//           never decreases along the output:
//           - nearest: the outputs whose source is i, [reach(i), reach(i + 1));
//           - bilinear: the outputs whose two neighbours include i: the first neighbour is i,
//             or i - 1 with the second one i (the second is the first + 1, except at the last
//             input and where m = n, where both are the same), so within
//             [reach(i - 1), reach(i + 1)), each checked;
//           where reach(t) is the first output whose source (first neighbour) is at least t:
//           estimated from the inverse of the forward's mapping (o = t / r, or (t + 0.5) / r -
//           0.5), then corrected by evaluating the forward's own index functions
//           (interpolate.cuh) on each side, so that rounding never assigns an output to the
//           wrong input. The thread adds, in row-major output order, each dy (nearest) or
//           (row weight * column weight) * dy for each of the output's neighbour pairs that is
//           (y, x) (bilinear; the weight of the first neighbour 1 - λ, of the second λ), in
//           the order PyTorch's CPU kernel adds them (on the simulator both modes match it
//           bit for bit), and stores the sum once through the epilogue (fused pointwise ops of the backward
//           pass, or none): no scatter, no atomics, no zero fill.
//   Block:  BLOCK consecutive input elements (a row of one plane is contiguous).
//   Bytes:  dy is read once (nearest) or up to about four times (bilinear), dx written once;
//           x is not read (its shape is the launch's).
//
// Launch: block BLOCK, grid.x = ceil(planes * height * width / BLOCK).
// ---------------------------------------------------------------------------------------------

// The source index (nearest) or first neighbour (bilinear) of output position `out`.
template <bool BILINEAR, bool ALIGN_CORNERS>
__device__ __forceinline__ long long netc_resize_source(long long out, const NetcResizeAxis& a)
{
    if (!BILINEAR)
        return netc_nearest_source(out, a);
    long long first, second;
    float weight;
    netc_linear_source<ALIGN_CORNERS>(out, a, first, second, weight);
    return first;
}

// The first output position whose source index (first neighbour) is at least `target`
// (out_size if none).
template <bool BILINEAR, bool ALIGN_CORNERS>
__device__ __forceinline__ long long netc_resize_reach(long long target, const NetcResizeAxis& a)
{
    if (target <= 0)
        return 0;
    if (target >= a.size)  // sources stay below size
        return a.out_size;
    const float inverse = BILINEAR && !ALIGN_CORNERS
        ? (static_cast<float>(target) + 0.5f) / a.ratio - 0.5f
        : static_cast<float>(target) / a.ratio;
    long long out = a.ratio > 0.0f
        ? static_cast<long long>(fminf(fmaxf(inverse, 0.0f), static_cast<float>(a.out_size)))
        : 0;
    while (out > 0 && netc_resize_source<BILINEAR, ALIGN_CORNERS>(out - 1, a) >= target)
        --out;
    while (out < a.out_size && netc_resize_source<BILINEAR, ALIGN_CORNERS>(out, a) < target)
        ++out;
    return out;
}

// What output position `out` sends input position `in` along one axis: its weight as the
// first neighbour and as the second (nearest: as its source), each with whether `in` is that
// neighbour.
struct NetcResizeTerms {
    float first_weight, second_weight;
    bool first, second;
};

template <bool BILINEAR, bool ALIGN_CORNERS>
__device__ __forceinline__ NetcResizeTerms netc_resize_terms(long long out, long long in,
                                                             const NetcResizeAxis& a)
{
    if (!BILINEAR)
        return {1.0f, 0.0f, true, false};  // the run holds exactly the outputs that copy `in`
    long long first, second;
    float second_weight;
    netc_linear_source<ALIGN_CORNERS>(out, a, first, second, second_weight);
    return {1.0f - second_weight, second_weight, first == in, second == in};
}

template <typename T, bool BILINEAR, bool ALIGN_CORNERS, class Epilogue>
__device__ __forceinline__ void netc_interpolate_grad(const T* __restrict__ dy,
                                                      T* __restrict__ dx, long long total,
                                                      const NetcResizeAxis& rows,
                                                      const NetcResizeAxis& columns,
                                                      const Epilogue& epilogue)
{
    const long long index = netc_global_thread_index();
    if (index >= total)  // total = planes * height * width
        return;
    const long long in_x = index % columns.size;
    const long long in_y = (index / columns.size) % rows.size;
    const long long plane = index / (columns.size * rows.size);
    const T* cotangent = dy + plane * rows.out_size * columns.out_size;
    // Bilinear: from the outputs whose first neighbour is the previous input.
    const long long before = BILINEAR ? 1 : 0;
    const long long first_y = netc_resize_reach<BILINEAR, ALIGN_CORNERS>(in_y - before, rows);
    const long long end_y = netc_resize_reach<BILINEAR, ALIGN_CORNERS>(in_y + 1, rows);
    const long long first_x = netc_resize_reach<BILINEAR, ALIGN_CORNERS>(in_x - before, columns);
    const long long end_x = netc_resize_reach<BILINEAR, ALIGN_CORNERS>(in_x + 1, columns);

    // Each output's terms in PyTorch's order (top-left, top-right, bottom-left, bottom-right),
    // each (row weight * column weight) * dy, so a weight of 0 times an infinite dy is NaN
    // there as here.
    float sum = 0.0f;
    for (long long out_y = first_y; out_y < end_y; ++out_y) {
        const NetcResizeTerms row = netc_resize_terms<BILINEAR, ALIGN_CORNERS>(out_y, in_y, rows);
        if (!row.first && !row.second)
            continue;
        const T* cotangent_row = cotangent + out_y * columns.out_size;
        for (long long out_x = first_x; out_x < end_x; ++out_x) {
            const NetcResizeTerms column =
                netc_resize_terms<BILINEAR, ALIGN_CORNERS>(out_x, in_x, columns);
            if (!column.first && !column.second)
                continue;
            const float share = netc_load(cotangent_row + out_x);
            if (!BILINEAR) {
                sum += share;
                continue;
            }
            for (int part = 0; part < 2; ++part) {
                const bool row_holds = part == 0 ? row.first : row.second;
                const float row_weight = part == 0 ? row.first_weight : row.second_weight;
                if (!row_holds)
                    continue;
                if (column.first)
                    sum += row_weight * column.first_weight * share;
                if (column.second)
                    sum += row_weight * column.second_weight * share;
            }
        }
    }
    netc_store(dx + index, epilogue(sum, index));
}
