// ---------------------------------------------------------------------------------------------
// attention.cuh: out = softmax(q k^T * scale) v in one kernel, FlashAttention's way: the scores
// of a row are never stored, only a running maximum, a running sum and the weighted sum of the
// value rows seen so far (the online softmax), so no L x S matrix reaches global memory.
// `attention(q, k, v[, mask], causal=, scale=)` (PyTorch's F.scaled_dot_product_attention),
// with q [B, L, E], k [B, S, E], v [B, S, EV] contiguous and the mask read through strides
// (MASK: 0 none, 1 bool where true attends, 2 added to the scores): element (b, i, j) is at
// (b / inner) * outer_stride + (b % inner) * inner_stride + i * row_stride + j * key_stride, so
// a mask broadcast over heads or items costs no copy.
//
// Design note.
//   Block:  WARPS warps and ROWS query rows each: BQ = WARPS * ROWS rows of one matrix of the
//           batch. It walks the keys in tiles of 32: the tile's k and v rows are staged in
//           shared memory (as float) once and used by all BQ rows; a causal block stops at
//           the last key its last row may see.
//   Warp:   one query row at a time; lane j computes the score of key j of the tile (the q row
//           is in shared memory, read as a broadcast; k rows are padded to E + 1 floats so the
//           32 lanes hit 32 banks), the warp max and sum update the running maximum m and sum
//           l, and lane f accumulates output features f, f + 32, ... (EV_SLOTS of them) in
//           registers from the tile's weights (in shared memory, a broadcast) and v rows.
//   Math:   float throughout (f16/bf16 are converted on load and rounded once on store). NaN
//           propagates as in the reference: the running maximum keeps a NaN (netc_max), and
//           a NaN score makes the row's sum and result NaN. A row whose scores are all -inf
//           gives NaN, or zeros with a mask or `causal` (PyTorch's safe softmax), as the
//           reference.
//   Bytes:  q, k, v read once per block (k, v once per BQ query rows), out written once.
//
// Launch: block WARPS * 32, grid.x = B * ceil(L / BQ), dynamic shared memory
// 4 * (32 * (E + 1) + 32 * EV + BQ * E + WARPS * 32) bytes.
// ---------------------------------------------------------------------------------------------

struct NetcMaskLayout {
    long long inner;         // matrices of the batch a mask's outer stride steps over
    long long outer_stride;
    long long inner_stride;
    long long row_stride;
    long long key_stride;
};

template <typename T, typename M, int E, int EV, int WARPS, int ROWS, bool CAUSAL, int MASK>
__device__ __forceinline__ void netc_attention(const T* __restrict__ q, const T* __restrict__ k,
                                               const T* __restrict__ v, T* __restrict__ out,
                                               long long length, long long keys, float scale,
                                               const M* __restrict__ mask,
                                               const NetcMaskLayout& layout)
{
    constexpr int TILE = 32;
    constexpr int BQ = WARPS * ROWS;
    constexpr int K_PITCH = E + 1;
    constexpr int EV_SLOTS = (EV + 31) / 32;
    NETC_DYNAMIC_SHARED(float, shared);
    float* const k_tile = shared;                    // [TILE][E + 1]
    float* const v_tile = k_tile + TILE * K_PITCH;   // [TILE][EV]
    float* const q_rows = v_tile + TILE * EV;        // [BQ][E]
    float* const weights = q_rows + BQ * E;          // [WARPS][TILE]

    const long long row_tiles = (length + BQ - 1) / BQ;
    const long long matrix = blockIdx.x / row_tiles;
    const long long first_row = (blockIdx.x - matrix * row_tiles) * BQ;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    q += matrix * length * E;
    k += matrix * keys * E;
    v += matrix * keys * EV;
    out += matrix * length * EV;
    if (MASK != 0)
        mask += (matrix / layout.inner) * layout.outer_stride +
                (matrix % layout.inner) * layout.inner_stride;

    for (int index = threadIdx.x; index < BQ * E; index += WARPS * 32) {
        const long long row = first_row + index / E;
        q_rows[index] = row < length ? netc_load(q + first_row * E + index) : 0.0f;
    }
    float maximum[ROWS], sum[ROWS], accumulated[ROWS][EV_SLOTS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        maximum[r] = netc_negative_infinity();
        sum[r] = 0.0f;
#pragma unroll
        for (int slot = 0; slot < EV_SLOTS; ++slot)
            accumulated[r][slot] = 0.0f;
    }
    // Under `causal` no row of this block sees a key past its last row.
    const long long last_row = first_row + BQ - 1 < length ? first_row + BQ - 1 : length - 1;
    const long long end = CAUSAL && last_row + 1 < keys ? last_row + 1 : keys;
    for (long long tile = 0; tile < end; tile += TILE) {
        __syncthreads();  // the previous tile (and, the first time, q_rows) is done with
        for (int index = threadIdx.x; index < TILE * E; index += WARPS * 32) {
            const int j = index / E;
            k_tile[j * K_PITCH + index % E] =
                tile + j < keys ? netc_load(k + tile * E + index) : 0.0f;
        }
        for (int index = threadIdx.x; index < TILE * EV; index += WARPS * 32)
            v_tile[index] = tile + index / EV < keys ? netc_load(v + tile * EV + index) : 0.0f;
        __syncthreads();
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const int local = warp * ROWS + r;
            const long long row = first_row + local;
            const long long key = tile + lane;
            float score = 0.0f;
#pragma unroll 8
            for (int e = 0; e < E; ++e)
                score += q_rows[local * E + e] * k_tile[lane * K_PITCH + e];
            score *= scale;
            bool allowed = key < keys && !(CAUSAL && key > row);
            if (MASK != 0 && allowed && row < length) {
                const auto given = netc_load(mask + row * layout.row_stride +
                                             key * layout.key_stride);
                if (MASK == 1)
                    allowed = given;
                else
                    score += given;
            }
            if (!allowed)
                score = netc_negative_infinity();
            const float tile_max = netc_warp_max(score);
            const float new_max = netc_max(maximum[r], tile_max);
            // All masked so far: nothing to weigh yet (exp(-inf - -inf) would be NaN).
            const bool nothing = new_max == netc_negative_infinity();
            const float weight = nothing ? 0.0f : expf(score - new_max);
            const float rescale = nothing ? 1.0f : expf(maximum[r] - new_max);
            sum[r] = sum[r] * rescale + netc_warp_sum(weight);
            maximum[r] = new_max;
            weights[warp * TILE + lane] = weight;
            __syncwarp();
#pragma unroll
            for (int slot = 0; slot < EV_SLOTS; ++slot) {
                const int feature = lane + 32 * slot;
                float total = accumulated[r][slot] * rescale;
                if (feature < EV) {
#pragma unroll 8
                    for (int j = 0; j < TILE; ++j)
                        total += weights[warp * TILE + j] * v_tile[j * EV + feature];
                }
                accumulated[r][slot] = total;
            }
            __syncwarp();  // the next row overwrites this warp's weights
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const long long row = first_row + warp * ROWS + r;
        if (row >= length)
            continue;
#pragma unroll
        for (int slot = 0; slot < EV_SLOTS; ++slot) {
            const int feature = lane + 32 * slot;
            // Every score -inf: PyTorch's softmax of the row is NaN, and with a mask or
            // `causal` its safe softmax gives zeros (the reference's rule).
            if (feature < EV)
                netc_store(out + row * EV + feature,
                           sum[r] != 0.0f ? accumulated[r][slot] / sum[r]
                           : CAUSAL || MASK != 0 ? 0.0f : netc_quiet_nan());
        }
    }
}
