// ---------------------------------------------------------------------------------------------
// optimizer.cuh: the optimizer step of training as multi-tensor kernels: the global gradient
// norm for clipping, and the SGD / Adam / AdamW update of every parameter, in a few launches
// per step (netc.optimizer_kernel runs them; netc.training.update is the NumPy oracle).
//
// Design note.
//   Tensor lists (PyTorch's multi_tensor_apply, apex's multi_tensor_*): a launch covers up to
//           NETC_OPTIMIZER_SLOTS tensors. Each slot is four pointer arguments: the parameter,
//           its gradient and the two state tensors (SGD: the momentum buffer; Adam: exp_avg
//           and exp_avg_sq; an unused one is any valid buffer, never touched). A table of
//           (slot, chunk, length) int triples, one per block, gives blockIdx.x the elements
//           [chunk * CHUNK, chunk * CHUNK + length) of one tensor, so tensors of any sizes
//           share a launch without padding. Pointers are arguments, not a table in memory,
//           so that the CPU simulator (which resolves every pointer argument itself) runs the
//           same code; 24 slots keep the signature within the 1 KiB the simulator reads it
//           into. More tensors than slots take more launches.
//   Block:  NETC_OPTIMIZER_THREADS threads, one chunk of NETC_OPTIMIZER_CHUNK elements: thread
//           t takes elements t, t + THREADS, ... (coalesced). Offsets are 64-bit.
//   Update: one device function per optimizer (netc_sgd_element, netc_adam_element) does, for
//           one element, the float32 operations of netc.training.update in the same order,
//           each an explicit _rn intrinsic, so nvcc contracts nothing into an FMA and the
//           result is bit-identical to NumPy (IEEE +, -, *, / and sqrt correctly rounded on
//           both sides; NaN and inf propagate as there). Per step the host passes lr and, for
//           Adam, step_size = f32(lr / (1 - beta1^t)) and f32(sqrt(1 - beta2^t)), computed in
//           double as `update` does; (1 - dampening), (1 - beta) and AdamW's (1 - lr * wd)
//           are formed here in float as there.
//   Bytes:  the update reads param and grad and reads and writes each state tensor once, and
//           writes param once: SGD with momentum 5 x 4 bytes per element, Adam 7 x 4.
//   Clipping (clip_grad_norm_): netc_optimizer_sum_squares writes one double per block, the
//           sum of its chunk's g * g (exact products, a fixed tree over the block), at
//           partials[base + blockIdx.x]; netc_optimizer_clip, one block, adds the partials
//           in a fixed order and writes the coefficient min(max_norm / (norm + 1e-6), 1)
//           (NaN stays NaN, as Python's min) and the norm into a device scalar pair that the
//           update kernels read: the gradients never leave the device. Deterministic: the
//           same gradients give the same bits on every run. The sum is in double, so the norm
//           differs from NumPy's float32 dot products (np.linalg.norm) only by their rounding
//           (tests: coefficient within 1e-6 relative).
//
// Launch: block NETC_OPTIMIZER_THREADS, grid = the launch's chunks; shared memory
// NETC_OPTIMIZER_THREADS * 8 bytes for the two norm kernels, none for the updates.
// ---------------------------------------------------------------------------------------------

#define NETC_OPTIMIZER_SLOTS 24
#define NETC_OPTIMIZER_THREADS 256
#define NETC_OPTIMIZER_CHUNK 4096

// X(i) for every slot, in order.
#define NETC_OPTIMIZER_EACH_SLOT(X)                                                          \
    X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)    \
    X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23)

// A slot's kernel arguments (each preceded by a comma: they follow the fixed ones).
#define NETC_OPTIMIZER_SLOT_PARAMETERS(i)                                                    \
    , float* param##i, const float* __restrict__ grad##i, float* first##i, float* second##i
