// Batch normalisation's per-channel loops on AVX-512 and AVX2: the statistics, the affine map with its joins,
// and the two backward passes. A channel is `n` rows of `plane` floats, `stride` apart.
//
// The element-wise passes (the map, the input gradient) compute each value with the same operations as
// the portable Swift loops in BatchNormKernel.swift, so they give the same bits. The sums run in one order
// on both paths, fixed by the plane's size: per row, two 16-lane accumulators over blocks of 32 values
// (the row's last, partial block added lane by lane under a mask), then the 32 lanes folded in halves
// (16, 8, 4, 2, 1). AVX2 holds each 16-lane accumulator in two registers. Multiplies and adds are
// never fused except where an FMA is written out.

#include "CKernels.h"

#include <string.h>

#pragma clang fp contract(off)

#if defined(__x86_64__)
#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f")))
#define AVX2 __attribute__((target("avx2,fma")))

// ---- AVX-512 ----

AVX512 static inline float fold512(__m512 a, __m512 b) {
    __m512 s = _mm512_add_ps(a, b);
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(s), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

// Lanes [0, count) of a 32-lane block as two 16-lane masks.
AVX512 static inline void tail_masks(long count, __mmask16 *low, __mmask16 *high) {
    uint32_t bits = count >= 32 ? 0xFFFFFFFFu : (1u << count) - 1;
    *low = (__mmask16)bits; *high = (__mmask16)(bits >> 16);
}

AVX512 static float row_sum_avx512(const float *row, long plane) {
    __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
    long j = 0;
    for (; j + 32 <= plane; j += 32) {
        a = _mm512_add_ps(a, _mm512_loadu_ps(row + j));
        b = _mm512_add_ps(b, _mm512_loadu_ps(row + j + 16));
    }
    if (j < plane) {
        __mmask16 lo, hi;
        tail_masks(plane - j, &lo, &hi);
        a = _mm512_mask_add_ps(a, lo, a, _mm512_maskz_loadu_ps(lo, row + j));
        b = _mm512_mask_add_ps(b, hi, b, _mm512_maskz_loadu_ps(hi, row + j + 16));
    }
    return fold512(a, b);
}

// The sums of (v - estimate) and of its squares over a row.
AVX512 static void row_deviations_avx512(const float *row, long plane, float estimate, float *deviations, float *squares) {
    __m512 e = _mm512_set1_ps(estimate);
    __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps(), sa = _mm512_setzero_ps(), sb = _mm512_setzero_ps();
    long j = 0;
    for (; j + 32 <= plane; j += 32) {
        __m512 d = _mm512_sub_ps(_mm512_loadu_ps(row + j), e), d2 = _mm512_sub_ps(_mm512_loadu_ps(row + j + 16), e);
        a = _mm512_add_ps(a, d); sa = _mm512_fmadd_ps(d, d, sa);
        b = _mm512_add_ps(b, d2); sb = _mm512_fmadd_ps(d2, d2, sb);
    }
    if (j < plane) {
        __mmask16 lo, hi;
        tail_masks(plane - j, &lo, &hi);
        __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(lo, row + j), e), d2 = _mm512_sub_ps(_mm512_maskz_loadu_ps(hi, row + j + 16), e);
        a = _mm512_mask_add_ps(a, lo, a, d); sa = _mm512_mask3_fmadd_ps(d, d, sa, lo);
        b = _mm512_mask_add_ps(b, hi, b, d2); sb = _mm512_mask3_fmadd_ps(d2, d2, sb, hi);
    }
    *deviations = fold512(a, b);
    *squares = fold512(sa, sb);
}

// The gradient where the fused ReLU passed the value: zero where x * scale + shift <= 0.
AVX512 static inline __m512 masked_gradient512(__m512 g, __m512 x, __m512 scale, __m512 shift, int relu_mask) {
    if (!relu_mask) return g;
    __mmask16 off = _mm512_cmp_ps_mask(_mm512_add_ps(_mm512_mul_ps(x, scale), shift), _mm512_setzero_ps(), _CMP_LE_OQ);
    return _mm512_mask_mov_ps(g, off, _mm512_setzero_ps());
}

