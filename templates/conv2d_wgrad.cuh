// ---------------------------------------------------------------------------------------------
// conv2d_wgrad.cuh: the gradient of conv2d's weight (NCHW, any stride, padding, dilation,
// groups) as an implicit GEMM on the tiles of gemm.cuh, split over its long reduction.
//
// Design note.
//   For one group g the weight gradient is a GEMM whose reduction runs over every image and
//   output pixel:
//     M = out_channels / groups                  (m: an output channel of the group)
//     N = in_channels / groups * kernel_h * kernel_w  (n: (input channel, ky, kx))
//     K = images * out_height * out_width        (k: (image, oy, ox))
//   A(m, k) is the output's cotangent dy[image, g·M + m, oy, ox]; B(k, n) the input pixel
//   under tap (ky, kx) of output pixel (oy, ox), x[image, g·C/groups + c, oy·stride_h +
//   ky·dilation_h - pad_top, ...], zero in the padding (conv2d.cuh's im2col, transposed).
//   Neither operand is materialised.
//   Split-K: M and N are the weight's extents, often a handful of tiles, while K grows with
//   the batch and the feature map. So `splits` blocks share each tile: split s reduces k in
//   [s·chunk, min((s + 1)·chunk, K)), chunk = ceil(K / splits), into its own partial sum,
//   dW[s] of the [splits, out_channels, in_channels / groups, kh, kw] output; the graph sums
//   them after (conv2d's VJP: a reduction, in a fixed order, no atomics). A split past K
//   stores zeros.
//   Taps: both operands are read along k (K_CONTIGUOUS: consecutive k are neighbouring output
//   pixels, so a warp's reads are coalesced). A thread carries its k as (image, oy, ox) from
//   lane to lane and k-tile to k-tile with additions and one carry along x and y
//   (NetcWgradTap), so the main loop divides by nothing; an element costs a multiply-add per
//   axis, two unsigned compares (B) and a load.
//   Block:  one BM x BN tile of dW of one group and split. Thread: a TM x TN register tile
//           (gemm.cuh's double-buffered pipeline).
//   Bytes:  dy is read ceil(N / BN) times, x about ceil(M / BM) * kernel_h * kernel_w /
//           (stride_h * stride_w) times, dW splits times (written once per split).
//
// Launch: block THREADS; grid.x = ceil(N / BN), grid.y = ceil(M / BM),
// grid.z = groups * splits (group fastest); shared memory as gemm.cuh.
// ---------------------------------------------------------------------------------------------

// k as (image, out_y, out_x). A tap made by tap(k) holds the position of the split's first k
// plus k, and k's own digits (step_*), which `advance` adds when the tap is a step.
struct NetcWgradTap {
    long long image;
    int out_y, out_x;
    long long step_image;
    int step_y, step_x;
};

// The k side both operands share: the split's first k and the output's extents.
struct NetcWgradSteps {
    long long first;  // the split's first k
    int out_height, out_width, pixels;

    __device__ __forceinline__ void digits(long long k, long long& image, int& y, int& x) const
    {
        image = k / pixels;  // once per thread and tap, not per element
        const int within = static_cast<int>(k - image * pixels);
        y = within / out_width;
        x = within - y * out_width;
    }

    __device__ __forceinline__ NetcWgradTap tap(long long k) const
    {
        NetcWgradTap tap;
        digits(first + k, tap.image, tap.out_y, tap.out_x);
        digits(k, tap.step_image, tap.step_y, tap.step_x);
        return tap;
    }

    // Both digits of `tap` and of `by` are below their extents: one carry each suffices.
    __device__ __forceinline__ void advance(NetcWgradTap& tap, const NetcWgradTap& by) const
    {
        tap.out_x += by.step_x;
        if (tap.out_x >= out_width) {
            tap.out_x -= out_width;
            ++tap.out_y;
        }
        tap.out_y += by.step_y;
        if (tap.out_y >= out_height) {
            tap.out_y -= out_height;
            ++tap.image;
        }
        tap.image += by.step_image;
    }
};

// A(m, k): the cotangent of output channel m at k's pixel.
template <typename T>
struct NetcWgradCotangentSource {
    static constexpr bool K_CONTIGUOUS = true;
    typedef NetcWgradTap Tap;
    const T* dy;               // the group's first output channel of image 0
    long long image_pitch;     // out_channels * pixels
    NetcWgradSteps steps;

    struct Column {
        const T* plane;  // channel m of image 0
    };