#define NETC_OPTIMIZER_SLOT_CASE(i)                                                          \
    case i: slot = NetcOptimizerSlot{param##i, grad##i, first##i, second##i}; break;

struct NetcOptimizerSlot {
    float* param;
    const float* grad;
    float* first;   // SGD: momentum_buffer; Adam: exp_avg
    float* second;  // Adam: exp_avg_sq
};

// This block's tensor (`slot`, its index in `index`) and element range [begin, end).
#define NETC_OPTIMIZER_BLOCK_TENSOR(chunks)                                                  \
    const int index = (chunks)[3 * blockIdx.x];                                             \
    NetcOptimizerSlot slot = NetcOptimizerSlot{nullptr, nullptr, nullptr, nullptr};         \
    switch (index) { NETC_OPTIMIZER_EACH_SLOT(NETC_OPTIMIZER_SLOT_CASE) default: break; }   \
    const long long begin = static_cast<long long>((chunks)[3 * blockIdx.x + 1]) *          \
                            NETC_OPTIMIZER_CHUNK;                                           \
    const long long end = begin + (chunks)[3 * blockIdx.x + 2]

// SGD (torch.optim.SGD, single tensor): decay, momentum buffer (the gradient itself at the
// first step, `fresh`), Nesterov. `one_minus_dampening` is f32(1 - dampening).
__device__ __forceinline__ float netc_sgd_element(float param, float grad, float* buffer,
                                                  bool fresh, float lr, float weight_decay,
                                                  float momentum, float one_minus_dampening,
                                                  bool nesterov)
{
    if (weight_decay != 0.0f)
        grad = __fadd_rn(grad, __fmul_rn(weight_decay, param));
    if (momentum != 0.0f) {
        const float kept = fresh ? grad
                                 : __fadd_rn(__fmul_rn(momentum, *buffer),
                                             __fmul_rn(one_minus_dampening, grad));
        *buffer = kept;
        grad = nesterov ? __fadd_rn(grad, __fmul_rn(momentum, kept)) : kept;
    }
    return __fsub_rn(param, __fmul_rn(lr, grad));
}

// Adam and AdamW (torch.optim.Adam / AdamW, single tensor, no amsgrad): exp_avg by torch's
// lerp_ (m + (g - m) * (1 - beta1)), exp_avg_sq, the bias-corrected step. `decay_factor` is
// AdamW's f32(1 - lr * weight_decay), applied to the parameter first.
__device__ __forceinline__ float netc_adam_element(float param, float grad, float* exp_avg,
                                                   float* exp_avg_sq, float weight_decay,
                                                   bool decoupled, float decay_factor,
                                                   float one_minus_beta1, float beta2,
                                                   float one_minus_beta2, float eps,
                                                   float step_size, float correction2_sqrt)
{
    if (decoupled)
        param = __fmul_rn(param, decay_factor);
    else if (weight_decay != 0.0f)
        grad = __fadd_rn(grad, __fmul_rn(weight_decay, param));
    float m = *exp_avg;
    m = __fadd_rn(m, __fmul_rn(__fsub_rn(grad, m), one_minus_beta1));
    const float v = __fadd_rn(__fmul_rn(*exp_avg_sq, beta2),
                              __fmul_rn(__fmul_rn(one_minus_beta2, grad), grad));
    *exp_avg = m;
    *exp_avg_sq = v;
    const float denominator = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), correction2_sqrt), eps);
    return __fsub_rn(param, __fmul_rn(step_size, __fdiv_rn(m, denominator)));
}

// The gradient as the update sees it: times the clip coefficient (clip[0]) when clipping.
__device__ __forceinline__ float netc_clipped(float grad, bool clipping, float coefficient)
{
    return clipping ? __fmul_rn(grad, coefficient) : grad;
}

// `fresh`: bit i set when slot i's momentum buffer starts at this step.
extern "C" __global__ void __launch_bounds__(NETC_OPTIMIZER_THREADS)
netc_optimizer_sgd(const int* __restrict__ chunks, const float* __restrict__ clip, int clipping,
                   float lr, float weight_decay, float momentum, float dampening, int nesterov,
                   unsigned fresh NETC_OPTIMIZER_EACH_SLOT(NETC_OPTIMIZER_SLOT_PARAMETERS))
{
    NETC_OPTIMIZER_BLOCK_TENSOR(chunks);
    const float coefficient = clipping ? clip[0] : 1.0f;
    const float one_minus_dampening = __fsub_rn(1.0f, dampening);
    const bool starts = (fresh >> index) & 1u;
    for (long long i = begin + threadIdx.x; i < end; i += NETC_OPTIMIZER_THREADS) {
        const float grad = netc_clipped(slot.grad[i], clipping, coefficient);
        slot.param[i] = netc_sgd_element(slot.param[i], grad, slot.first + i, starts, lr,
                                         weight_decay, momentum, one_minus_dampening,
                                         nesterov != 0);
    }
}