AVX512 static void gradient_sums_avx512(const float *x, const float *g, long plane, float mu, float scale, float shift,
                                        int relu_mask, float *sum_g, float *sum_gx) {
    __m512 vm = _mm512_set1_ps(mu), vs = _mm512_set1_ps(scale), vb = _mm512_set1_ps(shift);
    __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps(), xa = _mm512_setzero_ps(), xb = _mm512_setzero_ps();
    long j = 0;
    for (; j + 32 <= plane; j += 32) {
        __m512 x0 = _mm512_loadu_ps(x + j), x1 = _mm512_loadu_ps(x + j + 16);
        __m512 g0 = masked_gradient512(_mm512_loadu_ps(g + j), x0, vs, vb, relu_mask);
        __m512 g1 = masked_gradient512(_mm512_loadu_ps(g + j + 16), x1, vs, vb, relu_mask);
        a = _mm512_add_ps(a, g0); xa = _mm512_fmadd_ps(g0, _mm512_sub_ps(x0, vm), xa);
        b = _mm512_add_ps(b, g1); xb = _mm512_fmadd_ps(g1, _mm512_sub_ps(x1, vm), xb);
    }
    if (j < plane) {
        __mmask16 lo, hi;
        tail_masks(plane - j, &lo, &hi);
        __m512 x0 = _mm512_maskz_loadu_ps(lo, x + j), x1 = _mm512_maskz_loadu_ps(hi, x + j + 16);
        __m512 g0 = masked_gradient512(_mm512_maskz_loadu_ps(lo, g + j), x0, vs, vb, relu_mask);
        __m512 g1 = masked_gradient512(_mm512_maskz_loadu_ps(hi, g + j + 16), x1, vs, vb, relu_mask);
        a = _mm512_mask_add_ps(a, lo, a, g0); xa = _mm512_mask3_fmadd_ps(g0, _mm512_sub_ps(x0, vm), xa, lo);
        b = _mm512_mask_add_ps(b, hi, b, g1); xb = _mm512_mask3_fmadd_ps(g1, _mm512_sub_ps(x1, vm), xb, hi);
    }
    *sum_g = fold512(a, b);
    *sum_gx = fold512(xa, xb);
}

// ---- AVX2: the same order, each 16-lane accumulator in two registers ----

AVX2 static inline float fold256(__m256 a0, __m256 a1, __m256 b0, __m256 b1) {
    // (a + b) as 16 lanes, then halves: lanes [0, 8) + [8, 16) is (a0 + b0) + (a1 + b1).
    __m256 s8 = _mm256_add_ps(_mm256_add_ps(a0, b0), _mm256_add_ps(a1, b1));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

// All-ones in lanes [from, from + 8) of a count-lane prefix (as in tail_masks), for lanes from..from+7.
AVX2 static inline __m256 prefix_mask(long count, long from) {
    __m256i lanes = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)from));
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)count), lanes));
}

// The last, partial block copied into zeros (a plain load past the row could leave the mapped memory).
static inline void tail_copy(const float *source, long count, float *block) {
    memset(block, 0, 32 * sizeof(float));
    memcpy(block, source, (size_t)count * sizeof(float));
}

AVX2 static float row_sum_avx2(const float *row, long plane) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
    long j = 0;
    for (; j + 32 <= plane; j += 32) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(row + j)); a1 = _mm256_add_ps(a1, _mm256_loadu_ps(row + j + 8));
        b0 = _mm256_add_ps(b0, _mm256_loadu_ps(row + j + 16)); b1 = _mm256_add_ps(b1, _mm256_loadu_ps(row + j + 24));
    }
    if (j < plane) {
        float block[32] __attribute__((aligned(32)));
        long count = plane - j;
        tail_copy(row + j, count, block);
        __m256 *acc[4] = {&a0, &a1, &b0, &b1};
        for (int q = 0; q < 4; q++)
            *acc[q] = _mm256_blendv_ps(*acc[q], _mm256_add_ps(*acc[q], _mm256_load_ps(block + 8 * q)), prefix_mask(count, 8 * q));
    }
    return fold256(a0, a1, b0, b1);
}

