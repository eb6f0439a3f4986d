// CRCD's per-entry loop (see CKernels.h), vectorised with AVX-512 or AVX2 + FMA, and the vectorised exp
// and log it uses. The path is the matrix products' (cohort_sgemm_level): the CPU's best unless
// COHORT_GEMM or a test chose another; on the BLAS path the scalar forms with libm's expf and logf run.

#include "CKernels.h"

#include <float.h>
#include <math.h>
#include <string.h>

// Scalar form: the reference for the vector forms and the path without Cohort's kernels.
static inline void crcd_entry(long k, const float *pan, const float *norm_p, const float *sum_p, const float *ps,
                              const int64_t *contrast, int64_t anchor, float r, float base, float w_base,
                              float degenerate_cos, float eps, float *cos_out, float *w_out, int *degenerate_out) {
    float w2 = norm_p[k] - 2 * pan[k] + 2 * eps * sum_p[k] + w_base;
    float w = fmaxf(sqrtf(fmaxf(w2, 0)), 1e-12f);
    float dot = ps[k] - pan[k] + eps * sum_p[k] - base;
    int degenerate = contrast[k] == anchor;
    *cos_out = degenerate ? degenerate_cos : dot / (w * r);
    *w_out = w;
    *degenerate_out = degenerate;
}

static double crcd_row_scalar(long k1, const float *pan, const float *norm_p, const float *sum_p, const float *ps,
                              const int64_t *contrast, int64_t anchor, float r, float base, float w_base,
                              float degenerate_cos, float eps, float inv_t, float inv_z, float c, float m_pn,
                              float grad_scale, float *cw, float *out) {
    double loss = 0;
    float cos_term = 0, h_sum = 0, degenerate_sum = 0;
    for (long k = 0; k < k1; k++) {
        float cosine, w;
        int degenerate;
        crcd_entry(k, pan, norm_p, sum_p, ps, contrast, anchor, r, base, w_base, degenerate_cos, eps, &cosine, &w,
                   &degenerate);
        float x = expf(cosine * inv_t) * inv_z;
        float g;
        if (k == 0) {
            loss += logf(x / (x + c));
            g = -c / (x + c) * grad_scale;
        } else {
            loss += logf(m_pn / (x + c));
            g = x / (x + c) * grad_scale;
        }
        cos_term += g * cosine;
        float h = degenerate ? 0 : g / (w * r);
        cw[k] += h;
        h_sum += h;
        degenerate_sum += degenerate ? g : 0;
    }
    out[0] = cos_term;
    out[1] = h_sum;
    out[2] = degenerate_sum;
    return loss;
}

#if defined(__x86_64__)
#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f")))
#define AVX2 __attribute__((target("avx2,fma")))

// exp(x): x = n ln2 + r, |r| <= ln2/2, exp(r) by Cephes' expf polynomial, then scaled by 2^n. The clamp's
// operands are ordered so that a NaN passes through (max and min return their second operand on NaN).
AVX512 static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_set1_ps(88.7f), _mm512_max_ps(_mm512_set1_ps(-87.3f), x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1)));
    return _mm512_scalef_ps(p, n);
}

