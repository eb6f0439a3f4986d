#ifndef COHORT_CKERNELS_H
#define COHORT_CKERNELS_H

#include <stddef.h>
#include <stdint.h>

/// The paths of `cohort_sgemm`.
enum { COHORT_GEMM_BLAS = 0, COHORT_GEMM_AVX2 = 1, COHORT_GEMM_AVX512 = 2 };

/// Cohort's own single-precision matrix product for CPUs with AVX-512 or AVX2 + FMA (packed panels, an
/// 8 x 32 register tile on AVX-512, 8 x 24 as two 4 x 24 passes on AVX2). Single-threaded: Cohort splits work across its
/// own threads.
///
/// Row-major `C = alpha * op(A) op(B) + beta * C`, `op(A)` is `m x k`, `op(B)` is `k x n`. With `beta == 0`
/// the old contents of `C` are never read. Returns 0 and does nothing when the path in force is BLAS
/// (the caller then uses BLAS); 1 when it computed the product.
int cohort_sgemm(int transpose_a, int transpose_b, long m, long n, long k, float alpha,
                 const float *a, long lda, const float *b, long ldb, float beta, float *c, long ldc);

/// 1 when `cohort_sgemm` computes products in this process (the path in force is not BLAS).
int cohort_sgemm_supported(void);

/// The path in force: the CPU's best (AVX-512, else AVX2 + FMA, else BLAS), unless `COHORT_GEMM=blas` or
/// `COHORT_GEMM=avx2` chose otherwise (at most the CPU's best), or `cohort_sgemm_force` did on this thread.
/// The convolutions without lowering need one of Cohort's paths (not BLAS).
int cohort_sgemm_level(void);

/// The best path this CPU has.
int cohort_sgemm_capability(void);

/// Puts `wanted` in force (at most the CPU's best) on the calling thread only (-1: back to the process's
/// path), and returns the path in force there. For tests that compare the paths.
int cohort_sgemm_force(int wanted);

/// The calling thread's own choice from `cohort_sgemm_force` (-1: none, the process's path is in force).
int cohort_sgemm_forced(void);

/// The per-entry part of one CRCD row: anchor `n` of sample `i` against its K+1 contrast rows.
///
/// For each k, with `pan[k] = <p_k, a_n>`:
///     |w_k|^2 = norm_p[k] - 2 pan[k] + 2 eps sum_p[k] + w_base,    w_k = max(sqrt(max(|w_k|^2, 0)), 1e-12)
///     cos_k   = (ps[k] - pan[k] + eps sum_p[k] - base) / (w_k r)     (degenerate entries: degenerate_cos)
///     x_k     = exp(cos_k / T) / Z
/// loss = log(x_0 / (x_0 + c)) + sum_{k>0} log(m_pn / (x_k + c)) is returned; g_k = dL/dcos_k scaled by
/// `1 / (T rows)`; `cw[k] += h_k = g_k / (w_k r)` (0 for degenerate entries), and the sums
/// `out[0] = sum g_k cos_k`, `out[1] = sum h_k`, `out[2] = sum of g_k over degenerate entries`.
/// A degenerate entry is one whose `contrast[k] == anchor` (its w is the constant eps * 1).
double cohort_crcd_row(long k1, const float *pan, const float *norm_p, const float *sum_p, const float *ps,
                       const int64_t *contrast, int64_t anchor,
                       float r, float base, float w_base, float degenerate_cos, float eps, float inv_t, float inv_z,
                       float c, float m_pn, float grad_scale, float *cw, float *out);

/// `sum_k exp(cos_k / T)` over one CRCD row (the first call's estimate of the normaliser Z).
double cohort_crcd_exp_sum(long k1, const float *pan, const float *norm_p, const float *sum_p, const float *ps,
                           const int64_t *contrast, int64_t anchor, float r, float base, float w_base,
                           float degenerate_cos, float eps, float inv_t);

/// `destination[i, :] = source[rows[i], :]` for `count` rows of `width` floats, prefetching rows ahead
/// (random rows of a large memory: the copy waits on memory, not on arithmetic).
void cohort_gather_rows(const float *source, const int64_t *rows, long count, long width, float *destination);

/// `out[i] = exp(x[i])`, vectorised on the AVX-512 and AVX2 paths (relative error below 2e-7 over the float
/// range); NaN, infinities and x outside [-87.3, 88.7] go to libm's expf, as does everything on the BLAS path.
/// `out` may be `x`.
void cohort_exp(const float *x, float *out, long n);
/// `out[i] = log(x[i])`, vectorised as cohort_exp for positive normal x (absolute error below 2e-7 near 1);
/// every other value (zero, negatives, subnormals, infinity, NaN) goes to libm's logf. `out` may be `x`.
void cohort_log(const float *x, float *out, long n);


/// Floats needed by `cohort_pack_weights` for an `m x k` matrix.
long cohort_packed_weights_count(long m, long k);

/// Packs the row-major `m x k` matrix `a` (a convolution's weights, `Cout x Cin kh kw`) for
/// `cohort_conv_shifted_forward`. Returns 0 (and packs nothing) when the path in force is BLAS.
int cohort_pack_weights(long m, long k, const float *a, float *packed);

