// ---------------------------------------------------------------------------------------------
// conv2d.cuh: conv2d (NCHW, any stride, padding, dilation, groups, optional bias) as an
// implicit GEMM on the tile structure of gemm.cuh.
//
// Design note.
//   For one group g the convolution is a GEMM:
//     M = out_channels / groups          (m: an output channel of the group)
//     N = images * out_height * out_width (n: an output pixel of one image)
//     K = in_channels / groups * kernel_h * kernel_w   (k: (input channel, kh, kw))
//   A(m, k) is the weight [out_channels, in_channels / groups, kh, kw] read as a row-major
//   [M, K] matrix; B(k, n) is the im2col view of the input, gathered while staging the tile
//   (never materialised), zero in the padding. C(m, n) plus the bias goes through the
//   epilogue (fused pointwise ops, or none) straight into the NCHW output.
//   Block:  one BM x BN tile of C (BM output channels x BN output pixels) of one group.
//   Thread: a TM x TN register tile, as in gemm.cuh; consecutive threads own consecutive
//           pixels, so the output stores of a warp are consecutive in memory.
//   Bytes:  each weight is read ceil(N / BN) times, each input element about
//           kernel_h * kernel_w / (stride_h * stride_w) * ceil(M / BM) times (once per window
//           that covers it, per channel tile), each output element is written once.
//
// Launch: block THREADS; grid.x = ceil(N / BN) (N grows with the images), grid.y = ceil(M / BM),
// grid.z = groups; shared memory as gemm.cuh.
// ---------------------------------------------------------------------------------------------

struct NetcConvGeometry {
    long long in_channels, height, width;          // input, per image
    long long out_channels, out_height, out_width;  // output, per image
    int kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w;
    int groups;
};

// Splits output pixels n (counted over all images) into (image, pixel within the image)
// without a 64-bit division per element (a slow subroutine call that also made the kernel
// spill): the block's first pixel n0 is split once, and every pixel the block touches lies
// less than BN past it. A plane of one image holds fewer than 2^31 - BN pixels.
struct NetcPixelCursor {
    long long first;        // n0
    long long first_image;  // n0's image
    int first_within;       // n0's pixel within its image
    int pixels;             // out_height * out_width

    __device__ __forceinline__ NetcPixelCursor(long long n0, long long pixels_per_image)
        : first(n0), first_image(n0 / pixels_per_image),
          first_within(static_cast<int>(n0 - first_image * pixels_per_image)),
          pixels(static_cast<int>(pixels_per_image))
    {
    }

    __device__ __forceinline__ void locate(long long pixel, long long& image, int& within) const
    {
        const int offset = first_within + static_cast<int>(pixel - first);
        const int images_on = offset / pixels;
        image = first_image + images_on;
        within = offset - images_on * pixels;
    }
};

// B(k, n) of one group: the input element under kernel tap k of output pixel n, or 0 in the
// padding. A column is one output pixel: where its image starts and where its window's top
// left corner falls.
template <typename T>
struct NetcIm2colSource {
    static constexpr bool K_CONTIGUOUS = false;  // consecutive n are neighbouring pixels
    const T* x;  // the group's first input channel of image 0
    NetcConvGeometry geometry;
    NetcPixelCursor cursor;

    struct Column {
        const T* image;  // the group's first input channel of the pixel's image
        int top, left;   // input row and column under kernel tap (0, 0)
    };

    __device__ __forceinline__ Column column(long long pixel) const
    {
        const NetcConvGeometry& g = geometry;
        long long image;
        int within;
        cursor.locate(pixel, image, within);
        const int out_y = within / static_cast<int>(g.out_width);
        const int out_x = within - out_y * static_cast<int>(g.out_width);
        return {x + image * g.in_channels * g.height * g.width,
                out_y * g.stride_h - g.pad_top, out_x * g.stride_w - g.pad_left};
    }

    __device__ __forceinline__ float at(const Column& column, long long tap) const
    {
        const NetcConvGeometry& g = geometry;
        const int window = g.kernel_h * g.kernel_w;
        const int channel = static_cast<int>(tap) / window;
        const int within = static_cast<int>(tap) - channel * window;
        const int kernel_y = within / g.kernel_w;
        const int kernel_x = within - kernel_y * g.kernel_w;
        const int in_y = column.top + kernel_y * g.dilation_h;
        const int in_x = column.left + kernel_x * g.dilation_w;
        if (in_y < 0 || in_y >= g.height || in_x < 0 || in_x >= g.width)
            return 0.0f;
        return netc_load(column.image + (channel * g.height + in_y) * g.width + in_x);
    }
};

// Stores output[image, channel, y, x] = epilogue(value + bias[channel], offset) for C(m, n) of
// one group; `offset` is the element's offset in the whole output.
template <typename T, bool HAS_BIAS, class Epilogue>
struct NetcConvStore {
    T* y;
    const T* bias;  // the group's first bias
    long long out_channels;
    long long first_channel;  // the group's first output channel
    NetcPixelCursor cursor;
    Epilogue epilogue;

    __device__ __forceinline__ void operator()(long long channel, long long pixel,
                                               float value) const
    {
        if (HAS_BIAS)
            value += netc_load(bias + channel);
        long long image;
        int within;
        cursor.locate(pixel, image, within);
        const long long offset =
            (image * out_channels + first_channel + channel) * cursor.pixels + within;
        netc_store(y + offset, epilogue(value, offset));
    }
};

template <typename T, int BM, int BN, int BK, int TM, int TN, bool HAS_BIAS, class Epilogue>
__device__ __forceinline__ void netc_conv2d(const T* __restrict__ x, const T* __restrict__ weight,
                                            const T* __restrict__ bias, T* __restrict__ y,
                                            long long images, const NetcConvGeometry& geometry,
                                            const Epilogue& epilogue)
{
    const int group = blockIdx.z;
    const int group_in = static_cast<int>(geometry.in_channels) / geometry.groups;
    const int group_out = static_cast<int>(geometry.out_channels) / geometry.groups;
    const long long pixels = geometry.out_height * geometry.out_width;
    const long long m = group_out;
    const long long n = images * pixels;
    const long long k = static_cast<long long>(group_in) * geometry.kernel_h * geometry.kernel_w;
    const long long m0 = static_cast<long long>(blockIdx.y) * BM;
    const long long n0 = static_cast<long long>(blockIdx.x) * BN;
    const NetcPixelCursor cursor(n0, pixels);

    const NetcMatrixSource<T, true> a_source{weight + group * group_out * k, k};
    const NetcIm2colSource<T> b_source{
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