// `decoupled`: AdamW. step_size = f32(lr / (1 - beta1^t)), correction2_sqrt =
// f32(sqrt(1 - beta2^t)), both from double on the host.
extern "C" __global__ void __launch_bounds__(NETC_OPTIMIZER_THREADS)
netc_optimizer_adam(const int* __restrict__ chunks, const float* __restrict__ clip, int clipping,
                    float lr, float weight_decay, int decoupled, float beta1, float beta2,
                    float eps, float step_size,
                    float correction2_sqrt NETC_OPTIMIZER_EACH_SLOT(NETC_OPTIMIZER_SLOT_PARAMETERS))
{
    NETC_OPTIMIZER_BLOCK_TENSOR(chunks);
    const float coefficient = clipping ? clip[0] : 1.0f;
    const float decay_factor = __fsub_rn(1.0f, __fmul_rn(lr, weight_decay));
    const float one_minus_beta1 = __fsub_rn(1.0f, beta1);
    const float one_minus_beta2 = __fsub_rn(1.0f, beta2);
    for (long long i = begin + threadIdx.x; i < end; i += NETC_OPTIMIZER_THREADS) {
        const float grad = netc_clipped(slot.grad[i], clipping, coefficient);
        slot.param[i] = netc_adam_element(slot.param[i], grad, slot.first + i, slot.second + i,
                                          weight_decay, decoupled != 0, decay_factor,
                                          one_minus_beta1, beta2, one_minus_beta2, eps,
                                          step_size, correction2_sqrt);
    }
}

// The sum of a block's `value`s into thread 0, by a fixed tree (deterministic).
__device__ __forceinline__ double netc_optimizer_block_sum(double value, double* scratch)
{
    scratch[threadIdx.x] = value;
    __syncthreads();
    for (int half = NETC_OPTIMIZER_THREADS / 2; half > 0; half /= 2) {
        if (threadIdx.x < half)
            scratch[threadIdx.x] += scratch[threadIdx.x + half];
        __syncthreads();
    }
    return scratch[0];
}

// partials[blockIdx.x] = the sum of g * g over the block's chunk (products exact in double).
extern "C" __global__ void __launch_bounds__(NETC_OPTIMIZER_THREADS)
netc_optimizer_sum_squares(const int* __restrict__ chunks,
                           double* __restrict__ partials
                           NETC_OPTIMIZER_EACH_SLOT(NETC_OPTIMIZER_SLOT_PARAMETERS))
{
    NETC_DYNAMIC_SHARED(double, scratch);
    NETC_OPTIMIZER_BLOCK_TENSOR(chunks);
    double sum = 0.0;
    for (long long i = begin + threadIdx.x; i < end; i += NETC_OPTIMIZER_THREADS) {
        const double grad = slot.grad[i];
        sum = __dadd_rn(sum, __dmul_rn(grad, grad));
    }
    sum = netc_optimizer_block_sum(sum, scratch);
    if (threadIdx.x == 0)
        partials[blockIdx.x] = sum;
}

// One block: result[0] = the clip coefficient, f32(min(max_norm / (f32(norm) + 1e-6), 1)) in
// double as clip_gradients computes it; result[1] = the norm, f32(sqrt(sum of partials)).
extern "C" __global__ void __launch_bounds__(NETC_OPTIMIZER_THREADS)
netc_optimizer_clip(const double* __restrict__ partials, long long count, double max_norm,
                    float* __restrict__ result)
{
    NETC_DYNAMIC_SHARED(double, scratch);
    double sum = 0.0;
    for (long long i = threadIdx.x; i < count; i += NETC_OPTIMIZER_THREADS)
        sum = __dadd_rn(sum, partials[i]);
    sum = netc_optimizer_block_sum(sum, scratch);
    if (threadIdx.x == 0) {
        const float norm = static_cast<float>(sqrt(sum));
        const double quotient = max_norm / (static_cast<double>(norm) + 1e-6);
        result[0] = static_cast<float>(1.0 < quotient ? 1.0 : quotient);  // NaN stays NaN
        result[1] = norm;
    }
}
