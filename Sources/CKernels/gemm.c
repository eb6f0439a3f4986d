// Cohort's single-precision matrix product for x86-64 CPUs with AVX-512 or AVX2 + FMA, and the stride-1
// convolutions without lowering built on the same register tiles.
//
// The classic blocked scheme (Goto; BLIS's five loops): op(B) is packed into kc x width column panels that
// live in L1 while the packed mc x kc block of op(A), in MR-row panels, streams from L2 through the
// register tile: on AVX-512 an 8 x 32 tile (16 zmm accumulators); on AVX2 an 8 x 24 tile as two 4 x 24
// passes (12 ymm accumulators, 3 B vectors and the broadcast: all 16 ymm registers, so the loop is written
// in assembly). Edge tiles go through a small scratch tile. Every product is single-threaded and
// deterministic: each element's k sum runs in order (one FMA chain) over k blocks that depend only on k,
// so the order depends only on the shapes — and the two paths give the same results for alpha = 1 and
// beta = 0 or 1 (the only ones Cohort uses; other alpha and beta are rounded in a different order at the
// store).

#include "CKernels.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

// MR-row A panels for both paths; B panels NR (AVX-512) or NR_AVX2 columns wide.
enum { MR = 8, NR = 32, NR_AVX2 = 24, KC = 256, MC = 256, NC = 2048 };

#define AVX512 __attribute__((target("avx512f")))
#define AVX2 __attribute__((target("avx2,fma")))

// The path in force for the process (COHORT_GEMM_*, set once), the best this CPU has, and a thread's own
// choice (cohort_sgemm_force; -1: the process's).
static int level;
static int capability;
static _Thread_local int forced = -1;
static pthread_once_t support_once = PTHREAD_ONCE_INIT;

static void detect(void) {
    __builtin_cpu_init();
    capability = __builtin_cpu_supports("avx512f") ? COHORT_GEMM_AVX512
               : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? COHORT_GEMM_AVX2 : COHORT_GEMM_BLAS;
    const char *choice = getenv("COHORT_GEMM");
    // By default the best path the CPU has: with Cohort's kernels the stride-1 convolutions run without
    // lowering, which beats OpenBLAS with lowering on AVX2 CPUs too (docs/benchmarks.md).
    int chosen = capability;
    if (choice && strcmp(choice, "avx2") == 0) chosen = COHORT_GEMM_AVX2;
    if (choice && strcmp(choice, "blas") == 0) chosen = COHORT_GEMM_BLAS;
    level = chosen < capability ? chosen : capability;
}

int cohort_sgemm_level(void) {
    pthread_once(&support_once, detect);
    return forced >= 0 ? forced : level;
}

int cohort_sgemm_capability(void) {
    pthread_once(&support_once, detect);
    return capability;
}

int cohort_sgemm_force(int wanted) {
    pthread_once(&support_once, detect);
    forced = wanted < 0 ? -1 : wanted < capability ? wanted : capability;
    return cohort_sgemm_level();
}

int cohort_sgemm_forced(void) { return forced; }

int cohort_sgemm_supported(void) { return cohort_sgemm_level() != COHORT_GEMM_BLAS; }

// Per-thread packing buffers, freed when the thread exits.
typedef struct { float *a, *b; } PackBuffers;
static pthread_key_t buffers_key;
static pthread_once_t buffers_once = PTHREAD_ONCE_INIT;

static void free_buffers(void *pointer) {
    PackBuffers *buffers = pointer;
    free(buffers->a);
    free(buffers->b);
    free(buffers);
}

static void make_buffers_key(void) { pthread_key_create(&buffers_key, free_buffers); }

static PackBuffers *thread_buffers(void) {
    pthread_once(&buffers_once, make_buffers_key);
    PackBuffers *buffers = pthread_getspecific(buffers_key);
    if (buffers) return buffers;
    buffers = malloc(sizeof *buffers);
    if (!buffers) return NULL;
    buffers->a = aligned_alloc(64, sizeof(float) * MC * KC);
    buffers->b = aligned_alloc(64, sizeof(float) * KC * NC);
    if (!buffers->a || !buffers->b || pthread_setspecific(buffers_key, buffers) != 0) {
        free_buffers(buffers);
        return NULL;
    }
    return buffers;
}

static inline long min_long(long x, long y) { return x < y ? x : y; }

// The depth of the k blocks for a product k deep: as even as possible (288 = 2 x 144, not 256 + 32, whose
// second block would load and store C for little work), a multiple of 8, at most KC.
static inline long block_depth(long k) {
    long blocks = (k + KC - 1) / KC, depth = (k + blocks - 1) / blocks;
    return (depth + 7) / 8 * 8;
}

// dst[i * ldd + q] = lane i of r[q]: an 8 x 8 transpose of eight row vectors.
AVX2 static inline void transpose_rows8(const __m256 r[8], float *dst, long ldd) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]), t2 = _mm256_unpacklo_ps(r[2], r[3]),
           t3 = _mm256_unpackhi_ps(r[2], r[3]), t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]),
           t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),
           u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2)),
           u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)), u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2)),
           u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)), u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(dst + ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}

// dst[i * ldd + r] = src[r * lds + i] for an 8 x 8 block.
AVX2 static inline void transpose8(const float *src, long lds, float *dst, long ldd) {
    __m256 r[8];
#pragma clang loop unroll(full)
    for (int q = 0; q < 8; q++) r[q] = _mm256_loadu_ps(src + q * lds);
    transpose_rows8(r, dst, ldd);
}

// op(A)[i0 : i0+mc, p0 : p0+kc] into MR-row panels: panel q holds rows q*MR.., as kc groups of MR.
// Packing needs only 256-bit moves, so one version serves both paths.
AVX2 static void pack_a(int transpose, const float *a, long lda, long i0, long p0, long mc, long kc, float *dst) {
    for (long ip = 0; ip < mc; ip += MR) {
        long mr = min_long(MR, mc - ip);
        float *d = dst + ip * kc;
        if (!transpose) {
            const float *src = a + (i0 + ip) * lda + p0;
            long p = 0;
            if (mr == MR)
                for (; p + 8 <= kc; p += 8) transpose8(src + p, lda, d + p * MR, MR);
            for (; p < kc; p++) {
                long r = 0;
                for (; r < mr; r++) d[p * MR + r] = src[r * lda + p];
                for (; r < MR; r++) d[p * MR + r] = 0;
            }
        } else {
            for (long p = 0; p < kc; p++) {
                const float *src = a + (p0 + p) * lda + i0 + ip;
                if (mr == MR) {
                    _mm256_store_ps(d + p * MR, _mm256_loadu_ps(src));
                    continue;
                }
                long r = 0;
                for (; r < mr; r++) d[p * MR + r] = src[r];
                for (; r < MR; r++) d[p * MR + r] = 0;
            }
        }
    }
}

// op(B)[p0 : p0+kc, j0 : j0+nc] into column panels `width` wide (the path's: 32 or 24): panel q holds
// columns q*width.., as kc rows of `width`.
AVX2 static void pack_b(int transpose, const float *b, long ldb, long p0, long j0, long kc, long nc, float *dst, long width) {
    for (long jp = 0; jp < nc; jp += width) {
        long nr = min_long(width, nc - jp);
        float *d = dst + jp * kc;
        if (!transpose) {
            if (nr == width) {
                for (long p = 0; p < kc; p++) {
                    const float *src = b + (p0 + p) * ldb + j0 + jp;
                    for (long v = 0; v < width; v += 8) _mm256_store_ps(d + p * width + v, _mm256_loadu_ps(src + v));
                }
            } else {
                for (long p = 0; p < kc; p++) {
                    const float *src = b + (p0 + p) * ldb + j0 + jp;
                    long c = 0;
                    for (; c < nr; c++) d[p * width + c] = src[c];
                    for (; c < width; c++) d[p * width + c] = 0;
                }
            }
        } else {
            const float *src = b + (j0 + jp) * ldb + p0;
            long c = 0;
            for (; c + 8 <= nr; c += 8) {
                long p = 0;
                for (; p + 8 <= kc; p += 8) transpose8(src + c * ldb + p, ldb, d + p * width + c, width);
                for (; p < kc; p++)
                    for (long cc = c; cc < c + 8; cc++) d[p * width + cc] = src[cc * ldb + p];
            }
            for (; c < width; c++)
                for (long p = 0; p < kc; p++) d[p * width + c] = c < nr ? src[c * ldb + p] : 0;
        }
    }
}

