// ---------------------------------------------------------------------------------------------
// pool_grad.cuh: the gradient of maxpool2d, avgpool2d and adaptive_avgpool2d with respect to
// their input (the internal op pool2d_grad), NCHW, PyTorch semantics, as a gather.
//
// Design note.
//   Thread: one input element (image, channel, y, x). The windows covering it are the output
//           rows oy with oy * stride_h - pad_top <= y < oy * stride_h - pad_top + kernel_h
//           (likewise columns): at most ceil(kernel / stride) along each axis. Adaptive
//           windows [floor(oy * H / h), ceil((oy + 1) * H / h)) overlap; those holding y are
//           exactly oy in [floor(y * h / H), ((y + 1) * h - 1) / H] (netc_covering), at most
//           ceil(h / H) + 1 of them. The thread adds
//           what each sends it, in row-major window order, and stores the sum once: no
//           scatter, no atomics, no zero fill, no padded copy. The sum goes through the
//           epilogue (fused pointwise ops of the backward pass, or none).
//           - avg: cotangent / the window's divisor, exactly as the forward divides
//             (pool.cuh's spans: count_include_pad counts the padded window clipped to the
//             padded input, else the real elements);
//           - adaptive: cotangent / the window's size, as the forward divides (the window
//             sizes walked without a division, NetcAdaptiveWalk);
//           - max: the whole cotangent if this element is the window's argmax as PyTorch's
//             kernels record it: the window's real elements in row-major order, the first
//             strictly larger than the running maximum (from -infinity) or any NaN replacing
//             it, starting from the first real element. The thread walks the window again for
//             that (kernel_h * kernel_w loads, mostly from cache).
//   Block:  BLOCK consecutive input elements (a row of one channel is contiguous).
//   Bytes:  the cotangent is read about kernel_h * kernel_w / (stride_h * stride_w) times
//           (adaptive: about (h / H + 1) * (w / W + 1) times; max: x that many times
//           kernel_h * kernel_w, from cache after the first), the gradient written once; x is
//           not read but by max.
//
// Launch: block BLOCK, grid.x = ceil(images * channels * height * width / BLOCK).
// ---------------------------------------------------------------------------------------------

// The output positions [first, last] whose windows hold input position `in` along one axis
// of `size` positions.
template <int KIND>
__device__ __forceinline__ void netc_covering(long long in, long long size, long long out_size,
                                              int kernel, int stride, int pad_before,
                                              long long& first, long long& last)
{
    if (KIND == NETC_POOL_ADAPTIVE_AVG) {
        // Window o starts at floor(o * size / out_size) <= in iff o * size < (in + 1) *
        // out_size, and ends at ceil((o + 1) * size / out_size) > in iff (o + 1) * size >
        // in * out_size, i.e. o >= floor(in * out_size / size). Both stay in [0, out_size).
        const unsigned long long divisor = size;
        first = static_cast<long long>(static_cast<unsigned long long>(in * out_size) / divisor);
        last = static_cast<long long>(static_cast<unsigned long long>((in + 1) * out_size - 1) /
                                      divisor);
        return;
    }
    const long long reach = in + pad_before;  // the position in the padded input
    first = reach < kernel ? 0 : (reach - kernel) / stride + 1;
    last = reach / stride;
    if (last > out_size - 1)
        last = out_size - 1;
}

// Adaptive windows along one axis, output position after output position, without dividing
// in the loop (a 64-bit division is a call, and a call in the loop spills): with
// out * size = quotient * out_size + remainder, window `out` begins at the quotient and ends
// at the next position's quotient, plus 1 if its remainder is not 0 (pool.cuh's floor and
// ceil, exactly).
struct NetcAdaptiveWalk {
    long long quotient, remainder, step_quotient, step_remainder, out_size;

    __device__ __forceinline__ NetcAdaptiveWalk(long long out, long long size, long long outs)
        : out_size(outs)
    {
        // Unsigned: the sizes are not negative, and the signed division is longer.
        const unsigned long long divisor = outs;
        quotient = static_cast<long long>(static_cast<unsigned long long>(out * size) / divisor);
        remainder = out * size - quotient * outs;
        step_quotient = static_cast<long long>(static_cast<unsigned long long>(size) / divisor);
        step_remainder = size - step_quotient * outs;
    }

    // The size of the current window; moves on to the next.
    __device__ __forceinline__ long long next()
    {
        const long long begin = quotient;
        quotient += step_quotient;
        remainder += step_remainder;
        if (remainder >= out_size) {
            remainder -= out_size;
            ++quotient;
        }
        return quotient + (remainder != 0 ? 1 : 0) - begin;
    }
};

