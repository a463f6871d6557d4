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
//   Thread: a TM x TN register tile, as in gemm.cuh (groups of 4 consecutive pixels where TN
//           allows), through gemm.cuh's double-buffered pipeline.
//   Staging: the weight with 128-bit loads where K is a multiple of 4 and the weight 16-byte
//           aligned, else element by element (chosen per block, as gemm.cuh); the input by
//           the im2col gather below. A thread's pixels and k lanes are the same in every
//           k-tile: it splits its pixels into (image, window corner) once, and carries its
//           tap (channel, kernel_y, kernel_x) from k-tile to k-tile with additions and one
//           carry each along x and y. A gathered element costs two adds, two unsigned
//           compares and a load; no division is left in the main loop.
//   Bytes:  each weight is read ceil(N / BN) times, each input element about
//           kernel_h * kernel_w / (stride_h * stride_w) * ceil(M / BM) times (once per window
//           that covers it, per channel tile), each output element is written once.
//
//   Split-K: as gemm.cuh's: split s of a layer split over `splits` blocks a tile accumulates a
//           run of whole k-tiles (the weight from its first k, the im2col taps from it too) and
//           stores raw float partials in the output's layout; netc_split_k_reduce finishes.
//
// Launch: block THREADS; grid.x = ceil(N / BN) (N grows with the images), grid.y = ceil(M / BM),
// grid.z = groups (split-K: groups * splits, the group fastest); shared memory as gemm.cuh.
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

// Index k = (channel, kernel_y, kernel_x) of a group's C / groups * kernel_h * kernel_w taps
// (channel-major, as the weight's [C / groups, kh, kw] rows), split into its three parts.
struct NetcConvTap {
    int channel, kernel_y, kernel_x;
};

__device__ __forceinline__ NetcConvTap netc_conv_tap(long long k, const NetcConvGeometry& g)
{
    const int window = g.kernel_h * g.kernel_w;
    const int channel = static_cast<int>(k) / window;
    const int within = static_cast<int>(k) - channel * window;
    const int kernel_y = within / g.kernel_w;
    return {channel, kernel_y, within - kernel_y * g.kernel_w};
}

// B(k, n) of one group: the input element under kernel tap k of output pixel n, or 0 in the
// padding. A column is one output pixel: where its window's top left corner falls, found once
// per block and thread. A tap is k = (channel, kernel_y, kernel_x) as offsets into the input
// (`offset`, `dy`, `dx`); `advance` adds two taps with one carry along x and one along y (the
// kernel offsets of both stay below the kernel's extent): no division per element, a few
// additions and compares per tap and k-tile.
template <typename T>
struct NetcIm2colSource {
    static constexpr bool K_CONTIGUOUS = false;  // consecutive n are neighbouring pixels
    const T* x;  // the group's first input channel of image 0
    NetcConvGeometry geometry;
    NetcPixelCursor cursor;
    int height, width;     // of the input (one plane of one image holds < 2^31 elements)
    int span_y, span_x;    // kernel_h * dilation_h, kernel_w * dilation_w
    int carry_x, carry_y;  // offset changes where x wraps into the next row, y into the next plane

    struct Column {
        const T* corner;  // where tap (0, 0) of channel 0 falls (outside the input in padding)
        int top, left;    // input row and column under kernel tap (0, 0)
    };
    struct Tap {
        int offset;  // channel * height * width + dy * width + dx
        int dy, dx;  // kernel_y * dilation_h, kernel_x * dilation_w
    };

    __device__ __forceinline__ NetcIm2colSource(const T* x, const NetcConvGeometry& g,
                                                const NetcPixelCursor& cursor)
        : x(x), geometry(g), cursor(cursor), height(static_cast<int>(g.height)),
          width(static_cast<int>(g.width)), span_y(g.kernel_h * g.dilation_h),
          span_x(g.kernel_w * g.dilation_w), carry_x(g.dilation_h * width - span_x),
          carry_y((height - span_y) * width)
    {
    }

    __device__ __forceinline__ Column column(long long pixel) const
    {
        const NetcConvGeometry& g = geometry;
        long long image;
        int within;
        cursor.locate(pixel, image, within);
        const int out_y = within / static_cast<int>(g.out_width);
        const int out_x = within - out_y * static_cast<int>(g.out_width);
        const int top = out_y * g.stride_h - g.pad_top;
        const int left = out_x * g.stride_w - g.pad_left;
        return {x + image * g.in_channels * g.height * g.width + (top * width + left), top, left};
    }

    __device__ __forceinline__ Tap tap(long long k) const
    {
        const NetcConvTap t = netc_conv_tap(k, geometry);
        const int dy = t.kernel_y * geometry.dilation_h;
        const int dx = t.kernel_x * geometry.dilation_w;
        return {(t.channel * height + dy) * width + dx, dy, dx};
    }

    // To k + j, `by` being tap(j).
    __device__ __forceinline__ void advance(Tap& tap, const Tap& by) const
    {
        tap.offset += by.offset;
        tap.dx += by.dx;
        tap.dy += by.dy;
        if (tap.dx >= span_x) {
            tap.dx -= span_x;
            tap.dy += geometry.dilation_h;
            tap.offset += carry_x;
        }
        if (tap.dy >= span_y) {
            tap.dy -= span_y;
            tap.offset += carry_y;
        }
    }

