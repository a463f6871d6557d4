// ---------------------------------------------------------------------------------------------
// conv_transpose2d.cuh: conv_transpose2d (NCHW, any stride, padding, output_padding,
// dilation, groups, optional bias) as an implicit GEMM on the tiles of gemm.cuh, gathering
// instead of scattering (no atomics, each output element written once by one thread).
//
// Design note.
//   For one group g the transposed convolution is a GEMM:
//     M = out_channels / groups          (m: an output channel of the group)
//     N = images * out_height * out_width (n: an output pixel of one image)
//     K = in_channels / groups * kernel_h * kernel_w   (k: (input channel, ky, kx))
//   A(m, k) is weight[g · in/groups + c, m, ky, kx] of the [in, out/groups, kh, kw] weight.
//   B(k, n) is the input pixel that tap (ky, kx) carries onto output pixel (oy, ox):
//   iy = (oy + pad_top - ky · dilation_h) / stride_h when that divides exactly and lands in
//   the input, else 0 (likewise ix); output_padding only makes the output larger. C(m, n) plus
//   the bias goes through the epilogue into the NCHW output (conv2d.cuh's store).
//   Block:  one BM x BN tile of C of one group. Thread: a TM x TN register tile (gemm.cuh).
//   Bytes:  each weight is read ceil(N / BN) times, each input element about
//           kernel_h * kernel_w * ceil(M / BM) times over the pixels it reaches, each output
//           element is written once.
//
// Launch: block THREADS; grid.x = ceil(N / BN) (N grows with the images), grid.y = ceil(M / BM),
// grid.z = groups; shared memory as gemm.cuh.
// ---------------------------------------------------------------------------------------------

// A(m, k) of one group: the weight of input channel k / taps, output channel m, tap k % taps.
template <typename T>
struct NetcTransposedWeightSource {
    static constexpr bool K_CONTIGUOUS = true;  // taps of one input channel are contiguous
    const T* weight;   // the group's first input channel
    int taps;          // kernel_h * kernel_w
    int channel_pitch; // out_channels / groups * taps: one input channel's weights

    struct Column {
        const T* first;  // weight[c = 0, m, 0, 0]
    };

    __device__ __forceinline__ Column column(long long m) const { return {weight + m * taps}; }

    __device__ __forceinline__ float at(const Column& column, long long k) const
    {
        const int channel = static_cast<int>(k) / taps;
        const int tap = static_cast<int>(k) - channel * taps;
        return netc_load(column.first + (channel * channel_pitch + tap));
    }
};

// B(k, n) of one group: the input pixel tap k carries onto output pixel n, or 0.
template <typename T>
struct NetcTransposedSource {
    static constexpr bool K_CONTIGUOUS = false;  // consecutive n are neighbouring pixels
    const T* x;  // the group's first input channel of image 0
    NetcConvGeometry geometry;
    NetcPixelCursor cursor;

    struct Column {
        const T* image;  // the group's first input channel of the pixel's image
        int top, left;   // output row and column plus the padding
    };

    __device__ __forceinline__ Column column(long long pixel) const
    {
        const NetcConvGeometry& g = geometry;
        long long image;
        int within;
        cursor.locate(pixel, image, within);
        const int out_y = within / static_cast<int>(g.out_width);
        const int out_x = within - out_y * static_cast<int>(g.out_width);
        return {x + image * g.in_channels * g.height * g.width, out_y + g.pad_top,
                out_x + g.pad_left};
    }

    __device__ __forceinline__ float at(const Column& column, long long tap) const
    {
        const NetcConvGeometry& g = geometry;
        const NetcConvTap t = netc_conv_tap(tap, g);
        const int channel = t.channel, kernel_y = t.kernel_y, kernel_x = t.kernel_x;
        // Unsigned: a negative span wraps past the input and fails the bounds check. The tap
        // reaches an input pixel only where the stride divides the span exactly.
        const unsigned span_y = static_cast<unsigned>(column.top - kernel_y * g.dilation_h);
        const unsigned span_x = static_cast<unsigned>(column.left - kernel_x * g.dilation_w);
        const unsigned in_y = span_y / static_cast<unsigned>(g.stride_h);
        const unsigned in_x = span_x / static_cast<unsigned>(g.stride_w);
        if (in_y * g.stride_h != span_y || in_x * g.stride_w != span_x ||
            in_y >= static_cast<unsigned>(g.height) || in_x >= static_cast<unsigned>(g.width))
            return 0.0f;
        return netc_load(column.image + (channel * g.height + static_cast<int>(in_y)) * g.width +
                         static_cast<int>(in_x));
    }
};

template <typename T, int BM, int BN, int BK, int TM, int TN, bool HAS_BIAS, class Epilogue>
__device__ __forceinline__ void netc_conv_transpose2d(
    const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
    T* __restrict__ y, long long images, const NetcConvGeometry& geometry,
    const Epilogue& epilogue)
{
    const int group = blockIdx.z;
    const int group_in = static_cast<int>(geometry.in_channels) / geometry.groups;
    const int group_out = static_cast<int>(geometry.out_channels) / geometry.groups;
    const int taps = geometry.kernel_h * geometry.kernel_w;
    const long long pixels = geometry.out_height * geometry.out_width;
    const long long m = group_out;
    const long long n = images * pixels;
    const long long k = static_cast<long long>(group_in) * taps;
    const long long m0 = static_cast<long long>(blockIdx.y) * BM;
    const long long n0 = static_cast<long long>(blockIdx.x) * BN;
    const NetcPixelCursor cursor(n0, pixels);

    const NetcTransposedWeightSource<T> a_source{
        weight + static_cast<long long>(group) * group_in * group_out * taps, taps,
        group_out * taps};
    const NetcTransposedSource<T> b_source{
        x + static_cast<long long>(group) * group_in * geometry.height * geometry.width,
        geometry, cursor};

    NETC_DYNAMIC_SHARED(float, shared);
    float acc[TM][TN];
    netc_gemm_mainloop<BM, BN, BK, TM, TN>(a_source, b_source, m0, n0, m, n, k, shared, acc);
    const NetcConvStore<T, HAS_BIAS, Epilogue> store{
        y, HAS_BIAS ? bias + group * group_out : bias, geometry.out_channels,
        static_cast<long long>(group) * group_out, cursor, epilogue};
    netc_gemm_epilogue<BM, BN, TM, TN>(acc, m0, n0, m, n, store);
}