    __device__ __forceinline__ Column column(long long m) const
    {
        return {dy + m * steps.pixels};
    }
    __device__ __forceinline__ Tap tap(long long k) const { return steps.tap(k); }
    __device__ __forceinline__ void advance(Tap& tap, const Tap& by) const
    {
        steps.advance(tap, by);
    }
    __device__ __forceinline__ float at(const Column& column, const Tap& tap) const
    {
        return netc_load(column.plane + tap.image * image_pitch +
                         (tap.out_y * steps.out_width + tap.out_x));
    }
};

// B(k, n): the input under tap n = (channel, ky, kx) of k's output pixel, or 0 in the padding.
template <typename T>
struct NetcWgradInputSource {
    static constexpr bool K_CONTIGUOUS = true;
    typedef NetcWgradTap Tap;
    const T* x;            // the group's first input channel of image 0
    long long image_pitch; // in_channels * height * width
    int height, width, stride_h, stride_w;
    NetcConvGeometry geometry;
    NetcWgradSteps steps;

    struct Column {
        const T* plane;  // the tap's input channel of image 0
        int dy, dx;      // its kernel offset minus the padding
    };

    __device__ __forceinline__ Column column(long long n) const
    {
        const NetcConvGeometry& g = geometry;
        const NetcConvTap t = netc_conv_tap(n, g);
        return {x + static_cast<long long>(t.channel) * height * width,
                t.kernel_y * g.dilation_h - g.pad_top, t.kernel_x * g.dilation_w - g.pad_left};
    }
    __device__ __forceinline__ Tap tap(long long k) const { return steps.tap(k); }
    __device__ __forceinline__ void advance(Tap& tap, const Tap& by) const
    {
        steps.advance(tap, by);
    }
    __device__ __forceinline__ float at(const Column& column, const Tap& tap) const
    {
        // Unsigned: a row or column above or left of the input wraps and fails the check.
        const unsigned in_y = static_cast<unsigned>(tap.out_y * stride_h + column.dy);
        const unsigned in_x = static_cast<unsigned>(tap.out_x * stride_w + column.dx);
        if (in_y >= static_cast<unsigned>(height) || in_x >= static_cast<unsigned>(width))
            return 0.0f;
        return netc_load(column.plane + tap.image * image_pitch +
                         (static_cast<int>(in_y) * width + static_cast<int>(in_x)));
    }
};

template <typename T, int BM, int BN, int BK, int TM, int TN, class Epilogue>
__device__ __forceinline__ void netc_conv2d_weight_grad(
    const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dw, long long images,
    const NetcConvGeometry& geometry, int splits, const Epilogue& epilogue)
{
    const int group = static_cast<int>(blockIdx.z) % geometry.groups;
    const int split = static_cast<int>(blockIdx.z) / geometry.groups;
    const int group_in = static_cast<int>(geometry.in_channels) / geometry.groups;
    const int group_out = static_cast<int>(geometry.out_channels) / geometry.groups;
    const long long pixels = geometry.out_height * geometry.out_width;
    const long long m = group_out;
    const long long n = static_cast<long long>(group_in) * geometry.kernel_h * geometry.kernel_w;
    const long long k_total = images * pixels;
    const long long chunk = netc_ceil_div(k_total, splits);
    const long long k_first = split * chunk;
    const long long k = k_first < k_total ? (k_total - k_first < chunk ? k_total - k_first : chunk)
                                          : 0;
    const long long m0 = static_cast<long long>(blockIdx.y) * BM;
    const long long n0 = static_cast<long long>(blockIdx.x) * BN;

    const NetcWgradSteps steps{k_first, static_cast<int>(geometry.out_height),
                               static_cast<int>(geometry.out_width), static_cast<int>(pixels)};
    const NetcWgradCotangentSource<T> a_source{
        dy + static_cast<long long>(group) * group_out * pixels,
        geometry.out_channels * pixels, steps};
    const NetcWgradInputSource<T> b_source{
        x + static_cast<long long>(group) * group_in * geometry.height * geometry.width,
        geometry.in_channels * geometry.height * geometry.width,
        static_cast<int>(geometry.height), static_cast<int>(geometry.width), geometry.stride_h,
        geometry.stride_w, geometry, steps};

    NETC_DYNAMIC_SHARED(float, shared);
    float acc[TM][TN];
    netc_gemm_mainloop<BM, BN, BK, TM, TN>(a_source, b_source, m0, n0, m, n, k, shared, acc);
    // dW[split] as [out_channels, N]: this group's rows start at group * M.
    const NetcRowMajorStore<T, false, Epilogue> store{
        dw, nullptr, n, (static_cast<long long>(split) * geometry.out_channels +
                         static_cast<long long>(group) * group_out) * n, epilogue};
    netc_gemm_epilogue<BM, BN, TM, TN>(acc, m0, n0, m, n, store);
}