AVX2 static void row_deviations_avx2(const float *row, long plane, float estimate, float *deviations, float *squares) {
    __m256 e = _mm256_set1_ps(estimate);
    __m256 acc[4], sq[4];
    for (int q = 0; q < 4; q++) { acc[q] = _mm256_setzero_ps(); sq[q] = _mm256_setzero_ps(); }
    long j = 0;
    for (; j + 32 <= plane; j += 32) {
#pragma clang loop unroll(full)
        for (int q = 0; q < 4; q++) {
            __m256 d = _mm256_sub_ps(_mm256_loadu_ps(row + j + 8 * q), e);
            acc[q] = _mm256_add_ps(acc[q], d); sq[q] = _mm256_fmadd_ps(d, d, sq[q]);
        }
    }
    if (j < plane) {
        float block[32] __attribute__((aligned(32)));
        long count = plane - j;
        tail_copy(row + j, count, block);
        for (int q = 0; q < 4; q++) {
            __m256 mask = prefix_mask(count, 8 * q), d = _mm256_sub_ps(_mm256_load_ps(block + 8 * q), e);
            acc[q] = _mm256_blendv_ps(acc[q], _mm256_add_ps(acc[q], d), mask);
            sq[q] = _mm256_blendv_ps(sq[q], _mm256_fmadd_ps(d, d, sq[q]), mask);
        }
    }
    *deviations = fold256(acc[0], acc[1], acc[2], acc[3]);
    *squares = fold256(sq[0], sq[1], sq[2], sq[3]);
}

AVX2 static inline __m256 masked_gradient256(__m256 g, __m256 x, __m256 scale, __m256 shift, int relu_mask) {
    if (!relu_mask) return g;
    __m256 off = _mm256_cmp_ps(_mm256_add_ps(_mm256_mul_ps(x, scale), shift), _mm256_setzero_ps(), _CMP_LE_OQ);
    return _mm256_andnot_ps(off, g);
}

AVX2 static void gradient_sums_avx2(const float *x, const float *g, long plane, float mu, float scale, float shift,
                                    int relu_mask, float *sum_g, float *sum_gx) {
    __m256 vm = _mm256_set1_ps(mu), vs = _mm256_set1_ps(scale), vb = _mm256_set1_ps(shift);
    __m256 acc[4], accx[4];
    for (int q = 0; q < 4; q++) { acc[q] = _mm256_setzero_ps(); accx[q] = _mm256_setzero_ps(); }
    long j = 0;
    for (; j + 32 <= plane; j += 32) {
#pragma clang loop unroll(full)
        for (int q = 0; q < 4; q++) {
            __m256 xv = _mm256_loadu_ps(x + j + 8 * q);
            __m256 gv = masked_gradient256(_mm256_loadu_ps(g + j + 8 * q), xv, vs, vb, relu_mask);
            acc[q] = _mm256_add_ps(acc[q], gv); accx[q] = _mm256_fmadd_ps(gv, _mm256_sub_ps(xv, vm), accx[q]);
        }
    }
    if (j < plane) {
        float xb[32] __attribute__((aligned(32))), gb[32] __attribute__((aligned(32)));
        long count = plane - j;
        tail_copy(x + j, count, xb); tail_copy(g + j, count, gb);
        for (int q = 0; q < 4; q++) {
            __m256 mask = prefix_mask(count, 8 * q), xv = _mm256_load_ps(xb + 8 * q);
            __m256 gv = masked_gradient256(_mm256_load_ps(gb + 8 * q), xv, vs, vb, relu_mask);
            acc[q] = _mm256_blendv_ps(acc[q], _mm256_add_ps(acc[q], gv), mask);
            accx[q] = _mm256_blendv_ps(accx[q], _mm256_fmadd_ps(gv, _mm256_sub_ps(xv, vm), accx[q]), mask);
        }
    }
    *sum_g = fold256(acc[0], acc[1], acc[2], acc[3]);
    *sum_gx = fold256(accx[0], accx[1], accx[2], accx[3]);
}

// ---- the element-wise passes: 16 (AVX-512) or 8 (AVX2) lanes, then the last plane % 8 values one by one,
// each value computed as the Swift loops compute it (the vector ReLU keeps -0 and NaN, the scalar one is
// Swift.max(v, 0): +0 for -0) ----

static inline float scalar_relu(float v) { return 0.0f >= v ? 0.0f : v; }

AVX512 static inline __m512 relu512(__m512 v) {
    return _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_setzero_ps());
}
AVX2 static inline __m256 relu256(__m256 v) {
    return _mm256_andnot_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ), v);
}