// log(x) for positive normal x: x = m 2^e with m in [sqrt(1/2), sqrt(2)), log(m) by Cephes' logf polynomial.
AVX512 static inline __m512 log16(__m512 x) {
    __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
    __m512 e = _mm512_getexp_ps(x);
    __mmask16 high = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356237f), _CMP_GT_OQ);
    m = _mm512_mask_mul_ps(m, high, m, _mm512_set1_ps(0.5f));
    e = _mm512_mask_add_ps(e, high, e, _mm512_set1_ps(1));
    __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1));
    __m512 z = _mm512_mul_ps(f, f);
    __m512 y = _mm512_set1_ps(7.0376836292e-2f);
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(-1.1514610310e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.1676998740e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(-1.2420140846e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.4249322787e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(-1.6668057665e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.0000714765e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(-2.4999993993e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(3.3333331174e-1f));
    y = _mm512_mul_ps(_mm512_mul_ps(y, f), z);
    y = _mm512_fmadd_ps(e, _mm512_set1_ps(-2.12194440e-4f), y);
    y = _mm512_fnmadd_ps(z, _mm512_set1_ps(0.5f), y);
    return _mm512_fmadd_ps(e, _mm512_set1_ps(0.693359375f), _mm512_add_ps(f, y));
}

AVX512 static __mmask16 degenerate_mask(const int64_t *contrast, long k, __mmask16 valid, int64_t anchor) {
    __m512i a = _mm512_set1_epi64(anchor);
    __mmask8 low = _mm512_mask_cmpeq_epi64_mask((__mmask8)valid, _mm512_maskz_loadu_epi64((__mmask8)valid, contrast + k), a);
    __mmask8 high = _mm512_mask_cmpeq_epi64_mask((__mmask8)(valid >> 8),
                                                 _mm512_maskz_loadu_epi64((__mmask8)(valid >> 8), contrast + k + 8), a);
    return (__mmask16)(low | ((unsigned)high << 8));
}

AVX512 static double crcd_row_avx512(long k1, const float *pan, const float *norm_p, const float *sum_p,
                                     const float *ps, const int64_t *contrast, int64_t anchor, float r, float base,
                                     float w_base, float degenerate_cos, float eps, float inv_t, float inv_z, float c,
                                     float m_pn, float grad_scale, float *cw, float *out) {
    // Entry 0 (the positive) on its own, then the K negatives sixteen at a time.
    double loss = crcd_row_scalar(1, pan, norm_p, sum_p, ps, contrast, anchor, r, base, w_base, degenerate_cos, eps,
                                  inv_t, inv_z, c, m_pn, grad_scale, cw, out);
    __m512 cos_term = _mm512_setzero_ps(), h_sum = _mm512_setzero_ps(), degenerate_sum = _mm512_setzero_ps();
    __m512 loss_sum = _mm512_setzero_ps();
    const __m512 v_two_eps = _mm512_set1_ps(2 * eps), v_eps = _mm512_set1_ps(eps), v_w_base = _mm512_set1_ps(w_base);
    const __m512 v_base = _mm512_set1_ps(base), v_r = _mm512_set1_ps(r), v_degenerate_cos = _mm512_set1_ps(degenerate_cos);
    const __m512 v_inv_t = _mm512_set1_ps(inv_t), v_inv_z = _mm512_set1_ps(inv_z), v_c = _mm512_set1_ps(c);
    const __m512 zero = _mm512_setzero_ps();
    const __m512 v_log_m_pn = _mm512_set1_ps(logf(m_pn)), v_grad_scale = _mm512_set1_ps(grad_scale);
    for (long k = 1; k < k1; k += 16) {
        long left = k1 - k;
        __mmask16 valid = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        __m512 pa = _mm512_maskz_loadu_ps(valid, pan + k), np = _mm512_maskz_loadu_ps(valid, norm_p + k);
        __m512 sp = _mm512_maskz_loadu_ps(valid, sum_p + k), dp = _mm512_maskz_loadu_ps(valid, ps + k);
        __m512 w2 = _mm512_add_ps(_mm512_fmadd_ps(v_two_eps, sp, _mm512_fnmadd_ps(_mm512_set1_ps(2), pa, np)), v_w_base);
        __m512 w = _mm512_max_ps(_mm512_sqrt_ps(_mm512_max_ps(w2, zero)), _mm512_set1_ps(1e-12f));
        __m512 dot = _mm512_sub_ps(_mm512_fmadd_ps(v_eps, sp, _mm512_sub_ps(dp, pa)), v_base);
        __m512 wr = _mm512_mul_ps(w, v_r);
        __mmask16 degenerate = degenerate_mask(contrast, k, valid, anchor);
        __m512 cosine = _mm512_mask_blend_ps(degenerate, _mm512_div_ps(dot, wr), v_degenerate_cos);
        __m512 x = _mm512_mul_ps(exp16(_mm512_mul_ps(cosine, v_inv_t)), v_inv_z);
        __m512 xc = _mm512_add_ps(x, v_c);
        loss_sum = _mm512_mask_add_ps(loss_sum, valid, loss_sum, _mm512_sub_ps(v_log_m_pn, log16(xc)));
        __m512 g = _mm512_maskz_mul_ps(valid, _mm512_div_ps(x, xc), v_grad_scale);
        cos_term = _mm512_fmadd_ps(g, cosine, cos_term);
        __m512 h = _mm512_maskz_div_ps(valid & (__mmask16)~degenerate, g, wr);
        _mm512_mask_storeu_ps(cw + k, valid, _mm512_add_ps(_mm512_maskz_loadu_ps(valid, cw + k), h));
        h_sum = _mm512_add_ps(h_sum, h);
        degenerate_sum = _mm512_mask_add_ps(degenerate_sum, degenerate, degenerate_sum, g);
    }
    out[0] += _mm512_reduce_add_ps(cos_term);
    out[1] += _mm512_reduce_add_ps(h_sum);
    out[2] += _mm512_reduce_add_ps(degenerate_sum);
    return loss + (double)_mm512_reduce_add_ps(loss_sum);
}

// The vector forms' domains: exp16/exp8 clamp x to [-87.3, 88.7] and log16/log8 read positive normal numbers.
// Lanes outside them (NaN, infinities, zero, negatives, subnormals, exp's far ends) are computed again with
// libm's expf and logf, so the array forms agree with libm on every special value.
#define EXP_LOW (-87.3f)
#define EXP_HIGH 88.7f

// Recomputes lanes `bad` (bit i: lane i) of the group starting at `x` with `f`. `out` may alias `x`, so the
// group's input is taken from `saved`.
static void recompute_lanes(const float *saved, unsigned bad, float (*f)(float), float *out) {
    while (bad) {
        int lane = __builtin_ctz(bad);
        out[lane] = f(saved[lane]);
        bad &= bad - 1;
    }
}

AVX512 static void exp_avx512(const float *x, float *out, long n) {
    for (long i = 0; i < n; i += 16) {
        __mmask16 valid = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(valid, x + i);
        __mmask16 inside = _mm512_cmp_ps_mask(v, _mm512_set1_ps(EXP_LOW), _CMP_GE_OQ)
                         & _mm512_cmp_ps_mask(v, _mm512_set1_ps(EXP_HIGH), _CMP_LE_OQ);
        _mm512_mask_storeu_ps(out + i, valid, exp16(v));
        unsigned bad = (unsigned)(valid & (__mmask16)~inside);
        if (bad) {
            float saved[16];
            _mm512_storeu_ps(saved, v);
            recompute_lanes(saved, bad, expf, out + i);
        }
    }
}

AVX512 static void log_avx512(const float *x, float *out, long n) {
    for (long i = 0; i < n; i += 16) {
        __mmask16 valid = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(1), valid, x + i);
        __mmask16 inside = _mm512_cmp_ps_mask(v, _mm512_set1_ps(FLT_MIN), _CMP_GE_OQ)
                         & _mm512_cmp_ps_mask(v, _mm512_set1_ps(FLT_MAX), _CMP_LE_OQ);
        _mm512_mask_storeu_ps(out + i, valid, log16(v));
        unsigned bad = (unsigned)(valid & (__mmask16)~inside);
        if (bad) {
            float saved[16];
            _mm512_storeu_ps(saved, v);
            recompute_lanes(saved, bad, logf, out + i);
        }
    }
}


// exp(x) on AVX2, the same arithmetic as exp16 (so the same bits): 2^n applied as two exact power-of-two
// factors, since n reaches 128 (x near 88.7), one past the largest exponent a single factor can hold.
AVX2 static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_set1_ps(88.7f), _mm256_max_ps(_mm256_set1_ps(-87.3f), x));   // NaN passes through
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1)));
    __m256i e = _mm256_cvtps_epi32(n), half = _mm256_srai_epi32(e, 1);
    __m256 first = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, _mm256_set1_epi32(127)), 23));
    __m256 second = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(e, half), _mm256_set1_epi32(127)), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, first), second);
}

