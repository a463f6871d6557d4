// ---------------------------------------------------------------------------------------------
// depthwise_conv2d.cuh: conv2d with groups = in_channels (depthwise; out_channels =
// multiplier * in_channels) over NCHW, as a direct convolution: any kernel size (a template
// constant), stride, 4-sided padding, dilation and multiplier, optional bias, fused epilogue.
//
// Design note.
//   Output channel c reads input channel c / multiplier through its own kernel_h x kernel_w
//   filter (weight [out_channels, 1, kh, kw]); there is no reduction over channels, so a GEMM
//   would have K = kh * kw and one row per group: this kernel computes the sums directly.
//   Thread: COLUMNS consecutive outputs of one output row of one (image, channel) plane, in
//           float registers (f16/bf16 accumulate in float too). For each tap it loads the tap
//           once and the COLUMNS input elements under it, through the read-only path (const
//           __restrict__), and adds tap * input to each accumulator: a tap is used COLUMNS
//           times from a register, a row of inputs is read from L1 by the neighbouring taps.
//           A tap over the padding multiplies 0 (an inf or NaN tap there gives NaN, as the
//           zero-padded reference and the implicit GEMM do); the bias and the epilogue (fused
//           pointwise ops, or none) are applied once per stored element, by the thread storing
//           it.
//   Block:  THREADS threads over `channels_per_block` planes (consecutive channels of one
//           image) times `positions_per_block` positions of a plane, a position being a
//           (row, COLUMNS-wide segment) pair: a small plane (7 x 7) shares a block with its
//           neighbours, a large one spans several blocks along grid.y. The lowering chooses the
//           split (positions_per_block = min(positions, THREADS), channels_per_block =
//           THREADS / positions_per_block). Consecutive threads own consecutive segments of a
//           row, so a warp reads and writes neighbouring elements; a warp shares its channel's
//           taps (one broadcast load each).
//   Index:  all divisions are 32-bit (a thread's plane and position from threadIdx.x, the
//           image and channel block from blockIdx.x); offsets into the tensors are 64-bit.
//   Bytes:  each output element is written once; each input element is read about
//           kernel_h * kernel_w / (stride_h * stride_w) times per output channel reading it
//           (mostly from L1), each tap once per thread, the bias once per thread.
//
// Launch: block THREADS; grid.x = images * ceil(out_channels / channels_per_block) (grows with
// the batch), grid.y = ceil(out_height * ceil(out_width / COLUMNS) / positions_per_block); no
// shared memory.
// ---------------------------------------------------------------------------------------------

struct NetcDepthwiseGeometry {
    long long channels, height, width;              // input, per image
    long long out_channels, out_height, out_width;  // output, per image
    int stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w;
    int positions_per_block, channels_per_block;    // the launch's split of a block
};

template <typename T, int KERNEL_H, int KERNEL_W, int COLUMNS, bool HAS_BIAS, class Epilogue>
__device__ __forceinline__ void netc_depthwise_conv2d(const T* __restrict__ x,
                                                      const T* __restrict__ weight,
                                                      const T* __restrict__ bias,
                                                      T* __restrict__ y,
                                                      const NetcDepthwiseGeometry& g,
                                                      const Epilogue& epilogue)
{
    // This thread's plane and position in the block, then the block's image and channels.
    const int thread = static_cast<int>(threadIdx.x);
    const int plane_in_block = thread / g.positions_per_block;
    if (plane_in_block >= g.channels_per_block)  // threads past the last whole plane
        return;
    const int out_channels = static_cast<int>(g.out_channels);
    const int channel_blocks =
        (out_channels + g.channels_per_block - 1) / g.channels_per_block;
    const int image = static_cast<int>(blockIdx.x / static_cast<unsigned>(channel_blocks));
    const int channel = (static_cast<int>(blockIdx.x) - image * channel_blocks) *
        g.channels_per_block + plane_in_block;
    const int out_height = static_cast<int>(g.out_height);
    const int out_width = static_cast<int>(g.out_width);
    const int segments = (out_width + COLUMNS - 1) / COLUMNS;
    const int position = static_cast<int>(blockIdx.y) * g.positions_per_block +
        (thread - plane_in_block * g.positions_per_block);
    if (channel >= out_channels || position >= out_height * segments)
        return;
    const int out_y = position / segments;
    const int out_x = (position - out_y * segments) * COLUMNS;  // the first of COLUMNS

    const int height = static_cast<int>(g.height);
    const int width = static_cast<int>(g.width);
    const int multiplier = out_channels / static_cast<int>(g.channels);
    const T* input =
        x + (static_cast<long long>(image) * g.channels + channel / multiplier) * height * width;
    const T* taps = weight + static_cast<long long>(channel) * (KERNEL_H * KERNEL_W);
    const int top = out_y * g.stride_h - g.pad_top;
    const int left = out_x * g.stride_w - g.pad_left;

    float sums[COLUMNS];
#pragma unroll
    for (int column = 0; column < COLUMNS; ++column)
        sums[column] = 0.0f;
#pragma unroll
    for (int kernel_y = 0; kernel_y < KERNEL_H; ++kernel_y) {
        const int in_y = top + kernel_y * g.dilation_h;
        const bool row_inside = in_y >= 0 && in_y < height;
        const T* row = input + static_cast<long long>(row_inside ? in_y : 0) * width;
#pragma unroll
        for (int kernel_x = 0; kernel_x < KERNEL_W; ++kernel_x) {
            const float tap = netc_load(taps + kernel_y * KERNEL_W + kernel_x);
#pragma unroll
            for (int column = 0; column < COLUMNS; ++column) {
                const int in_x = left + column * g.stride_w + kernel_x * g.dilation_w;
                const bool inside = row_inside && in_x >= 0 && in_x < width;
                sums[column] += tap * (inside ? netc_load(row + in_x) : 0.0f);
            }
        }
    }

    const float shift = HAS_BIAS ? netc_load(bias + channel) : 0.0f;
    const long long first = ((static_cast<long long>(image) * out_channels + channel) *
                             out_height + out_y) * out_width + out_x;
#pragma unroll
    for (int column = 0; column < COLUMNS; ++column) {
        if (out_x + column < out_width) {
            const long long offset = first + column;
            const float value = HAS_BIAS ? sums[column] + shift : sums[column];
            netc_store(y + offset, epilogue(value, offset));
        }
    }
}