    __device__ __forceinline__ float at(const Column& column, const Tap& tap) const
    {
        // Unsigned: a row or column left of or above the input wraps past its end.
        const unsigned in_y = static_cast<unsigned>(column.top + tap.dy);
        const unsigned in_x = static_cast<unsigned>(column.left + tap.dx);
        if (in_y >= static_cast<unsigned>(height) || in_x >= static_cast<unsigned>(width))
            return 0.0f;
        return netc_load(column.corner + tap.offset);
    }
};

// Stores output[image, channel, y, x] = epilogue(value + bias[channel], offset) for C(m, n) of
// one group; `offset` is the element's offset in the whole output. C: the stored type, T's but
// float for split-K's partials.
template <typename T, bool HAS_BIAS, class Epilogue, typename C = T>
struct NetcConvStore {
    C* y;
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

// Where a block of a conv's grid works (see the launch above): its group (grid.z, modulo the
// groups: split-K's splits follow them), that group's
// GEMM (M output channels, N pixels, K taps), the first row and column of its tile of C, where
// the group's weights and input start, and the store of its results. Shared with the
// tensor-core conv (conv2d_mma.cuh).
struct NetcConvBlock {
    int group, group_in, group_out;  // channels of a group fit an int (32-bit division)
    long long pixels, m, n, k, m0, n0;

    __device__ __forceinline__ NetcConvBlock(const NetcConvGeometry& g, long long images, int bm,
                                             int bn)
        : group(static_cast<int>(blockIdx.z) % g.groups), group_in(static_cast<int>(g.in_channels) / g.groups),
          group_out(static_cast<int>(g.out_channels) / g.groups),
          pixels(g.out_height * g.out_width), m(group_out), n(images * pixels),
          k(static_cast<long long>(group_in) * g.kernel_h * g.kernel_w),
          m0(static_cast<long long>(blockIdx.y) * bm), n0(static_cast<long long>(blockIdx.x) * bn)
    {
    }

    __device__ __forceinline__ long long weight_offset() const
    {
        return static_cast<long long>(group) * group_out * k;
    }

    __device__ __forceinline__ long long input_offset(const NetcConvGeometry& g) const
    {
        return static_cast<long long>(group) * group_in * g.height * g.width;
    }

    template <bool HAS_BIAS, typename T, typename C, class Epilogue>
    __device__ __forceinline__ NetcConvStore<T, HAS_BIAS, Epilogue, C> store(
        C* y, const T* bias, const NetcConvGeometry& g, const NetcPixelCursor& cursor,
        const Epilogue& epilogue) const
    {
        return {y, HAS_BIAS ? bias + group * group_out : bias, g.out_channels,
                static_cast<long long>(group) * group_out, cursor, epilogue};
    }
};

// With `split`, the block accumulates only its split's k (netc_k_range) and `y` is that
// split's partials (float, no bias, NetcRawValue).
template <typename T, int BM, int BN, int BK, int TM, int TN, bool HAS_BIAS, typename C,
          class Epilogue>
__device__ __forceinline__ void netc_conv2d(const T* __restrict__ x, const T* __restrict__ weight,
                                            const T* __restrict__ bias, C* __restrict__ y,
                                            long long images, const NetcConvGeometry& geometry,
                                            const Epilogue& epilogue,
                                            const NetcSplitK& split = NetcSplitK{0, 1})
{
    using Shape = NetcGemmShape<BM, BN, BK, TM, TN>;
    const NetcConvBlock block(geometry, images, BM, BN);
    const long long m = block.m, n = block.n, k = block.k, m0 = block.m0, n0 = block.n0;
    const NetcKRange range = netc_k_range(k, BK, split);
    const NetcPixelCursor cursor(n0, block.pixels);

    // The weight's rows from the range's first k on; the im2col taps start there too.
    const T* group_weight = weight + block.weight_offset() + range.begin;
    const NetcIm2colSource<T> b_source(x + block.input_offset(geometry), geometry, cursor);
    NetcGemmStager<BN, BK, Shape::B_PITCH, Shape::THREADS, NetcIm2colSource<T>> b_stager(
        b_source, n0, n, range.begin);

    NETC_DYNAMIC_SHARED(float, shared);
    float acc[TM][TN];
    // The weight as [M, K] rows, 128-bit loads where K is whole vectors (as gemm.cuh).
    if (BK % 4 == 0 && netc_vector_ok(group_weight, k)) {
        if constexpr (BK % 4 == 0) {
            NetcGemmVectorStager<T, BM, BK, Shape::A_PITCH, Shape::THREADS, true> a_stager(
                group_weight, k, m0, m);
            netc_gemm_pipeline<BM, BN, BK, TM, TN>(a_stager, b_stager, range.length, shared,
                                                   acc);
        }
    } else {
        const NetcMatrixSource<T, true> a_source{group_weight, k};
        NetcGemmStager<BM, BK, Shape::A_PITCH, Shape::THREADS, NetcMatrixSource<T, true>>
            a_stager(a_source, m0, m);
        netc_gemm_pipeline<BM, BN, BK, TM, TN>(a_stager, b_stager, range.length, shared, acc);
    }
    const auto store = block.store<HAS_BIAS>(y, bias, geometry, cursor, epilogue);
    netc_gemm_epilogue<BM, BN, TM, TN>(acc, m0, n0, m, n, store);
}