/// A stride-1 convolution whose output rows are as wide as the input's (a "same" 3x3, say), computed
/// without lowering: output pixel j of a channel reads input pixel j + (ky - ph) w + (kx - pw) of each
/// input channel, masked where that falls outside the image, straight into the product's registers.
///
/// Convolves `count` images (`channels x h x w`, `image_stride` floats apart) into `count` outputs
/// (`m x oh x w`, `out_stride` apart), with `packed` from `cohort_pack_weights` (`k = channels kh kw`).
/// AVX-512: an 8 x 32 register tile reads the shifted planes under masks; AVX2: each 24-pixel column panel
/// is gathered once (plain loads, lanes outside the image zeroed) into an L1 panel for 4 x 24 register
/// passes. Reads no memory outside [images, last image + channels h w). Returns 0 when the path in
/// force is BLAS (or memory for its tables ran out).
int cohort_conv_shifted_forward(long m, long channels, long h, long w, long kh, long kw, long ph, long pw,
                                const float *packed, const float *images, long image_stride, long count,
                                float *out, long out_stride);

/// The weight-gradient form of the same convolution: for `count` image pairs, accumulates
///     out[r * ldo + ch kh kw + t] += sum_j a[r][j] * b[ch][j + (t / kw - ph) w + (t % kw - pw)]
/// (masked where the shifted pixel leaves the image), `a` being `m x pixels` and `b` `channels x h x w`
/// per image, `a_stride` and `b_stride` floats apart. AVX2, and AVX-512 from 64 rows: `b`'s shifted planes
/// gathered and transposed into column panels; AVX-512 with 16 or 32 rows: `b`'s planes copied with a zero
/// border and broadcast, `a`'s rows the vector. Every path gives the same bits. Returns 0 when the path in
/// force is BLAS (or memory for its tables ran out).
int cohort_conv_shifted_weight_gradient(long m, long channels, long h, long w, long kh, long kw, long ph, long pw,
                                        const float *a, long a_stride, const float *b, long b_stride, long count,
                                        float *out, long ldo);

/// The two kernels above with an explicit tap table, for layouts the stride-1 forms do not describe: a
/// stride-2 convolution over images split into their four phase planes (even and odd rows and columns),
/// and its input gradient phase by phase. Row p = c taps + t of the implicit lowered matrix is the plane at
/// `c channel_stride + tap_plane[t]` floats, read at (y + tap_dy[t], x + tap_dx[t]) for output pixel
/// (y, x) of an `oh x vw` output, and zero where that falls outside the `vh x vw` grid.
///
/// `cohort_conv_taps_forward`: `out = packed * rows` per image, as `cohort_conv_shifted_forward`.
/// `cohort_conv_taps_weight_gradient`: `out[r * ldo + c taps + t] += sum_j a[r][j] * row_(c taps + t)[j]`,
/// `a` being `m x (oh vw)` per image. The whole of [first image, last image + channels channel_stride) must be
/// readable (the AVX2 path's plain loads run anywhere inside it). Both run the kernels of the forms above, on
/// the AVX2 and AVX-512 paths alike (the same bits on both), and return 0 on the BLAS path.
int cohort_conv_taps_forward(long m, long channels, long channel_stride, long vh, long vw, long oh, long taps,
                             const long *tap_plane, const long *tap_dy, const long *tap_dx, const float *packed,
                             const float *images, long image_stride, long count, float *out, long out_stride);
int cohort_conv_taps_weight_gradient(long m, long channels, long channel_stride, long vh, long vw, long oh, long taps,
                                     const long *tap_plane, const long *tap_dy, const long *tap_dx, const float *a,
                                     long a_stride, const float *b, long b_stride, long count, float *out, long ldo);

/// Batch normalisation's loops over one channel: `n` rows of `plane` floats, `stride` apart (`norm.c`). Each
/// returns 0 and does nothing on the BLAS path (the caller runs its portable loops), 1 when done. The
/// element-wise ones give the portable loops' bits; the sums run in one order on the AVX2 and AVX-512 paths,
/// fixed by `plane`.
///
/// `cohort_bn_statistics`: the mean and biased variance (per row, float sums of the deviations from the
/// row's estimated mean and of their squares; rows merged in double).
int cohort_bn_statistics(const float *x, long n, long stride, long plane, float *mean, float *variance);
/// `cohort_bn_apply`: `y = x * scale + shift`, then for `join` 1 `max(., 0)`, for `join` 2
/// `max(. + residual, 0)`. `y` may be `x`.
int cohort_bn_apply(const float *x, const float *residual, float *y, long n, long stride, long plane, float scale,
                    float shift, int join);
/// `cohort_bn_gradient_sums`: `sums[0] = sum g'`, `sums[1] = sum g' (x - mu)`, with `g' = g` or, with
/// `relu_mask`, 0 where `x * scale + shift <= 0`.
int cohort_bn_gradient_sums(const float *x, const float *g, long n, long stride, long plane, float mu, float scale,
                            float shift, int relu_mask, float *sums);
/// `cohort_bn_input_gradient`: `dx = k (g' - mean_g - (x - mu) c2)`. `dx` may be `g`.
int cohort_bn_input_gradient(const float *x, const float *g, float *dx, long n, long stride, long plane, float mu,
                             float scale, float shift, int relu_mask, float k, float mean_g, float c2);

/// Anonymous, private, read-write pages from the system (`mmap`): `bytes` (a multiple of the page size) of
/// zero-filled memory that takes no physical memory until it is touched. NULL when the system refuses.
void *cohort_pages_map(size_t bytes);

/// Returns `bytes` of pages at `address` (any number of mappings) to the system (`munmap`). 0 on success,
/// else the error number.
int cohort_pages_unmap(void *address, size_t bytes);

/// Moves the pages of `bytes` at `from` (inside one mapping) to `to`, replacing whatever was mapped there,
/// without copying or touching them (`mremap` with a fixed destination): their contents and physical memory
/// go with them and nothing is left at `from`. 0 on success, else the error number (ENOSYS where the system
/// cannot move pages, as on macOS).
int cohort_pages_move(void *from, size_t bytes, void *to);

/// The system's page size in bytes.
size_t cohort_page_size(void);

#endif