// The position in its plane of the element PyTorch's maxpool records as the argmax of a
// window: the first strictly larger than the running maximum (from -infinity) or any NaN,
// starting from the window's first real element.
template <typename T>
__device__ __forceinline__ int netc_window_argmax(const T* plane, int width,
                                                  const NetcPoolSpan& rows,
                                                  const NetcPoolSpan& columns)
{
    float best = netc_negative_infinity();
    int chosen = static_cast<int>(rows.begin) * width + static_cast<int>(columns.begin);
    for (int row = static_cast<int>(rows.begin); row < static_cast<int>(rows.end); ++row) {
        for (int column = static_cast<int>(columns.begin); column < static_cast<int>(columns.end);
             ++column) {
            const float value = netc_load(plane + (row * width + column));
            if (value > best || isnan(value)) {
                best = value;
                chosen = row * width + column;
            }
        }
    }
    return chosen;
}

template <typename T, int KIND, class Epilogue>
__device__ __forceinline__ void netc_pool2d_grad(const T* __restrict__ x,
                                                 const T* __restrict__ dy, T* __restrict__ dx,
                                                 long long total, const NetcPoolGeometry& g,
                                                 const Epilogue& epilogue)
{
    const long long index = netc_global_thread_index();
    if (index >= total)  // total = images * channels * height * width
        return;
    // Within one plane, 32-bit positions (a plane holds fewer than 2^31 elements).
    const long long plane = index / (g.width * g.height);  // image * channels + channel
    const int within = static_cast<int>(index - plane * g.width * g.height);
    const int in_y = within / static_cast<int>(g.width);
    const int in_x = within - in_y * static_cast<int>(g.width);
    const T* input = x + plane * g.height * g.width;
    const T* cotangent = dy + plane * g.out_height * g.out_width;
    long long first_y, last_y, first_x, last_x;
    netc_covering<KIND>(in_y, g.height, g.out_height, g.kernel_h, g.stride_h, g.pad_top, first_y,
                        last_y);
    netc_covering<KIND>(in_x, g.width, g.out_width, g.kernel_w, g.stride_w, g.pad_left, first_x,
                        last_x);

    float sum = 0.0f;
    if (KIND == NETC_POOL_ADAPTIVE_AVG) {
        NetcAdaptiveWalk rows(first_y, g.height, g.out_height);
        const NetcAdaptiveWalk first_columns(first_x, g.width, g.out_width);
        for (int out_y = static_cast<int>(first_y); out_y <= static_cast<int>(last_y); ++out_y) {
            const long long window_rows = rows.next();
            NetcAdaptiveWalk columns = first_columns;
            for (int out_x = static_cast<int>(first_x); out_x <= static_cast<int>(last_x);
                 ++out_x) {
                const float share =
                    netc_load(cotangent + (out_y * static_cast<int>(g.out_width) + out_x));
                // One division by the window's size, as the forward divides (PyTorch divides
                // by the rows, then the columns: a second call to the division's slow path in
                // this loop spills; the two differ by an ulp at most).
                sum += share / static_cast<float>(window_rows * columns.next());
            }
        }
        netc_store(dx + index, epilogue(sum, index));
        return;
    }
    for (int out_y = static_cast<int>(first_y); out_y <= static_cast<int>(last_y); ++out_y) {
        const NetcPoolSpan rows = netc_pool_span<KIND>(out_y, g.height, g.out_height, g.kernel_h,
                                                       g.stride_h, g.pad_top, g.pad_bottom);
        for (int out_x = static_cast<int>(first_x); out_x <= static_cast<int>(last_x); ++out_x) {
            const NetcPoolSpan columns = netc_pool_span<KIND>(
                out_x, g.width, g.out_width, g.kernel_w, g.stride_w, g.pad_left, g.pad_right);
            const float share =
                netc_load(cotangent + (out_y * static_cast<int>(g.out_width) + out_x));
            if (KIND == NETC_POOL_AVG) {
                // At most kernel_h * kernel_w: 32 bits.
                const int count = g.count_include_pad
                    ? static_cast<int>(rows.padded_size * columns.padded_size)
                    : static_cast<int>((rows.end - rows.begin) * (columns.end - columns.begin));
                sum += share / static_cast<float>(count);
            } else if (netc_window_argmax(input, static_cast<int>(g.width), rows, columns) ==
                       within) {
                sum += share;
            }
        }
    }
    netc_store(dx + index, epilogue(sum, index));
}