AVX512 static void apply_row_avx512(const float *x, const float *r, float *y, long plane, float scale, float shift, int join) {
    __m512 vs = _mm512_set1_ps(scale), vb = _mm512_set1_ps(shift);
    long j = 0, whole = plane / 8 * 8;
    for (; j < whole; j += 16) {
        __mmask16 mask = whole - j >= 16 ? 0xFFFF : 0x00FF;
        __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mask, x + j), vs), vb);
        if (join == 2) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, r + j));
        if (join) v = relu512(v);
        _mm512_mask_storeu_ps(y + j, mask, v);
    }
    for (j = whole; j < plane; j++) {
        float v = x[j] * scale + shift;
        y[j] = join == 0 ? v : join == 1 ? scalar_relu(v) : scalar_relu(v + r[j]);
    }
}

AVX2 static void apply_row_avx2(const float *x, const float *r, float *y, long plane, float scale, float shift, int join) {
    __m256 vs = _mm256_set1_ps(scale), vb = _mm256_set1_ps(shift);
    long j = 0, whole = plane / 8 * 8;
    for (; j < whole; j += 8) {
        __m256 v = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + j), vs), vb);
        if (join == 2) v = _mm256_add_ps(v, _mm256_loadu_ps(r + j));
        if (join) v = relu256(v);
        _mm256_storeu_ps(y + j, v);
    }
    for (; j < plane; j++) {
        float v = x[j] * scale + shift;
        y[j] = join == 0 ? v : join == 1 ? scalar_relu(v) : scalar_relu(v + r[j]);
    }
}

// dx = k (g' - mean_g - (x - mu) c2), g' the masked gradient.
AVX512 static void input_gradient_row_avx512(const float *x, const float *g, float *dx, long plane, float mu, float scale,
                                             float shift, int relu_mask, float k, float mean_g, float c2) {
    __m512 vm = _mm512_set1_ps(mu), vs = _mm512_set1_ps(scale), vb = _mm512_set1_ps(shift);
    __m512 vk = _mm512_set1_ps(k), vg = _mm512_set1_ps(mean_g), vc = _mm512_set1_ps(c2);
    long j = 0, whole = plane / 8 * 8;
    for (; j < whole; j += 16) {
        __mmask16 mask = whole - j >= 16 ? 0xFFFF : 0x00FF;
        __m512 xv = _mm512_maskz_loadu_ps(mask, x + j);
        __m512 gv = masked_gradient512(_mm512_maskz_loadu_ps(mask, g + j), xv, vs, vb, relu_mask);
        __m512 v = _mm512_mul_ps(vk, _mm512_sub_ps(_mm512_sub_ps(gv, vg), _mm512_mul_ps(_mm512_sub_ps(xv, vm), vc)));
        _mm512_mask_storeu_ps(dx + j, mask, v);
    }
    for (j = whole; j < plane; j++) {
        float gs = relu_mask && x[j] * scale + shift <= 0 ? 0 : g[j];
        dx[j] = k * (gs - mean_g - (x[j] - mu) * c2);
    }
}

AVX2 static void input_gradient_row_avx2(const float *x, const float *g, float *dx, long plane, float mu, float scale,
                                         float shift, int relu_mask, float k, float mean_g, float c2) {
    __m256 vm = _mm256_set1_ps(mu), vs = _mm256_set1_ps(scale), vb = _mm256_set1_ps(shift);
    __m256 vk = _mm256_set1_ps(k), vg = _mm256_set1_ps(mean_g), vc = _mm256_set1_ps(c2);
    long j = 0, whole = plane / 8 * 8;
    for (; j < whole; j += 8) {
        __m256 xv = _mm256_loadu_ps(x + j);
        __m256 gv = masked_gradient256(_mm256_loadu_ps(g + j), xv, vs, vb, relu_mask);
        _mm256_storeu_ps(dx + j, _mm256_mul_ps(vk, _mm256_sub_ps(_mm256_sub_ps(gv, vg), _mm256_mul_ps(_mm256_sub_ps(xv, vm), vc))));
    }
    for (; j < plane; j++) {
        float gs = relu_mask && x[j] * scale + shift <= 0 ? 0 : g[j];
        dx[j] = k * (gs - mean_g - (x[j] - mu) * c2);
    }
}

// The path for these loops: the product path in force (so tests force them as they force the products).
static int norm_path(void) { return cohort_sgemm_level(); }

