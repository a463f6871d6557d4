// ---------------------------------------------------------------------------------------------
// pool.cuh: maxpool2d, avgpool2d and adaptive_avgpool2d over NCHW, PyTorch semantics.
//
// Design note.
//   Thread: one output element (image, channel, y, x). It finds its window along each axis as
//           PyTorch does, then walks the window's real (unpadded) elements:
//           - windowed (max, avg): rows start = out_y * stride_h - pad_top and end at
//             min(start + kernel_h, height + pad_bottom) (a ceil-mode window may reach past the
//             padded input; that part does not exist); likewise columns.
//           - adaptive: rows floor(out_y * height / out_height) to
//             ceil((out_y + 1) * height / out_height); likewise columns.
//           Padding never wins a max (a max over a NaN is NaN, netc_max). An average divides
//           by the window's size clipped to the padded input (count_include_pad) or by the
//           number of its real elements (not). Every window holds a real element: padding is
//           at most half the kernel and a ceil-mode window never starts in the trailing
//           padding (netc's shape rule drops it).
//           The result goes through the epilogue (fused pointwise ops, or none).
//   Block:  BLOCK consecutive output elements (a row of output pixels of one channel is
//           contiguous, so a warp reads neighbouring windows).
//   Bytes:  each input element is read about kernel_h * kernel_w / (stride_h * stride_w)
//           times (once per window covering it; from cache after the first), each output
//           element is written once.
//
// Launch: block BLOCK, grid.x = ceil(images * channels * out_height * out_width / BLOCK).
// ---------------------------------------------------------------------------------------------

enum NetcPoolKind { NETC_POOL_MAX = 0, NETC_POOL_AVG = 1, NETC_POOL_ADAPTIVE_AVG = 2 };

struct NetcPoolGeometry {
    long long channels, height, width, out_height, out_width;
    int kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right;
    bool count_include_pad;
};

// [begin, end) of output position `out` along one axis; `padded_end` is where the padded
// input ends (a window's size counts up to there).
struct NetcPoolSpan {
    long long begin, end, padded_size;
};

template <int KIND>
__device__ __forceinline__ NetcPoolSpan netc_pool_span(long long out, long long size,
                                                       long long out_size, int kernel,
                                                       int stride, int pad_before,
                                                       int pad_after)
{
    if (KIND == NETC_POOL_ADAPTIVE_AVG) {
        const long long begin = out * size / out_size;
        const long long end = ((out + 1) * size + out_size - 1) / out_size;
        return {begin, end, end - begin};
    }
    const long long start = out * stride - pad_before;
    const long long stop = min(start + kernel, size + pad_after);
    return {max(start, 0LL), min(stop, size), stop - start};
}

template <typename T, int KIND, class Epilogue>
__device__ __forceinline__ void netc_pool2d(const T* __restrict__ x, T* __restrict__ y,
                                            long long total, const NetcPoolGeometry& g,
                                            const Epilogue& epilogue)
{
    const long long index = netc_global_thread_index();
    if (index >= total)  // total = images * channels * out_height * out_width
        return;
    const long long out_x = index % g.out_width;
    const long long out_y = (index / g.out_width) % g.out_height;
    const long long plane = index / (g.out_width * g.out_height);  // image * channels + channel
    const T* input = x + plane * g.height * g.width;
    const NetcPoolSpan rows = netc_pool_span<KIND>(out_y, g.height, g.out_height, g.kernel_h,
                                                   g.stride_h, g.pad_top, g.pad_bottom);
    const NetcPoolSpan columns = netc_pool_span<KIND>(out_x, g.width, g.out_width, g.kernel_w,
                                                      g.stride_w, g.pad_left, g.pad_right);

    float result = KIND == NETC_POOL_MAX ? netc_negative_infinity() : 0.0f;
    for (long long in_y = rows.begin; in_y < rows.end; ++in_y) {
        for (long long in_x = columns.begin; in_x < columns.end; ++in_x) {
            const float value = netc_load(input + in_y * g.width + in_x);
            result = KIND == NETC_POOL_MAX ? netc_max(result, value) : result + value;
        }
    }
    if (KIND != NETC_POOL_MAX) {
        const long long count = g.count_include_pad
            ? rows.padded_size * columns.padded_size
            : (rows.end - rows.begin) * (columns.end - columns.begin);
        result /= static_cast<float>(count);
    }
    netc_store(y + index, epilogue(result, index));
}