// log(x) for positive normal x on AVX2, the same arithmetic as log16: the mantissa in [1, 2) and the
// exponent read from the bits (what getmant and getexp give for normal numbers).
AVX2 static inline __m256 log8(__m256 x) {
    __m256i bits = _mm256_castps_si256(x);
    __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007FFFFF)),
                                                   _mm256_set1_epi32(0x3F800000)));
    __m256 e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127)));
    __m256 high = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421356237f), _CMP_GT_OQ);
    m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), high);
    e = _mm256_blendv_ps(e, _mm256_add_ps(e, _mm256_set1_ps(1)), high);
    __m256 f = _mm256_sub_ps(m, _mm256_set1_ps(1));
    __m256 z = _mm256_mul_ps(f, f);
    __m256 y = _mm256_set1_ps(7.0376836292e-2f);
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(-1.1514610310e-1f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.1676998740e-1f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(-1.2420140846e-1f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.4249322787e-1f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(-1.6668057665e-1f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(2.0000714765e-1f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(-2.4999993993e-1f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(3.3333331174e-1f));
    y = _mm256_mul_ps(_mm256_mul_ps(y, f), z);
    y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
    y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
    __m256 result = _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), _mm256_add_ps(f, y));
    // NaN in, NaN out (the bit manipulation above would turn it into a finite number; log16's getmant and
    // getexp keep it NaN).
    return _mm256_blendv_ps(result, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

// The lanes of the last, partial group of 8 (the first `left` lanes).
AVX2 static inline __m256i first_lanes(long left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

AVX2 static inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// crcd_row_avx512's arithmetic eight entries at a time (the per-entry values are the same bits; the row's
// sums are added in another order).
AVX2 static double crcd_row_avx2(long k1, const float *pan, const float *norm_p, const float *sum_p,
                                 const float *ps, const int64_t *contrast, int64_t anchor, float r, float base,
                                 float w_base, float degenerate_cos, float eps, float inv_t, float inv_z, float c,
                                 float m_pn, float grad_scale, float *cw, float *out) {
    double loss = crcd_row_scalar(1, pan, norm_p, sum_p, ps, contrast, anchor, r, base, w_base, degenerate_cos, eps,
                                  inv_t, inv_z, c, m_pn, grad_scale, cw, out);
    __m256 cos_term = _mm256_setzero_ps(), h_sum = _mm256_setzero_ps(), degenerate_sum = _mm256_setzero_ps();
    __m256 loss_sum = _mm256_setzero_ps();
    const __m256 v_two_eps = _mm256_set1_ps(2 * eps), v_eps = _mm256_set1_ps(eps), v_w_base = _mm256_set1_ps(w_base);
    const __m256 v_base = _mm256_set1_ps(base), v_r = _mm256_set1_ps(r), v_degenerate_cos = _mm256_set1_ps(degenerate_cos);
    const __m256 v_inv_t = _mm256_set1_ps(inv_t), v_inv_z = _mm256_set1_ps(inv_z), v_c = _mm256_set1_ps(c);
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1);
    const __m256 v_log_m_pn = _mm256_set1_ps(logf(m_pn)), v_grad_scale = _mm256_set1_ps(grad_scale);
    const __m256i v_anchor = _mm256_set1_epi64x(anchor);
    // The row's last, partial group is copied into zero-padded buffers, so that every load and store is a
    // plain one that stays inside the row (no masked loads: AMD may fault on their masked-off lanes).
    float tail_pan[8], tail_norm[8], tail_sum[8], tail_ps[8], tail_cw[8];
    int64_t tail_contrast[8];
    for (long k = 1; k < k1; k += 8) {
        long left = k1 - k;
        __m256i lanes = left >= 8 ? _mm256_set1_epi32(-1) : first_lanes(left);
        __m256 valid = _mm256_castsi256_ps(lanes);
        const float *g_pan = pan + k, *g_norm = norm_p + k, *g_sum = sum_p + k, *g_ps = ps + k;
        const int64_t *g_contrast = contrast + k;
        float *g_cw = cw + k;
        if (left < 8) {
            size_t bytes = sizeof(float) * (size_t)left;
            memset(tail_pan, 0, sizeof tail_pan); memcpy(tail_pan, g_pan, bytes);
            memset(tail_norm, 0, sizeof tail_norm); memcpy(tail_norm, g_norm, bytes);
            memset(tail_sum, 0, sizeof tail_sum); memcpy(tail_sum, g_sum, bytes);
            memset(tail_ps, 0, sizeof tail_ps); memcpy(tail_ps, g_ps, bytes);
            memset(tail_cw, 0, sizeof tail_cw); memcpy(tail_cw, g_cw, bytes);
            memset(tail_contrast, 0, sizeof tail_contrast); memcpy(tail_contrast, g_contrast, sizeof(int64_t) * (size_t)left);
            g_pan = tail_pan; g_norm = tail_norm; g_sum = tail_sum; g_ps = tail_ps; g_contrast = tail_contrast;
            g_cw = tail_cw;
        }
        __m256 pa = _mm256_loadu_ps(g_pan), np = _mm256_loadu_ps(g_norm);
        __m256 sp = _mm256_loadu_ps(g_sum), dp = _mm256_loadu_ps(g_ps);
        __m256 w2 = _mm256_add_ps(_mm256_fmadd_ps(v_two_eps, sp, _mm256_fnmadd_ps(_mm256_set1_ps(2), pa, np)), v_w_base);
        __m256 w = _mm256_max_ps(_mm256_sqrt_ps(_mm256_max_ps(w2, zero)), _mm256_set1_ps(1e-12f));
        __m256 dot = _mm256_sub_ps(_mm256_fmadd_ps(v_eps, sp, _mm256_sub_ps(dp, pa)), v_base);
        __m256 wr = _mm256_mul_ps(w, v_r);
        // Entries whose contrast row is the anchor itself: two 4 x 64-bit compares, narrowed to 8 x 32.
        __m256i low = _mm256_loadu_si256((const __m256i *)g_contrast);
        __m256i highs = _mm256_loadu_si256((const __m256i *)(g_contrast + 4));
        const __m256i evens = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
        __m256i eq = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(_mm256_cmpeq_epi64(low, v_anchor), evens),
                                        _mm256_permutevar8x32_epi32(_mm256_cmpeq_epi64(highs, v_anchor), evens), 0xF0);
        __m256 degenerate = _mm256_and_ps(_mm256_castsi256_ps(eq), valid);
        // Lanes past the row's end compute on a harmless 1 (their results are masked off below).
        __m256 cosine = _mm256_blendv_ps(_mm256_div_ps(dot, _mm256_blendv_ps(one, wr, valid)), v_degenerate_cos, degenerate);
        __m256 x = _mm256_mul_ps(exp8(_mm256_mul_ps(cosine, v_inv_t)), v_inv_z);
        __m256 xc = _mm256_add_ps(x, v_c);
        loss_sum = _mm256_add_ps(loss_sum, _mm256_and_ps(_mm256_sub_ps(v_log_m_pn, log8(_mm256_blendv_ps(one, xc, valid))), valid));
        __m256 g = _mm256_and_ps(_mm256_mul_ps(_mm256_div_ps(x, xc), v_grad_scale), valid);
        cos_term = _mm256_fmadd_ps(g, cosine, cos_term);
        __m256 h = _mm256_andnot_ps(degenerate, _mm256_div_ps(g, _mm256_blendv_ps(one, wr, valid)));
        _mm256_storeu_ps(g_cw, _mm256_add_ps(_mm256_loadu_ps(g_cw), h));
        if (left < 8) memcpy(cw + k, tail_cw, sizeof(float) * (size_t)left);
        h_sum = _mm256_add_ps(h_sum, h);
        degenerate_sum = _mm256_add_ps(degenerate_sum, _mm256_and_ps(g, degenerate));
    }
    out[0] += sum8(cos_term);
    out[1] += sum8(h_sum);
    out[2] += sum8(degenerate_sum);
    return loss + (double)sum8(loss_sum);
}

// exp and log over n values, eight at a time; the last group through a padded buffer (so it computes on the
// same vector arithmetic as the others, and reads and writes nothing past n). Lanes outside the vector
// domain are computed again with libm (see recompute_lanes).
AVX2 static inline __attribute__((always_inline)) void map_avx2(const float *x, float *out, long n, __m256 (*vector)(__m256), float (*scalar)(float),
                          float low, float high, float pad) {
    for (long i = 0; i < n; i += 8) {
        long count = n - i < 8 ? n - i : 8;
        float group[8] = {pad, pad, pad, pad, pad, pad, pad, pad}, result[8];
        __m256 v;
        if (count == 8) v = _mm256_loadu_ps(x + i);
        else { memcpy(group, x + i, sizeof(float) * (size_t)count); v = _mm256_loadu_ps(group); }
        __m256 inside = _mm256_and_ps(_mm256_cmp_ps(v, _mm256_set1_ps(low), _CMP_GE_OQ),
                                      _mm256_cmp_ps(v, _mm256_set1_ps(high), _CMP_LE_OQ));
        unsigned bad = ~(unsigned)_mm256_movemask_ps(inside) & ((1u << count) - 1);
        if (count == 8) {
            if (bad) _mm256_storeu_ps(group, v);
            _mm256_storeu_ps(out + i, vector(v));
            if (bad) recompute_lanes(group, bad, scalar, out + i);
        } else {
            _mm256_storeu_ps(result, vector(v));
            recompute_lanes(group, bad, scalar, result);
            memcpy(out + i, result, sizeof(float) * (size_t)count);
        }
    }
}

AVX2 static __m256 exp8_call(__m256 x) { return exp8(x); }
AVX2 static __m256 log8_call(__m256 x) { return log8(x); }

AVX2 static void exp_avx2(const float *x, float *out, long n) {
    map_avx2(x, out, n, exp8_call, expf, EXP_LOW, EXP_HIGH, 0);
}

AVX2 static void log_avx2(const float *x, float *out, long n) {
    map_avx2(x, out, n, log8_call, logf, FLT_MIN, FLT_MAX, 1);
}

#else
static double crcd_row_avx512(long k1, const float *pan, const float *norm_p, const float *sum_p,
                              const float *ps, const int64_t *contrast, int64_t anchor, float r, float base,
                              float w_base, float degenerate_cos, float eps, float inv_t, float inv_z, float c,
                              float m_pn, float grad_scale, float *cw, float *out) {
    return crcd_row_scalar(k1, pan, norm_p, sum_p, ps, contrast, anchor, r, base, w_base, degenerate_cos, eps,
                           inv_t, inv_z, c, m_pn, grad_scale, cw, out);
}
static double crcd_row_avx2(long k1, const float *pan, const float *norm_p, const float *sum_p,
                            const float *ps, const int64_t *contrast, int64_t anchor, float r, float base,
                            float w_base, float degenerate_cos, float eps, float inv_t, float inv_z, float c,
                            float m_pn, float grad_scale, float *cw, float *out) {
    return crcd_row_scalar(k1, pan, norm_p, sum_p, ps, contrast, anchor, r, base, w_base, degenerate_cos, eps,
                           inv_t, inv_z, c, m_pn, grad_scale, cw, out);
}
static void exp_avx512(const float *x, float *out, long n) { (void)x; (void)out; (void)n; }
static void log_avx512(const float *x, float *out, long n) { (void)x; (void)out; (void)n; }
static void exp_avx2(const float *x, float *out, long n) { (void)x; (void)out; (void)n; }
static void log_avx2(const float *x, float *out, long n) { (void)x; (void)out; (void)n; }
#endif

double cohort_crcd_row(long k1, const float *pan, const float *norm_p, const float *sum_p, const float *ps,
                       const int64_t *contrast, int64_t anchor, float r, float base, float w_base, float degenerate_cos,
                       float eps, float inv_t, float inv_z, float c, float m_pn, float grad_scale, float *cw,
                       float *out) {
    int path = cohort_sgemm_level();
    if (path == COHORT_GEMM_AVX512)
        return crcd_row_avx512(k1, pan, norm_p, sum_p, ps, contrast, anchor, r, base, w_base, degenerate_cos, eps,
                               inv_t, inv_z, c, m_pn, grad_scale, cw, out);
    if (path == COHORT_GEMM_AVX2)
        return crcd_row_avx2(k1, pan, norm_p, sum_p, ps, contrast, anchor, r, base, w_base, degenerate_cos, eps,
                             inv_t, inv_z, c, m_pn, grad_scale, cw, out);
    return crcd_row_scalar(k1, pan, norm_p, sum_p, ps, contrast, anchor, r, base, w_base, degenerate_cos, eps, inv_t,
                           inv_z, c, m_pn, grad_scale, cw, out);
}

double cohort_crcd_exp_sum(long k1, const float *pan, const float *norm_p, const float *sum_p, const float *ps,
                           const int64_t *contrast, int64_t anchor, float r, float base, float w_base,
                           float degenerate_cos, float eps, float inv_t) {
    double total = 0;
    for (long k = 0; k < k1; k++) {
        float cosine, w;
        int degenerate;
        crcd_entry(k, pan, norm_p, sum_p, ps, contrast, anchor, r, base, w_base, degenerate_cos, eps, &cosine, &w,
                   &degenerate);
        total += expf(cosine * inv_t);
    }
    return total;
}

void cohort_exp(const float *x, float *out, long n) {
    int path = cohort_sgemm_level();
    if (path == COHORT_GEMM_AVX512) { exp_avx512(x, out, n); return; }
    if (path == COHORT_GEMM_AVX2) { exp_avx2(x, out, n); return; }
    for (long i = 0; i < n; i++) out[i] = expf(x[i]);
}

void cohort_log(const float *x, float *out, long n) {
    int path = cohort_sgemm_level();
    if (path == COHORT_GEMM_AVX512) { log_avx512(x, out, n); return; }
    if (path == COHORT_GEMM_AVX2) { log_avx2(x, out, n); return; }
    for (long i = 0; i < n; i++) out[i] = logf(x[i]);
}

void cohort_gather_rows(const float *source, const int64_t *rows, long count, long width, float *destination) {
    const long ahead = 8, line = 64 / sizeof(float);
    for (long i = 0; i < count; i++) {
        if (i + ahead < count) {
            const char *next = (const char *)(source + rows[i + ahead] * width);
            for (long offset = 0; offset < width; offset += line) __builtin_prefetch(next + offset * sizeof(float));
        }
        memcpy(destination + i * width, source + rows[i] * width, sizeof(float) * (size_t)width);
    }
}