// C[0:MR, 0:NR] = alpha * (A panel x B panel) + beta * C (C not read when beta == 0).
AVX512 static void kernel(long kc, const float *restrict a, const float *restrict b, long ldb, float *c, long ldc,
                          float alpha, float beta) {
    __m512 c0[MR], c1[MR];
#pragma clang loop unroll(full)
    for (int r = 0; r < MR; r++) { c0[r] = _mm512_setzero_ps(); c1[r] = _mm512_setzero_ps(); }
#pragma clang loop unroll_count(4)
    for (long p = 0; p < kc; p++) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#pragma clang loop unroll(full)
        for (int r = 0; r < MR; r++) {
            __m512 x = _mm512_set1_ps(a[r]);
            c0[r] = _mm512_fmadd_ps(x, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(x, b1, c1[r]);
        }
        a += MR;
        b += ldb;
    }
    __m512 va = _mm512_set1_ps(alpha);
    if (beta == 0) {
#pragma clang loop unroll(full)
        for (int r = 0; r < MR; r++) {
            _mm512_storeu_ps(c + r * ldc, _mm512_mul_ps(va, c0[r]));
            _mm512_storeu_ps(c + r * ldc + 16, _mm512_mul_ps(va, c1[r]));
        }
    } else {
        __m512 vb = _mm512_set1_ps(beta);
#pragma clang loop unroll(full)
        for (int r = 0; r < MR; r++) {
            float *row = c + r * ldc;
            _mm512_storeu_ps(row, _mm512_fmadd_ps(va, c0[r], _mm512_mul_ps(vb, _mm512_loadu_ps(row))));
            _mm512_storeu_ps(row + 16, _mm512_fmadd_ps(va, c1[r], _mm512_mul_ps(vb, _mm512_loadu_ps(row + 16))));
        }
    }
}

// The same for the left 16 columns of the tile only (edge tiles 16 or fewer columns wide).
AVX512 static void kernel16(long kc, const float *restrict a, const float *restrict b, long ldb, float *c, long ldc,
                            float alpha, float beta) {
    __m512 c0[MR];
#pragma clang loop unroll(full)
    for (int r = 0; r < MR; r++) c0[r] = _mm512_setzero_ps();
#pragma clang loop unroll_count(4)
    for (long p = 0; p < kc; p++) {
        __m512 b0 = _mm512_loadu_ps(b);
#pragma clang loop unroll(full)
        for (int r = 0; r < MR; r++) c0[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r]), b0, c0[r]);
        a += MR;
        b += ldb;
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma clang loop unroll(full)
    for (int r = 0; r < MR; r++) {
        float *row = c + r * ldc;
        __m512 v = _mm512_mul_ps(va, c0[r]);
        _mm512_storeu_ps(row, beta == 0 ? v : _mm512_fmadd_ps(vb, _mm512_loadu_ps(row), v));
    }
}

// One k row of the 4 x 24 pass: B's row as three 8-wide vectors, A's four values (at the byte offsets given)
// broadcast in turn, twelve FMAs into the accumulators; then B moves down a row.
#define ROW_4X24_A(offset, r)                                                                                       \
    "vbroadcastss " #offset "(%[a]), %%ymm15\n\t"                                                                   \
    "vfmadd231ps %%ymm12, %%ymm15, %[c" #r "0]\n\t"                                                                 \
    "vfmadd231ps %%ymm13, %%ymm15, %[c" #r "1]\n\t"                                                                 \
    "vfmadd231ps %%ymm14, %%ymm15, %[c" #r "2]\n\t"
#define ROW_4X24(o0, o1, o2, o3)                                                                                    \
    "vmovups (%[b]), %%ymm12\n\t"                                                                                   \
    "vmovups 32(%[b]), %%ymm13\n\t"                                                                                 \
    "vmovups 64(%[b]), %%ymm14\n\t"                                                                                 \
    ROW_4X24_A(o0, 0) ROW_4X24_A(o1, 1) ROW_4X24_A(o2, 2) ROW_4X24_A(o3, 3)                                         \
    "addq %[step], %[b]\n\t"

// acc[0..11] = rows 0-3 of an MR-row A panel x kc rows of 24 columns of B, `ldb` floats apart (kc > 0):
// acc[3r + v] holds row r, columns 8v..8v+7. Each element's sum is one FMA chain in k order, as on AVX-512.
// The loop is written in assembly because its 12 accumulators, 3 B vectors and the broadcast take all 16
// ymm registers, and the compiler, left to itself, spills an accumulator (a store and a reload in an FMA
// chain: half the speed).
AVX2 static inline void accumulate_4x24(long kc, const float *a, const float *b, long ldb, __m256 acc[12]) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00,
           c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
    long step = ldb * (long)sizeof(float);
    // An odd first row alone, then two rows per turn.
    __asm__ volatile(
        "testq $1, %[k]\n\t"
        "jz 2f\n\t"
        ROW_4X24(0, 4, 8, 12)
        "addq $32, %[a]\n\t"
        "decq %[k]\n\t"
        "2:\n\t"
        "testq %[k], %[k]\n\t"
        "jz 3f\n\t"
        "1:\n\t"
        ROW_4X24(0, 4, 8, 12)
        ROW_4X24(32, 36, 40, 44)
        "addq $64, %[a]\n\t"
        "subq $2, %[k]\n\t"
        "jnz 1b\n\t"
        "3:\n\t"
        : [a] "+r"(a), [b] "+r"(b), [k] "+r"(kc),
          [c00] "+x"(c00), [c01] "+x"(c01), [c02] "+x"(c02), [c10] "+x"(c10), [c11] "+x"(c11), [c12] "+x"(c12),
          [c20] "+x"(c20), [c21] "+x"(c21), [c22] "+x"(c22), [c30] "+x"(c30), [c31] "+x"(c31), [c32] "+x"(c32)
        : [step] "r"(step)
        : "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory");
    acc[0] = c00; acc[1] = c01; acc[2] = c02; acc[3] = c10; acc[4] = c11; acc[5] = c12;
    acc[6] = c20; acc[7] = c21; acc[8] = c22; acc[9] = c30; acc[10] = c31; acc[11] = c32;
}

// C[0:MR, 0:24] = alpha * (A panel x B) + beta * C (C not read when beta == 0), as two 4 x 24 passes; the
// store rounds as the AVX-512 kernel's does, so the two paths give the same bits for alpha = 1 and beta = 0
// or 1. `width` is always 24 (the tile's signature is shared with AVX-512's).
AVX2 static void kernel_avx2(long kc, const float *a, const float *b, long ldb, float *c, long ldc, float alpha, float beta,
                             long width) {
    (void)width;
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    for (int half = 0; half < 2; half++) {
        __m256 acc[12];
        accumulate_4x24(kc, a + 4 * half, b, ldb, acc);
        float *rows = c + 4 * half * ldc;
#pragma clang loop unroll(full)
        for (int r = 0; r < 4; r++)
#pragma clang loop unroll(full)
            for (int v = 0; v < 3; v++) {
                float *out = rows + r * ldc + 8 * v;
                __m256 value = beta == 0 ? _mm256_mul_ps(va, acc[3 * r + v])
                                         : _mm256_fmadd_ps(va, acc[3 * r + v], _mm256_mul_ps(vb, _mm256_loadu_ps(out)));
                _mm256_storeu_ps(out, value);
            }
    }
}

// An MR x width tile (width 16 or 32) on AVX-512.
AVX512 static void kernel_avx512(long kc, const float *a, const float *b, long ldb, float *c, long ldc, float alpha, float beta,
                                 long width) {
    if (width > 16) kernel(kc, a, b, ldb, c, ldc, alpha, beta);
    else kernel16(kc, a, b, ldb, c, ldc, alpha, beta);
}

// A path's MR x width register tile: C = alpha * (A panel x B panel) + beta * C.
typedef void (*TileKernel)(long kc, const float *a, const float *b, long ldb, float *c, long ldc, float alpha, float beta, long width);

// A path's tile and its column panels' width (AVX-512: 32, with a 16-wide tile for narrow edges; AVX2: 24).
typedef struct { TileKernel tile; long width; long narrow; } Path;

