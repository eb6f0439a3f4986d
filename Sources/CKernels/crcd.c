// CRCD's per-entry loop (see CKernels.h), vectorised with AVX-512 where the CPU has it, and the
// vectorised exp and log it uses.

#include "CKernels.h"

#include <math.h>
#include <string.h>
#include <pthread.h>

// Scalar form: the reference for the vector form and the path on CPUs without AVX-512.
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

static int has_avx512;
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;
static void detect(void) {
    __builtin_cpu_init();
    has_avx512 = __builtin_cpu_supports("avx512f");
}
static int avx512(void) {
    pthread_once(&detect_once, detect);
    return has_avx512;
}

// exp(x): x = n ln2 + r, |r| <= ln2/2, exp(r) by Cephes' expf polynomial, then scaled by 2^n.
AVX512 static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.7f));
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

AVX512 static void exp_avx512(const float *x, float *out, long n) {
    for (long i = 0; i < n; i += 16) {
        __mmask16 valid = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(out + i, valid, exp16(_mm512_maskz_loadu_ps(valid, x + i)));
    }
}

AVX512 static void log_avx512(const float *x, float *out, long n) {
    for (long i = 0; i < n; i += 16) {
        __mmask16 valid = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(out + i, valid, log16(_mm512_mask_loadu_ps(_mm512_set1_ps(1), valid, x + i)));
    }
}

#else
static int avx512(void) { return 0; }
static double crcd_row_avx512(long k1, const float *pan, const float *norm_p, const float *sum_p,
                              const float *ps, const int64_t *contrast, int64_t anchor, float r, float base,
                              float w_base, float degenerate_cos, float eps, float inv_t, float inv_z, float c,
                              float m_pn, float grad_scale, float *cw, float *out) {
    return crcd_row_scalar(k1, pan, norm_p, sum_p, ps, contrast, anchor, r, base, w_base, degenerate_cos, eps,
                           inv_t, inv_z, c, m_pn, grad_scale, cw, out);
}
static void exp_avx512(const float *x, float *out, long n) { (void)x; (void)out; (void)n; }
static void log_avx512(const float *x, float *out, long n) { (void)x; (void)out; (void)n; }
#endif

double cohort_crcd_row(long k1, const float *pan, const float *norm_p, const float *sum_p, const float *ps,
                       const int64_t *contrast, int64_t anchor, float r, float base, float w_base, float degenerate_cos,
                       float eps, float inv_t, float inv_z, float c, float m_pn, float grad_scale, float *cw,
                       float *out) {
    if (avx512())
        return crcd_row_avx512(k1, pan, norm_p, sum_p, ps, contrast, anchor, r, base, w_base, degenerate_cos, eps,
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
    if (avx512()) { exp_avx512(x, out, n); return; }
    for (long i = 0; i < n; i++) out[i] = expf(x[i]);
}

void cohort_log(const float *x, float *out, long n) {
    if (avx512()) { log_avx512(x, out, n); return; }
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