int cohort_bn_statistics(const float *x, long n, long stride, long plane, float *mean_out, float *variance_out) {
    int path = norm_path();
    if (path == COHORT_GEMM_BLAS || n < 1 || plane < 1) return 0;
    double size = (double)plane, mean = 0, m2 = 0;
    for (long i = 0; i < n; i++) {
        const float *row = x + i * stride;
        float total = path == COHORT_GEMM_AVX512 ? row_sum_avx512(row, plane) : row_sum_avx2(row, plane);
        float estimate = (float)((double)total / size), deviations, squares;
        if (path == COHORT_GEMM_AVX512) row_deviations_avx512(row, plane, estimate, &deviations, &squares);
        else row_deviations_avx2(row, plane, estimate, &deviations, &squares);
        double row_mean = (double)estimate + (double)deviations / size;
        double row_m2 = (double)squares - (double)deviations * (double)deviations / size;
        if (row_m2 < 0) row_m2 = 0;
        double delta = row_mean - mean, merged = (double)(i + 1);
        mean += delta / merged;
        m2 += row_m2 + delta * delta * size * (double)i / merged;
    }
    double variance = m2 / ((double)n * size);
    *mean_out = (float)mean;
    *variance_out = (float)(variance > 0 ? variance : 0);
    return 1;
}

int cohort_bn_apply(const float *x, const float *residual, float *y, long n, long stride, long plane, float scale,
                    float shift, int join) {
    int path = norm_path();
    if (path == COHORT_GEMM_BLAS) return 0;
    for (long i = 0; i < n; i++) {
        long off = i * stride;
        const float *r = residual ? residual + off : NULL;
        if (path == COHORT_GEMM_AVX512) apply_row_avx512(x + off, r, y + off, plane, scale, shift, join);
        else apply_row_avx2(x + off, r, y + off, plane, scale, shift, join);
    }
    return 1;
}

int cohort_bn_gradient_sums(const float *x, const float *g, long n, long stride, long plane, float mu, float scale,
                            float shift, int relu_mask, float *sums) {
    int path = norm_path();
    if (path == COHORT_GEMM_BLAS) return 0;
    float sum_g = 0, sum_gx = 0;
    for (long i = 0; i < n; i++) {
        long off = i * stride;
        float row_g, row_gx;
        if (path == COHORT_GEMM_AVX512) gradient_sums_avx512(x + off, g + off, plane, mu, scale, shift, relu_mask, &row_g, &row_gx);
        else gradient_sums_avx2(x + off, g + off, plane, mu, scale, shift, relu_mask, &row_g, &row_gx);
        sum_g += row_g; sum_gx += row_gx;
    }
    sums[0] = sum_g; sums[1] = sum_gx;
    return 1;
}

int cohort_bn_input_gradient(const float *x, const float *g, float *dx, long n, long stride, long plane, float mu,
                             float scale, float shift, int relu_mask, float k, float mean_g, float c2) {
    int path = norm_path();
    if (path == COHORT_GEMM_BLAS) return 0;
    for (long i = 0; i < n; i++) {
        long off = i * stride;
        if (path == COHORT_GEMM_AVX512)
            input_gradient_row_avx512(x + off, g + off, dx + off, plane, mu, scale, shift, relu_mask, k, mean_g, c2);
        else input_gradient_row_avx2(x + off, g + off, dx + off, plane, mu, scale, shift, relu_mask, k, mean_g, c2);
    }
    return 1;
}

#else

int cohort_bn_statistics(const float *x, long n, long stride, long plane, float *mean_out, float *variance_out) {
    (void)x; (void)n; (void)stride; (void)plane; (void)mean_out; (void)variance_out; return 0;
}
int cohort_bn_apply(const float *x, const float *residual, float *y, long n, long stride, long plane, float scale,
                    float shift, int join) {
    (void)x; (void)residual; (void)y; (void)n; (void)stride; (void)plane; (void)scale; (void)shift; (void)join; return 0;
}
int cohort_bn_gradient_sums(const float *x, const float *g, long n, long stride, long plane, float mu, float scale,
                            float shift, int relu_mask, float *sums) {
    (void)x; (void)g; (void)n; (void)stride; (void)plane; (void)mu; (void)scale; (void)shift; (void)relu_mask; (void)sums;
    return 0;
}
int cohort_bn_input_gradient(const float *x, const float *g, float *dx, long n, long stride, long plane, float mu,
                             float scale, float shift, int relu_mask, float k, float mean_g, float c2) {
    (void)x; (void)g; (void)dx; (void)n; (void)stride; (void)plane; (void)mu; (void)scale; (void)shift; (void)relu_mask;
    (void)k; (void)mean_g; (void)c2; return 0;
}

#endif