// The blocked product around a path's tile.
static void product(int ta, int tb, long m, long n, long k, float alpha, const float *a, long lda, const float *b, long ldb,
                    float beta, float *c, long ldc, PackBuffers *buffers, Path path) {
    float edge[MR * NR] __attribute__((aligned(64)));
    long width = path.width;
    // A few rows of A against a plain B whose rows fall in different L1 sets (a leading dimension of an odd
    // number of 64-byte lines): the kernel reads B in place; packing it would cost more than it saves.
    int direct_b = !tb && m <= 32 && ldb % 32 == 16;
    // Column blocks of whole panels (2048 on AVX-512, 2040 on AVX2).
    for (long jc = 0, block = NC / width * width; jc < n; jc += block) {
        long nc = min_long(block, n - jc);
        for (long pc = 0, kb = block_depth(k); pc < k; pc += kb) {
            long kc = min_long(kb, k - pc);
            float scale = pc == 0 ? beta : 1;
            if (!direct_b) pack_b(tb, b, ldb, pc, jc, kc, nc, buffers->b, width);
            for (long ic = 0; ic < m; ic += MC) {
                long mc = min_long(MC, m - ic);
                pack_a(ta, a, lda, ic, pc, mc, kc, buffers->a);
                for (long jr = 0; jr < nc; jr += width) {
                    long nr = min_long(width, nc - jr);
                    const float *panel_b = buffers->b + jr * kc;
                    long stride_b = width;
                    if (direct_b && nr == width) {
                        panel_b = b + pc * ldb + jc + jr;
                        stride_b = ldb;
                    } else if (direct_b && ic == 0) {
                        pack_b(tb, b, ldb, pc, jc + jr, kc, nr, buffers->b + jr * kc, width);
                    }
                    for (long ir = 0; ir < mc; ir += MR) {
                        long mr = min_long(MR, mc - ir);
                        const float *panel_a = buffers->a + ir * kc;
                        float *tile_c = c + (ic + ir) * ldc + jc + jr;
                        if (mr == MR && (nr == width || nr == path.narrow)) {
                            path.tile(kc, panel_a, panel_b, stride_b, tile_c, ldc, alpha, scale, nr);
                            continue;
                        }
                        // Edge tiles through a scratch tile.
                        path.tile(kc, panel_a, panel_b, stride_b, edge, width, 1, 0, nr <= path.narrow ? path.narrow : width);
                        for (long i = 0; i < mr; i++)
                            for (long j = 0; j < nr; j++) {
                                float value = alpha * edge[i * width + j];
                                tile_c[i * ldc + j] = scale == 0 ? value : value + scale * tile_c[i * ldc + j];
                            }
                    }
                }
            }
        }
    }
}

int cohort_sgemm(int transpose_a, int transpose_b, long m, long n, long k, float alpha,
                 const float *a, long lda, const float *b, long ldb, float beta, float *c, long ldc) {
    int path = cohort_sgemm_level();
    if (path == COHORT_GEMM_BLAS || k <= 0) return 0;
    if (m <= 0 || n <= 0) return 1;
    PackBuffers *buffers = thread_buffers();
    if (!buffers) return 0;
    Path tiles = path == COHORT_GEMM_AVX512 ? (Path){kernel_avx512, NR, 16} : (Path){kernel_avx2, NR_AVX2, NR_AVX2};
    product(transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, buffers, tiles);
    return 1;
}

#else

int cohort_sgemm_supported(void) { return 0; }
int cohort_sgemm_level(void) { return COHORT_GEMM_BLAS; }
int cohort_sgemm_capability(void) { return COHORT_GEMM_BLAS; }
int cohort_sgemm_force(int wanted) { (void)wanted; return COHORT_GEMM_BLAS; }
int cohort_sgemm_forced(void) { return -1; }

int cohort_sgemm(int transpose_a, int transpose_b, long m, long n, long k, float alpha,
                 const float *a, long lda, const float *b, long ldb, float beta, float *c, long ldc) {
    (void)transpose_a; (void)transpose_b; (void)m; (void)n; (void)k; (void)alpha;
    (void)a; (void)lda; (void)b; (void)ldb; (void)beta; (void)c; (void)ldc;
    return 0;
}

#endif

// ---- Convolution without lowering (stride 1, output as wide as the input) ----

#if defined(__x86_64__)

static long packed_rows(long m) { return (m + MR - 1) / MR * MR; }

long cohort_packed_weights_count(long m, long k) { return packed_rows(m) * k; }

// Block pc (KC deep) of the packed matrix starts at packed_rows(m) * pc; panel ip within it at ip * kc.
int cohort_pack_weights(long m, long k, const float *a, float *packed) {
    if (cohort_sgemm_level() == COHORT_GEMM_BLAS) return 0;
    for (long pc = 0, kb = block_depth(k); pc < k; pc += kb) {
        long kc = min_long(kb, k - pc);
        pack_a(0, a, k, 0, pc, m, kc, packed + packed_rows(m) * pc);
    }
    return 1;
}

