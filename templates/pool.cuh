// ---------------------------------------------------------------------------------------------
// pool.cuh: maxpool2d and avgpool2d over NCHW, PyTorch semantics (floor mode).
//
// Design note.
//   Thread: one output element (image, channel, y, x); it walks its kernel_h x kernel_w window
//           and skips taps in the padding: padding never wins a max, and an average divides by
//           the number of real elements in the window (count_include_pad=False). PyTorch keeps
//           padding at most half the kernel, so every window holds a real element.
//           The result goes through the epilogue (fused pointwise ops, or none).
//   Block:  BLOCK consecutive output elements (a row of output pixels of one channel is
//           contiguous, so a warp reads neighbouring windows).
//   Bytes:  each input element is read about kernel_h * kernel_w / (stride_h * stride_w)
//           times (once per window covering it; from cache after the first), each output
//           element is written once.
//
// Launch: block BLOCK, grid.x = ceil(images * channels * out_height * out_width / BLOCK).
// ---------------------------------------------------------------------------------------------

struct NetcPoolGeometry {
    long long channels, height, width, out_height, out_width;
    int kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left;
};

template <typename T, bool IS_MAX, class Epilogue>
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
    const long long y0 = out_y * g.stride_h - g.pad_top;
    const long long x0 = out_x * g.stride_w - g.pad_left;

    float result = IS_MAX ? netc_negative_infinity() : 0.0f;
    int count = 0;
    for (int dy = 0; dy < g.kernel_h; ++dy) {
        const long long in_y = y0 + dy;
        if (in_y < 0 || in_y >= g.height)
            continue;
        for (int dx = 0; dx < g.kernel_w; ++dx) {
            const long long in_x = x0 + dx;
            if (in_x < 0 || in_x >= g.width)
                continue;
            const float value = netc_load(input + in_y * g.width + in_x);
            result = IS_MAX ? netc_max(result, value) : result + value;
            ++count;
        }
    }
    netc_store(y + index, epilogue(IS_MAX ? result : result / static_cast<float>(count), index));
}