// C[0:MR, 32 lanes] (+)= A panel x B. B row p holds 32 output pixels' values of the implicit lowered row p:
// lane q at first + offsets[p] + q, or, in a panel `crossing` from one image into the next, lane q >= w1
// (the bits clear in `own`) at second + offsets[p] + q; zero outside masks[p]. Masked-off lanes are never
// read. The results go to c_first + r ldc + q (the lanes of
// `own`) and c_second + r ldc + q (the others), only the lanes of store_mask, added to what is there when
// `accumulate` (acc + old: one rounding). With `prefetch`, the next panel's rows (32 pixels on) are
// prefetched into L1 as this one's are read: the first tile of a panel otherwise waits on memory for
// every row (a 64-channel 32 x 32 image is 256 KB, the batch far beyond the caches), a fifth of the
// kernel's time in such layers.
AVX512 __attribute__((always_inline)) static inline void shifted_tile(const int crossing, const int prefetch, long kc,
        const float *restrict a, const float *first, const float *second, const long *offsets, const uint32_t *masks,
        uint32_t own, float *c_first, float *c_second, long ldc, uint32_t store_mask, int accumulate) {
    __m512 c0[MR], c1[MR];
#pragma clang loop unroll(full)
    for (int r = 0; r < MR; r++) { c0[r] = _mm512_setzero_ps(); c1[r] = _mm512_setzero_ps(); }
    const __mmask16 own0 = (__mmask16)own, own1 = (__mmask16)(own >> 16);
#pragma clang loop unroll_count(2)
    for (long p = 0; p < kc; p++) {
        const long offset = offsets[p];
        const uint32_t mask = masks[p];
        if (prefetch) {
            _mm_prefetch((const char *)(first + offset + NR), _MM_HINT_T0);
            _mm_prefetch((const char *)(first + offset + NR + 16), _MM_HINT_T0);
        }
        __m512 b0, b1;
        if (crossing) {
            b0 = _mm512_mask_loadu_ps(_mm512_maskz_loadu_ps((__mmask16)mask & own0, first + offset),
                                      (__mmask16)mask & ~own0, second + offset);
            b1 = _mm512_mask_loadu_ps(_mm512_maskz_loadu_ps((__mmask16)(mask >> 16) & own1, first + offset + 16),
                                      (__mmask16)(mask >> 16) & ~own1, second + offset + 16);
        } else {
            b0 = _mm512_maskz_loadu_ps((__mmask16)mask, first + offset);
            b1 = _mm512_maskz_loadu_ps((__mmask16)(mask >> 16), first + offset + 16);
        }
#pragma clang loop unroll(full)
        for (int r = 0; r < MR; r++) {
            __m512 x = _mm512_set1_ps(a[r]);
            c0[r] = _mm512_fmadd_ps(x, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(x, b1, c1[r]);
        }
        a += MR;
    }
    const __mmask16 low = (__mmask16)store_mask, high = (__mmask16)(store_mask >> 16);
#pragma clang loop unroll(full)
    for (int r = 0; r < MR; r++) {
        float *out = c_first + r * ldc, *out_b = c_second + r * ldc;
        if (crossing) {
            if (accumulate) {
                c0[r] = _mm512_add_ps(c0[r], _mm512_mask_loadu_ps(_mm512_maskz_loadu_ps(low & own0, out), low & ~own0, out_b));
                c1[r] = _mm512_add_ps(c1[r], _mm512_mask_loadu_ps(_mm512_maskz_loadu_ps(high & own1, out + 16), high & ~own1, out_b + 16));
            }
            _mm512_mask_storeu_ps(out, low & own0, c0[r]);
            _mm512_mask_storeu_ps(out + 16, high & own1, c1[r]);
            _mm512_mask_storeu_ps(out_b, low & ~own0, c0[r]);
            _mm512_mask_storeu_ps(out_b + 16, high & ~own1, c1[r]);
        } else {
            if (accumulate) {
                c0[r] = _mm512_add_ps(c0[r], _mm512_maskz_loadu_ps(low, out));
                c1[r] = _mm512_add_ps(c1[r], _mm512_maskz_loadu_ps(high, out + 16));
            }
            _mm512_mask_storeu_ps(out, low, c0[r]);
            _mm512_mask_storeu_ps(out + 16, high, c1[r]);
        }
    }
}

AVX512 static void shifted_tile_within(long kc, const float *a, const float *first, const long *offsets,
                                       const uint32_t *masks, float *c, long ldc, uint32_t store_mask, int accumulate) {
    shifted_tile(0, 0, kc, a, first, first, offsets, masks, 0xFFFFFFFFu, c, c, ldc, store_mask, accumulate);
}

AVX512 static void shifted_tile_within_prefetching(long kc, const float *a, const float *first, const long *offsets,
                                                   const uint32_t *masks, float *c, long ldc, uint32_t store_mask,
                                                   int accumulate) {
    shifted_tile(0, 1, kc, a, first, first, offsets, masks, 0xFFFFFFFFu, c, c, ldc, store_mask, accumulate);
}

AVX512 static void shifted_tile_across(long kc, const float *a, const float *first, const float *second, const long *offsets,
                                       const uint32_t *masks, uint32_t own, float *c_first, float *c_second, long ldc,
                                       uint32_t store_mask, int accumulate) {
    shifted_tile(1, 0, kc, a, first, second, offsets, masks, own, c_first, c_second, ldc, store_mask, accumulate);
}


// A convolution as shifted planes: row p = c taps + t of the implicit lowered matrix is the plane at
// c channel_stride + plane[t] floats, read at (y + dy[t], x + dx[t]) for output pixel (y, x) of an oh x vw
// output, and zero where that falls outside the vh x vw grid.
typedef struct {
    long channels, channel_stride, vh, vw, oh, taps;
    const long *plane, *dy, *dx;
} TapTable;

// The tap table of a stride-1 convolution whose output rows are as wide as the input's (its arrays filled
// into `storage`, 3 taps longs).
static TapTable same_taps(long channels, long h, long w, long kh, long kw, long ph, long pw, long *storage) {
    long taps = kh * kw;
    for (long t = 0; t < taps; t++) {
        storage[t] = 0;
        storage[taps + t] = t / kw - ph;
        storage[2 * taps + t] = t % kw - pw;
    }
    TapTable table = {channels, h * w, h, w, h + 2 * ph - kh + 1, taps, storage, storage + taps, storage + 2 * taps};
    return table;
}

// Output pixel q's row (q / vw, q % vw) shifted by tap t: inside the grid?
static inline int tap_valid(const TapTable *table, long t, long q) {
    long iy = q / table->vw + table->dy[t], ix = q % table->vw + table->dx[t];
    return iy >= 0 && iy < table->vh && ix >= 0 && ix < table->vw;
}

static inline long tap_offset(const TapTable *table, long p) {
    long c = p / table->taps, t = p % table->taps;
    return c * table->channel_stride + table->plane[t] + table->dy[t] * table->vw + table->dx[t];
}

// The lanes of an 8-lane vector whose bit is set in `bits` (lane i: bit i), as all-ones lanes (the others
// zero): a mask for `_mm256_and_ps`.
AVX2 static inline __m256 lane_mask(uint32_t bits) {
    const __m256i shifts = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
    return _mm256_castsi256_ps(_mm256_srai_epi32(_mm256_sllv_epi32(_mm256_set1_epi32((int)bits), shifts), 31));
}

// The lanes of row[0, 8) whose bit is set in `bits` (lane i: bit i), the others zero, reading only the set
// lanes' memory: the gather at the ends of an input's memory, where a plain load could cross into an unmapped
// page. (Not a masked load: AMD leaves it to the implementation whether masked-off lanes may fault.)
AVX2 static inline __m256 gather8(const float *row, uint32_t bits) {
    float lanes[8] __attribute__((aligned(32)));
    for (int i = 0; i < 8; i++) lanes[i] = bits >> i & 1 ? row[i] : 0.0f;
    return _mm256_load_ps(lanes);
}

// Whether [row, row + n) lies inside [first, last) (compared as addresses: `row` may point outside any object).
static inline int readable(const float *row, long n, const float *first, const float *last) {
    uintptr_t start = (uintptr_t)row;
    return start >= (uintptr_t)first && start + sizeof(float) * (uintptr_t)n <= (uintptr_t)last;
}

// Bits [from, from + n) of a bitmap (n <= 32), as the low bits of the result.
static inline uint32_t bitmap_bits(const uint64_t *words, long from, long n) {
    long w = from >> 6, b = from & 63;
    uint64_t v = words[w] >> b;
    if (b) v |= words[w + 1] << (64 - b);
    return (uint32_t)(v & ((1ull << n) - 1));
}

// AVX2: 24-pixel column panels of the output, each gathered once as a kc x 24 block of the implicit lowered
// matrix from the shifted input planes (plain loads, the lanes outside the image zeroed) into an L1-resident
// panel, which every MR-row panel of the packed weights then multiplies. No lowered matrix ever reaches memory.
//
// The panels run over the images' output pixels end to end: when a plane's pixel count is not a multiple of
// 24 (7 x 7 = 49), the panel that crosses from one image into the next takes lanes from both (read lane by
// lane) and is stored through the edge tile, so only the share's last panel is partial, not every image's
// (a third of a 7 x 7 layer's tiles otherwise). Each output value is the same sum in the same order wherever
// its panel starts, so the results do not depend on where the panels fall.
AVX2 static int shifted_forward_avx2(long m, const TapTable *table, const float *packed, const float *images,
                                    long image_stride, long count, float *out, long out_stride) {
    PackBuffers *buffers = thread_buffers();
    if (!buffers) return 0;
    long taps = table->taps, k = table->channels * taps;
    long end = table->oh * table->vw;
    // Planes narrower than a panel keep one image per panel (a panel would span more than two images).
    int across = end >= NR_AVX2 && count > 1;
    long total = across ? count * end : end, words = (end + 63) / 64 + 1;
    long *offsets = malloc(sizeof(long) * (size_t)k);
    uint64_t *valid = calloc((size_t)(taps * words), sizeof(uint64_t));
    __m256 *lanes = aligned_alloc(32, sizeof(__m256) * (size_t)(3 * taps));
    uint32_t *bits = malloc(sizeof(uint32_t) * (size_t)taps);
    if (!offsets || !valid || !lanes || !bits) { free(offsets); free(valid); free(lanes); free(bits); return 0; }
    for (long p = 0; p < k; p++) offsets[p] = tap_offset(table, p);
    // Per tap, a bitmap of the output pixels whose tap falls inside the image.
    for (long t = 0; t < taps; t++)
        for (long q = 0; q < end; q++)
            if (tap_valid(table, t, q)) valid[t * words + (q >> 6)] |= 1ull << (q & 63);
    float *panel_b = buffers->b;
    float edge[MR * NR_AVX2] __attribute__((aligned(64)));
    // The memory known to be readable: from the first image's start to the last one's end.
    const float *first = images, *last = images + (count - 1) * image_stride + table->channels * table->channel_stride;
    for (long sweep = 0; sweep < (across ? 1 : count); sweep++) {
        for (long start = 0; start < total; start += NR_AVX2) {
            long width = min_long(NR_AVX2, total - start);
            long n0 = across ? start / end : sweep, j0 = across ? start % end : start;
            // Lanes [0, w1) are pixels j0... of image n0; lanes [w1, width) pixels 0... of image n0 + 1.
            long w1 = min_long(width, end - j0);
            const float *image = images + n0 * image_stride;
            const float *next = w1 < width ? image + image_stride : image;
            for (long t = 0; t < taps; t++) {
                bits[t] = bitmap_bits(valid + t * words, j0, w1);
                if (w1 < width) bits[t] |= bitmap_bits(valid + t * words, 0, width - w1) << w1;
                for (int v = 0; v < 3; v++)
                    lanes[3 * t + v] = lane_mask(bits[t] >> (8 * v) & 0xFF);
            }
            uint32_t own = w1 >= 32 ? 0xFFFFFFFFu : (1u << w1) - 1;
            // The lanes that belong to image n0 (the rest, when the panel crosses, to image n0 + 1).
            __m256 own_lanes[3];
            for (int v = 0; v < 3; v++) own_lanes[v] = lane_mask(own >> (8 * v) & 0xFF);
            for (long pc = 0, kb = block_depth(k); pc < k; pc += kb) {
                long kc = min_long(kb, k - pc);
                for (long p = 0, t = pc % taps; p < kc; p++, t = t + 1 == taps ? 0 : t + 1) {
                    const float *row = image + j0 + offsets[pc + p];
                    float *d = panel_b + p * NR_AVX2;
                    if (w1 < width) {
                        // Across two images: lane q < w1 reads row[q], lane q >= w1 reads next's pixel q - w1.
                        const float *row_b = next + offsets[pc + p] - w1;
                        if (readable(row, NR_AVX2, first, last) && readable(row_b, NR_AVX2, first, last)) {
                            for (int v = 0; v < 3; v++)
                                _mm256_store_ps(d + 8 * v, _mm256_or_ps(
                                    _mm256_and_ps(_mm256_loadu_ps(row + 8 * v), _mm256_and_ps(lanes[3 * t + v], own_lanes[v])),
                                    _mm256_andnot_ps(own_lanes[v], _mm256_and_ps(_mm256_loadu_ps(row_b + 8 * v), lanes[3 * t + v]))));
                        } else {
                            for (int v = 0; v < 3; v++)
                                _mm256_store_ps(d + 8 * v, _mm256_or_ps(gather8(row + 8 * v, (bits[t] & own) >> (8 * v) & 0xFF),
                                                                        gather8(row_b + 8 * v, (bits[t] & ~own) >> (8 * v) & 0xFF)));
                        }
                    } else if (readable(row, NR_AVX2, first, last)) {
                        // Inside the images' memory: a plain load, the lanes outside the image zeroed.
                        _mm256_store_ps(d, _mm256_and_ps(_mm256_loadu_ps(row), lanes[3 * t]));
                        _mm256_store_ps(d + 8, _mm256_and_ps(_mm256_loadu_ps(row + 8), lanes[3 * t + 1]));
                        _mm256_store_ps(d + 16, _mm256_and_ps(_mm256_loadu_ps(row + 16), lanes[3 * t + 2]));
                    } else {
                        // At the ends of the memory: only the lanes inside the image are read.
                        _mm256_store_ps(d, gather8(row, bits[t] & 0xFF));
                        _mm256_store_ps(d + 8, gather8(row + 8, bits[t] >> 8 & 0xFF));
                        _mm256_store_ps(d + 16, gather8(row + 16, bits[t] >> 16 & 0xFF));
                    }
                }
                const float *block = packed + packed_rows(m) * pc;
                float *output = out + n0 * out_stride, *output_b = w1 < width ? output + out_stride : output;
                for (long ir = 0; ir < m; ir += MR) {
                    float *tile = output + ir * end + j0;
                    const float *panel_a = block + ir * kc;
                    if (m - ir >= MR && width == NR_AVX2 && w1 == width) {
                        kernel_avx2(kc, panel_a, panel_b, NR_AVX2, tile, end, 1, pc > 0 ? 1 : 0, NR_AVX2);
                        continue;
                    }
                    kernel_avx2(kc, panel_a, panel_b, NR_AVX2, edge, NR_AVX2, 1, 0, NR_AVX2);
                    long mr = min_long(MR, m - ir);
                    for (long r = 0; r < mr; r++) {
                        for (long q = 0; q < width; q++) {
                            float *o = q < w1 ? tile + r * end + q : output_b + (ir + r) * end + (q - w1);
                            *o = pc == 0 ? edge[r * NR_AVX2 + q] : *o + edge[r * NR_AVX2 + q];
                        }
                    }
                }
            }
        }
    }
    free(offsets); free(valid); free(lanes); free(bits);
    return 1;
}

// The masks of a panel of `width` lanes starting at output pixel j0 of an image (the lanes past the image's
// end take the next image's first pixels), per implicit row c taps + t (row p's are its tap's), from each
// tap's bitmap of valid pixels (`words` 64-bit words per tap).
static void panel_masks(const uint64_t *valid, long words, long taps, long channels, long end, long j0, long width,
                        uint32_t *masks) {
    long w1 = min_long(width, end - j0);
    for (long t = 0; t < taps; t++) {
        uint32_t bits = bitmap_bits(valid + t * words, j0, w1);
        if (w1 < width) bits |= bitmap_bits(valid + t * words, 0, width - w1) << w1;
        for (long c = 0; c < channels; c++) masks[c * taps + t] = bits;
    }
}

// AVX-512: 32-pixel column panels of the output, the kernel reading the shifted planes' rows straight
// into its registers under per-tap lane masks (masked-off lanes are never read). As on AVX2, the panels run
// over the images' output pixels end to end: a panel crossing from one image into the next (a 7 x 7 plane
// is 49 pixels) takes its lanes from both, so only the share's last panel is partial. Each output value is
// the same sum in the same order as on the AVX2 path, wherever its panel starts, so the two paths give the
// same bits.
AVX512 static int shifted_forward_avx512(long m, const TapTable *table, const float *packed, const float *images,
                                         long image_stride, long count, float *out, long out_stride) {
    long taps = table->taps, k = table->channels * taps;
    long end = table->oh * table->vw, words = (end + 63) / 64 + 1;
    // Planes narrower than a panel keep one image per panel (a panel would span more than two images).
    int across = end >= NR && count > 1;
    long total = across ? count * end : end;
    // A whole panel starting at pixel j0 of an image has the same masks wherever it falls: j0 is a
    // multiple of g = gcd(end, NR) when panels run across images, so the masks of the end / g starts are
    // computed once, per implicit row (the share's last panel, partial, has its own).
    long g = NR;
    for (long r = end % g; r; ) { long next = g % r; g = r; r = next; }
    long starts = across ? end / g : (end + NR - 1) / NR, step = across ? g : NR;
    long *offsets = malloc(sizeof(long) * (size_t)k);
    uint64_t *valid = calloc((size_t)(taps * words), sizeof(uint64_t));
    uint32_t *start_masks = malloc(sizeof(uint32_t) * (size_t)((starts + 1) * k));
    if (!offsets || !valid || !start_masks) { free(offsets); free(valid); free(start_masks); return 0; }
    for (long p = 0; p < k; p++) offsets[p] = tap_offset(table, p);
    // Per tap, a bitmap of the output pixels whose tap falls inside the grid.
    for (long t = 0; t < taps; t++)
        for (long q = 0; q < end; q++)
            if (tap_valid(table, t, q)) valid[t * words + (q >> 6)] |= 1ull << (q & 63);
    for (long i = 0; i < starts; i++) {
        long j0 = i * step;
        panel_masks(valid, words, taps, table->channels, end, j0, across ? NR : min_long(NR, end - j0), start_masks + i * k);
    }
    float edge[MR * NR] __attribute__((aligned(64)));
    for (long sweep = 0; sweep < (across ? 1 : count); sweep++) {
        for (long start = 0; start < total; start += NR) {
            long width = min_long(NR, total - start);
            long n0 = across ? start / end : sweep, j0 = across ? start % end : start;
            // Lanes [0, w1) are pixels j0... of image n0; lanes [w1, width) pixels 0... of image n0 + 1.
            long w1 = min_long(width, end - j0);
            int crossing = w1 < width;
            uint32_t *masks = start_masks + (j0 / step) * k;
            if (width < NR) {
                masks = start_masks + starts * k;
                panel_masks(valid, words, taps, table->channels, end, j0, width, masks);
            }
            uint32_t own = w1 >= 32 ? 0xFFFFFFFFu : (1u << w1) - 1;
            uint32_t store_mask = width >= 32 ? 0xFFFFFFFFu : (1u << width) - 1;
            const float *first = images + n0 * image_stride + j0;
            const float *second = crossing ? images + (n0 + 1) * image_stride - w1 : first;
            float *output = out + n0 * out_stride + j0;
            float *output_b = crossing ? out + (n0 + 1) * out_stride - w1 : output;
            for (long pc = 0, kb = block_depth(k); pc < k; pc += kb) {
                long kc = min_long(kb, k - pc);
                const float *block = packed + packed_rows(m) * pc;
                for (long ir = 0; ir < m; ir += MR) {
                    const float *panel_a = block + ir * kc;
                    float *tile = output + ir * end, *tile_b = output_b + ir * end;
                    if (m - ir >= MR) {
                        if (crossing)
                            shifted_tile_across(kc, panel_a, first, second, offsets + pc, masks + pc, own, tile, tile_b, end,
                                                store_mask, pc > 0);
                        else if (ir == 0)
                            shifted_tile_within_prefetching(kc, panel_a, first, offsets + pc, masks + pc, tile, end,
                                                            store_mask, pc > 0);
                        else
                            shifted_tile_within(kc, panel_a, first, offsets + pc, masks + pc, tile, end, store_mask, pc > 0);
                        continue;
                    }
                    // The last rows (fewer than MR): through a scratch tile.
                    long mr = m - ir;
                    for (long r = 0; r < MR; r++)
                        for (long q = 0; q < NR; q++) {
                            float *o = q < w1 ? tile + r * end + q : tile_b + r * end + q;
                            edge[r * NR + q] = (r < mr && pc > 0 && (store_mask >> q & 1)) ? *o : 0;
                        }
                    if (crossing)
                        shifted_tile_across(kc, panel_a, first, second, offsets + pc, masks + pc, own, edge, edge, NR,
                                            store_mask, pc > 0);
                    else
                        shifted_tile_within(kc, panel_a, first, offsets + pc, masks + pc, edge, NR, store_mask, pc > 0);
                    for (long r = 0; r < mr; r++)
                        for (long q = 0; q < width; q++) {
                            float *o = q < w1 ? tile + r * end + q : tile_b + r * end + q;
                            *o = edge[r * NR + q];
                        }
                }
            }
        }
    }
    free(offsets); free(valid); free(start_masks);
    return 1;
}

// The forward product of a tap table on the path in force (0 on the BLAS path).
static int taps_forward(long m, const TapTable *table, const float *packed, const float *images, long image_stride,
                        long count, float *out, long out_stride) {
    switch (cohort_sgemm_level()) {
    case COHORT_GEMM_AVX512: return shifted_forward_avx512(m, table, packed, images, image_stride, count, out, out_stride);
    case COHORT_GEMM_AVX2: return shifted_forward_avx2(m, table, packed, images, image_stride, count, out, out_stride);
    default: return 0;
    }
}

int cohort_conv_shifted_forward(long m, long channels, long h, long w, long kh, long kw, long ph, long pw,
                                const float *packed, const float *images, long image_stride, long count,
                                float *out, long out_stride) {
    long *storage = malloc(sizeof(long) * (size_t)(3 * kh * kw));
    if (!storage) return 0;
    TapTable table = same_taps(channels, h, w, kh, kw, ph, pw, storage);
    int done = taps_forward(m, &table, packed, images, image_stride, count, out, out_stride);
    free(storage);
    return done;
}

#define AVX512VL __attribute__((target("avx512f,avx512vl")))

// A kc8 x NR panel of the weight gradient's B (the shifted output-gradient planes, transposed): row j of
// the panel holds, for each of the NR implicit rows p (`source + offsets[p]`, validity bits `bits[p]`),
// pixel pc + j, zero where the shift leaves the image. Built in 8 x 8 blocks (masked loads, transposes).
typedef void (*ShiftedPanelFill)(const float *source, const long *offsets, const uint32_t *const *bits, long pc, long kc8,
                                 long width, float *panel, const float *first, const float *last);

// C[0:MR, 0:width] (+)= A panel x a kc x width panel (width: the path's panel width; with `add`, C += the
// product, one rounding of each sum).
typedef void (*ShiftedTile)(long kc, const float *a, const float *panel, float *c, long ldc, int add);

AVX512VL static void fill_panel_avx512(const float *source, const long *offsets, const uint32_t *const *bits, long pc,
                                       long kc8, long width, float *panel, const float *first, const float *last) {
    (void)first; (void)last;   // masked loads throughout: AVX-512's are as fast as plain ones
    for (long g = 0; g < width; g += 8)
        for (long j = 0; j < kc8; j += 8) {
            __m256 r[8];
#pragma clang loop unroll(full)
            for (int q = 0; q < 8; q++) {
                const uint32_t *valid = bits[g + q];
                long pixel = pc + j;
                __mmask8 mask = (__mmask8)(valid[pixel >> 5] >> (pixel & 31));
                r[q] = _mm256_maskz_loadu_ps(mask, source + offsets[g + q] + pixel);
            }
            transpose_rows8(r, panel + j * width + g, width);
        }
}

AVX2 static void fill_panel_avx2(const float *source, const long *offsets, const uint32_t *const *bits, long pc,
                                 long kc8, long width, float *panel, const float *first, const float *last) {
    for (long g = 0; g < width; g += 8)
        for (long j = 0; j < kc8; j += 8) {
            __m256 r[8];
            long pixel = pc + j;
#pragma clang loop unroll(full)
            for (int q = 0; q < 8; q++) {
                const float *row = source + offsets[g + q] + pixel;
                uint32_t valid = bits[g + q][pixel >> 5] >> (pixel & 31) & 0xFF;
                // A plain load with the lanes outside the image zeroed where the memory is known to be
                // readable; at its ends, only the lanes inside the image are read.
                r[q] = readable(row, 8, first, last)
                     ? _mm256_and_ps(_mm256_loadu_ps(row), lane_mask(valid))
                     : gather8(row, valid);
            }
            transpose_rows8(r, panel + j * width + g, width);
        }
}

AVX512 static void shifted_tile_avx512(long kc, const float *a, const float *panel, float *c, long ldc, int add) {
    kernel(kc, a, panel, NR, c, ldc, 1, add ? 1 : 0);
}

AVX2 static void shifted_tile_avx2(long kc, const float *a, const float *panel, float *c, long ldc, int add) {
    kernel_avx2(kc, a, panel, NR_AVX2, c, ldc, 1, add ? 1 : 0, NR_AVX2);
}

static int shifted_weight_gradient(long m, const TapTable *table, const float *a, long a_stride, const float *b,
                                   long b_stride, long count, float *out, long ldo, long width, ShiftedPanelFill fill,
                                   ShiftedTile tile_kernel) {
    PackBuffers *buffers = thread_buffers();
    if (!buffers) return 0;
    long taps = table->taps, n = table->channels * taps;
    long pixels = table->oh * table->vw;
    // Padded so that every implicit row has whole 8-column blocks: columns past `pixels` are masked off.
    long padded = (pixels + 7) / 8 * 8, words = padded / 32 + 1;
    long *offsets = malloc(sizeof(long) * (size_t)(n + NR));
    // One row of validity bits per tap, and a last row of zeros for the padding rows of the last panel.
    uint32_t *bits = calloc((size_t)((taps + 1) * words), sizeof(uint32_t));
    const uint32_t **row_bits = malloc(sizeof(uint32_t *) * (size_t)(n + NR));
    if (!offsets || !bits || !row_bits) { free(offsets); free(bits); free(row_bits); return 0; }
    for (long t = 0; t < taps; t++)
        for (long q = 0; q < pixels; q++)
            if (tap_valid(table, t, q)) bits[t * words + (q >> 5)] |= 1u << (q & 31);
    for (long p = 0; p < n + NR; p++) {
        // Rows past n (the last panel's padding) read nothing: their bits are the zero row.
        offsets[p] = p < n ? tap_offset(table, p) : 0;
        row_bits[p] = bits + (p < n ? p % taps : taps) * words;
    }
    float edge[MR * NR] __attribute__((aligned(64)));
    // The memory known to be readable: from the first image's output gradient to the last one's end.
    const float *first = b, *last = b + (count - 1) * b_stride + table->channels * table->channel_stride;
    for (long image = 0; image < count; image++) {
        const float *x = a + image * a_stride, *dy = b + image * b_stride;
        for (long pc = 0, kb = block_depth(pixels); pc < pixels; pc += kb) {
            long kc = min_long(kb, pixels - pc), kc8 = (kc + 7) / 8 * 8;
            // The rows in blocks of at most MC (the packing buffer's height; the B panels are gathered
            // again for each block, which only layers wider than MC channels need).
            for (long ic = 0; ic < m; ic += MC) {
                long mc = min_long(MC, m - ic);
                pack_a(0, x, pixels, ic, pc, mc, kc, buffers->a);
                for (long jr = 0; jr < n; jr += width) {
                    long nr = min_long(width, n - jr);
                    float *panel = buffers->b;
                    fill(dy, offsets + jr, row_bits + jr, pc, kc8, width, panel, first, last);
                    for (long ir = 0; ir < mc; ir += MR) {
                        long mr = min_long(MR, mc - ir);
                        float *tile = out + (ic + ir) * ldo + jr;
                        if (mr == MR && nr == width) {
                            tile_kernel(kc, buffers->a + ir * kc, panel, tile, ldo, 1);
                            continue;
                        }
                        tile_kernel(kc, buffers->a + ir * kc, panel, edge, width, 0);
                        for (long i = 0; i < mr; i++)
                            for (long j = 0; j < nr; j++) tile[i * ldo + j] += edge[i * width + j];
                    }
                }
            }
        }
    }
    free(offsets); free(bits); free(row_bits);
    return 1;
}

// The weight gradient with a's rows as the vector, for AVX-512 and m = 16 or 32 (a's rows: the layer's
// channels, few; from 64 on the panels' transposes are shared by enough rows, and this form measured no
// faster): out[r * ldo + q] += sum_j a[r][j] row_q[j], computed as its transpose. Each image's planes
// of b are copied once with a zero border, so that implicit row q at output pixel j is a plain float, read
// straight into the FMA as a broadcast, and a's columns (transposed once per image, pixel-major) are the
// vectors: no panel of b is transposed, which for these few rows cost as much as the product. Every
// output's sum runs over the same pixel blocks, in the same order, from zero, and is added to `out` as
// shifted_weight_gradient adds it, so both give the same bits (and so does the AVX2 path).

// A run of output pixels along one row inside one pixel block: row y, columns [x0, x1), the first being
// output pixel j.
typedef struct { long y, x0, x1, j; } PixelRun;

// t[r][0 : 16 V] += the sum over the runs' pixels of rows[r][y pw + x] * at[j] (at: the transposed a,
// m floats per pixel), for R rows (a multiple of 4); U pixels per step. Inlined with constant V, R and U:
// the R x V accumulators and U x V vectors of `at` stay in registers (at most 28 of the 32), the row
// values are broadcast from memory inside the FMA.
AVX512 __attribute__((always_inline)) static inline void vector_rows_tile(const int V, const int R, const int U,
        const float *const *rows, long pw, const PixelRun *runs, long run_count, const float *at, long m, float *t) {
    __m512 acc[24][4];
#pragma clang loop unroll(full)
    for (int r = 0; r < R; r++)
#pragma clang loop unroll(full)
        for (int v = 0; v < V; v++) acc[r][v] = _mm512_setzero_ps();
    for (long s = 0; s < run_count; s++) {
        const PixelRun run = runs[s];
        const float *vectors = at + (run.j - run.x0) * m, *row_of[24];
        long offset = run.y * pw;
#pragma clang loop unroll(full)
        for (int r = 0; r < R; r++) row_of[r] = rows[r] + offset;
        long x = run.x0;
        for (; x + U <= run.x1; x += U) {
            __m512 b[8][4];
#pragma clang loop unroll(full)
            for (int u = 0; u < U; u++)
#pragma clang loop unroll(full)
                for (int v = 0; v < V; v++) b[u][v] = _mm512_load_ps(vectors + (x + u) * m + 16 * v);
            // Four rows at a time, their FMAs interleaved (four independent chains back to back).
#pragma clang loop unroll(full)
            for (int r0 = 0; r0 < R; r0 += 4) {
                const float *value[4];
#pragma clang loop unroll(full)
                for (int r = 0; r < 4; r++) value[r] = row_of[r0 + r] + x;
#pragma clang loop unroll(full)
                for (int u = 0; u < U; u++)
#pragma clang loop unroll(full)
                    for (int r = 0; r < 4; r++) {
                        __m512 broadcast = _mm512_set1_ps(value[r][u]);
#pragma clang loop unroll(full)
                        for (int v = 0; v < V; v++) acc[r0 + r][v] = _mm512_fmadd_ps(broadcast, b[u][v], acc[r0 + r][v]);
                    }
            }
        }
        for (; x < run.x1; x++) {
            __m512 b[4];
#pragma clang loop unroll(full)
            for (int v = 0; v < V; v++) b[v] = _mm512_load_ps(vectors + x * m + 16 * v);
#pragma clang loop unroll(full)
            for (int r = 0; r < R; r++) {
                __m512 broadcast = _mm512_set1_ps(row_of[r][x]);
#pragma clang loop unroll(full)
                for (int v = 0; v < V; v++) acc[r][v] = _mm512_fmadd_ps(broadcast, b[v], acc[r][v]);
            }
        }
    }
#pragma clang loop unroll(full)
    for (int r = 0; r < R; r++)
#pragma clang loop unroll(full)
        for (int v = 0; v < V; v++) {
            float *o = t + r * m + 16 * v;
            _mm512_store_ps(o, _mm512_add_ps(acc[r][v], _mm512_load_ps(o)));
        }
}

AVX512 static void vector_rows_16(const float *const *rows, long pw, const PixelRun *runs, long n, const float *at, float *t) {
    vector_rows_tile(1, 16, 8, rows, pw, runs, n, at, 16, t);
}
AVX512 static void vector_rows_32(const float *const *rows, long pw, const PixelRun *runs, long n, const float *at, float *t) {
    vector_rows_tile(2, 12, 2, rows, pw, runs, n, at, 32, t);
}

// dst[j * ldd + i] = src[i * lds + j] for an rows x columns block of src (8 x 8 blocks, then the edges).
AVX2 static void transpose_block(const float *src, long lds, long rows, long columns, float *dst, long ldd) {
    long i8 = rows / 8 * 8, j8 = columns / 8 * 8;
    for (long i = 0; i < i8; i += 8)
        for (long j = 0; j < j8; j += 8) transpose8(src + i * lds + j, lds, dst + j * ldd + i, ldd);
    for (long i = 0; i < rows; i++)
        for (long j = i < i8 ? j8 : 0; j < columns; j++) dst[j * ldd + i] = src[i * lds + j];
}

// Rows per tile of vector_rows_weight_gradient for m rows of a (0: m not handled).
static long vector_rows_tile_height(long m) { return m == 16 ? 16 : m == 32 ? 12 : 0; }

// Whether vector_rows_weight_gradient handles this product: m of 16 or 32, the implicit rows a whole
// number of tiles, and b's planes whole grids (every tap's plane a whole grid inside its channel).
static int vector_rows_applies(long m, const TapTable *table) {
    long height = vector_rows_tile_height(m), grid = table->vh * table->vw;
    if (!height || (table->channels * table->taps) % height || table->channel_stride % grid) return 0;
    for (long t = 0; t < table->taps; t++)
        if (table->plane[t] % grid || table->plane[t] < 0 || table->plane[t] >= table->channel_stride) return 0;
    return 1;
}

AVX512 static int vector_rows_weight_gradient(long m, const TapTable *table, const float *a, long a_stride,
                                              const float *b, long b_stride, long count, float *out, long ldo) {
    long taps = table->taps, n = table->channels * taps, height = vector_rows_tile_height(m);
    long vh = table->vh, vw = table->vw, oh = table->oh, pixels = oh * vw, grid = vh * vw;
    long planes = table->channel_stride / grid;
    // The zero border: wide enough for every tap's shift from every output pixel.
    long top = 0, bottom = 0, left = 0, right = 0;
    for (long t = 0; t < taps; t++) {
        top = table->dy[t] < -top ? -table->dy[t] : top;
        bottom = oh - 1 + table->dy[t] - (vh - 1) > bottom ? oh - 1 + table->dy[t] - (vh - 1) : bottom;
        left = table->dx[t] < -left ? -table->dx[t] : left;
        right = table->dx[t] > right ? table->dx[t] : right;
    }
    long pw = vw + left + right, ph = vh + top + bottom, padded_grid = ph * pw;
    long blocks = (pixels + block_depth(pixels) - 1) / block_depth(pixels);
    float *padded = aligned_alloc(64, sizeof(float) * (size_t)(table->channels * planes * padded_grid + 16));
    float *at = aligned_alloc(64, sizeof(float) * (size_t)(pixels * m));
    float *t = aligned_alloc(64, sizeof(float) * (size_t)(n * m));
    const float **rows = malloc(sizeof(float *) * (size_t)n);
    PixelRun *runs = malloc(sizeof(PixelRun) * (size_t)(pixels + blocks));
    long *block_runs = malloc(sizeof(long) * (size_t)(blocks + 1));
    if (!padded || !at || !t || !rows || !runs || !block_runs) {
        free(padded); free(at); free(t); free(rows); free(runs); free(block_runs);
        return 0;
    }
    void (*tile)(const float *const *, long, const PixelRun *, long, const float *, float *) =
        m == 16 ? vector_rows_16 : vector_rows_32;
    // Row q = (c, t) at output pixel (y, x): padded[(c planes + plane) ph pw + (y + top + dy) pw + x + left + dx].
    for (long q = 0; q < n; q++) {
        long c = q / taps, k = q % taps;
        rows[q] = padded + (c * planes + table->plane[k] / grid) * padded_grid + (top + table->dy[k]) * pw + left + table->dx[k];
    }
    // The pixel blocks (those of shifted_weight_gradient), each as runs along output rows.
    long run_count = 0, block = 0;
    for (long pc = 0, kb = block_depth(pixels); pc < pixels; pc += kb, block++) {
        block_runs[block] = run_count;
        for (long j = pc, end = min_long(pc + kb, pixels); j < end;) {
            long y = j / vw, x0 = j % vw, x1 = min_long(vw, x0 + end - j);
            runs[run_count++] = (PixelRun){y, x0, x1, j};
            j += x1 - x0;
        }
    }
    block_runs[blocks] = run_count;
    transpose_block(out, ldo, m, n, t, m);
    for (long image = 0; image < count; image++) {
        const float *x = a + image * a_stride, *dy = b + image * b_stride;
        for (long p = 0; p < table->channels * planes; p++) {
            const float *source = dy + (p / planes) * table->channel_stride + (p % planes) * grid;
            float *plane = padded + p * padded_grid;
            memset(plane, 0, sizeof(float) * (size_t)(top * pw));
            for (long y = 0; y < vh; y++) {
                float *row = plane + (top + y) * pw;
                for (long i = 0; i < left; i++) row[i] = 0;
                memcpy(row + left, source + y * vw, sizeof(float) * (size_t)vw);
                for (long i = 0; i < right; i++) row[left + vw + i] = 0;
            }
            memset(plane + (top + vh) * pw, 0, sizeof(float) * (size_t)(bottom * pw));
        }
        long j = 0;
        for (; j + 8 <= pixels; j += 8)
            for (long r = 0; r < m; r += 8) transpose8(x + r * pixels + j, pixels, at + j * m + r, m);
        for (; j < pixels; j++)
            for (long r = 0; r < m; r++) at[j * m + r] = x[r * pixels + j];
        for (long k = 0; k < blocks; k++)
            for (long q0 = 0; q0 < n; q0 += height)
                tile(rows + q0, pw, runs + block_runs[k], block_runs[k + 1] - block_runs[k], at, t + q0 * m);
    }
    transpose_block(t, m, n, m, out, ldo);
    free(padded); free(at); free(t); free(rows); free(runs); free(block_runs);
    return 1;
}

// The weight-gradient product of a tap table on the path in force (0 on the BLAS path). An AVX-512 CPU
// without AVX-512VL (none that Cohort has met) takes the AVX2 panels, which give the same bits.
static int taps_weight_gradient(long m, const TapTable *table, const float *a, long a_stride, const float *b,
                                long b_stride, long count, float *out, long ldo) {
    int path = cohort_sgemm_level();
    if (path == COHORT_GEMM_AVX512 && vector_rows_applies(m, table))
        return vector_rows_weight_gradient(m, table, a, a_stride, b, b_stride, count, out, ldo);
    if (path == COHORT_GEMM_AVX512 && __builtin_cpu_supports("avx512vl"))
        return shifted_weight_gradient(m, table, a, a_stride, b, b_stride, count, out, ldo, NR, fill_panel_avx512,
                                       shifted_tile_avx512);
    if (path == COHORT_GEMM_BLAS) return 0;
    return shifted_weight_gradient(m, table, a, a_stride, b, b_stride, count, out, ldo, NR_AVX2, fill_panel_avx2,
                                   shifted_tile_avx2);
}

int cohort_conv_shifted_weight_gradient(long m, long channels, long h, long w, long kh, long kw, long ph, long pw,
                                        const float *a, long a_stride, const float *b, long b_stride, long count,
                                        float *out, long ldo) {
    long *storage = malloc(sizeof(long) * (size_t)(3 * kh * kw));
    if (!storage) return 0;
    TapTable table = same_taps(channels, h, w, kh, kw, ph, pw, storage);
    int done = taps_weight_gradient(m, &table, a, a_stride, b, b_stride, count, out, ldo);
    free(storage);
    return done;
}

int cohort_conv_taps_forward(long m, long channels, long channel_stride, long vh, long vw, long oh, long taps,
                             const long *tap_plane, const long *tap_dy, const long *tap_dx, const float *packed,
                             const float *images, long image_stride, long count, float *out, long out_stride) {
    TapTable table = {channels, channel_stride, vh, vw, oh, taps, tap_plane, tap_dy, tap_dx};
    return taps_forward(m, &table, packed, images, image_stride, count, out, out_stride);
}

int cohort_conv_taps_weight_gradient(long m, long channels, long channel_stride, long vh, long vw, long oh, long taps,
                                     const long *tap_plane, const long *tap_dy, const long *tap_dx, const float *a,
                                     long a_stride, const float *b, long b_stride, long count, float *out, long ldo) {
    TapTable table = {channels, channel_stride, vh, vw, oh, taps, tap_plane, tap_dy, tap_dx};
    return taps_weight_gradient(m, &table, a, a_stride, b, b_stride, count, out, ldo);
}

#else

long cohort_packed_weights_count(long m, long k) { return m * k; }
int cohort_pack_weights(long m, long k, const float *a, float *packed) { (void)m; (void)k; (void)a; (void)packed; return 0; }
int cohort_conv_shifted_weight_gradient(long m, long channels, long h, long w, long kh, long kw, long ph, long pw,
                                        const float *a, long a_stride, const float *b, long b_stride, long count,
                                        float *out, long ldo) {
    (void)m; (void)channels; (void)h; (void)w; (void)kh; (void)kw; (void)ph; (void)pw; (void)a; (void)a_stride;
    (void)b; (void)b_stride; (void)count; (void)out; (void)ldo;
    return 0;
}

int cohort_conv_taps_forward(long m, long channels, long channel_stride, long vh, long vw, long oh, long taps,
                             const long *tap_plane, const long *tap_dy, const long *tap_dx, const float *packed,
                             const float *images, long image_stride, long count, float *out, long out_stride) {
    (void)m; (void)channels; (void)channel_stride; (void)vh; (void)vw; (void)oh; (void)taps; (void)tap_plane;
    (void)tap_dy; (void)tap_dx; (void)packed; (void)images; (void)image_stride; (void)count; (void)out; (void)out_stride;
    return 0;
}

int cohort_conv_taps_weight_gradient(long m, long channels, long channel_stride, long vh, long vw, long oh, long taps,
                                     const long *tap_plane, const long *tap_dy, const long *tap_dx, const float *a,
                                     long a_stride, const float *b, long b_stride, long count, float *out, long ldo) {
    (void)m; (void)channels; (void)channel_stride; (void)vh; (void)vw; (void)oh; (void)taps; (void)tap_plane;
    (void)tap_dy; (void)tap_dx; (void)a; (void)a_stride; (void)b; (void)b_stride; (void)count; (void)out; (void)ldo;
    return 0;
}

int cohort_conv_shifted_forward(long m, long channels, long h, long w, long kh, long kw, long ph, long pw,
                                const float *packed, const float *images, long image_stride, long count,
                                float *out, long out_stride) {
    (void)m; (void)channels; (void)h; (void)w; (void)kh; (void)kw; (void)ph; (void)pw; (void)packed; (void)images;
    (void)image_stride; (void)count; (void)out; (void)out_stride;
    return 0;
}

#endif
