/* darkcfg's native CPU kernels (optional; compiled on first use by darkcfg/native.py, which says why).
 *
 * 1. the thread launcher the kernels share (torch's own OpenMP team where torch runs on GNU OpenMP, else pthreads);
 * 2. one-pass mish, fp32 and bf16;
 * 3. Darknet's float64 BN fold;
 * 4. direct NHWC convolutions for the small layers of Yolo-Fastest / MobileNet-style nets
 *    (darkcfg/layers/direct_conv.py says when they run), and Darknet's NHWC max pool;
 * 5. the input and output transforms of Winograd F(4x4, 3x3) / F(2x2, 3x3) for dense 3x3
 *    stride-1 convolutions (darkcfg/layers/winograd.py).
 *
 * Plain C99 plus GCC/Clang vector extensions (8 floats = one AVX register; -march=native picks
 * the instructions), no intrinsics, so it builds on any CPU these compilers target.
 */

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float dk_exp(float x) {
    /* x <= 20 here; below -87.3 the result underflows to 0 (as expf does, to within a denormal) */
    x = x < -87.3f ? -87.3f : x;
    float t = x * 1.44269504088896341f;
    float k = (t + 12582912.0f) - 12582912.0f;          /* round to nearest, |t| < 2^22 */
    float r = x - k * 0.693145751953125f;               /* ln2 split in two (Cody-Waite) */
    r = r - k * 1.428606765330187045e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float mish1(float v) {
    float e = dk_exp(v < 20.0f ? v : 20.0f);
    e = v > -88.0f ? e : 0.0f;                         /* expf underflows to 0 there too */
    float m = e * (e + 2.0f);
    return v * (m / (m + 2.0f));                       /* ratio first: no overflow for huge x */
}

static void mish_f32(const void *src, void *dst, int64_t n) {
    const float *x = (const float *)src;
    float *y = (float *)dst;
    for (int64_t i = 0; i < n; i++) y[i] = mish1(x[i]);
}

/* bf16 in and out, float inside; rounding to nearest even and NaN as torch converts them */
static void mish_bf16(const void *src, void *dst, int64_t n) {
    const uint16_t *x = (const uint16_t *)src;
    uint16_t *y = (uint16_t *)dst;
    for (int64_t i = 0; i < n; i++) {
        uint32_t in = (uint32_t)x[i] << 16;
        float v, r;
        memcpy(&v, &in, sizeof v);
        r = mish1(v);
        uint32_t u;
        memcpy(&u, &r, sizeof u);
        uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        y[i] = (uint16_t)(r != r ? 0x7FC0u : rounded);
    }
}

/* One launcher for every kernel: [0, n) split into `threads` ranges (multiples of `align`).
   threads <= 0: as many as torch uses.  Built with -fopenmp (darkcfg/native.py does so where
   torch's own parallel backend is OpenMP), the ranges run on torch's OpenMP team: the library
   then needs libgomp.so.1, which the loader resolves to the copy torch already loaded -- one
   thread pool, no oversubscription, a fork/join of a few microseconds.  Otherwise pthreads
   started per call (tens of microseconds: only worth it for large tensors). */
typedef void (*dk_part)(void *ctx, int64_t lo, int64_t hi);

#ifdef _OPENMP
#include <omp.h>

static void dk_split(dk_part fn, void *ctx, int64_t n, int64_t align, int threads, int64_t work) {
    if (threads <= 0) threads = omp_get_max_threads();
    if (threads > 64) threads = 64;
    if (threads < 2 || n < 2 || work < 65536 || omp_in_parallel()) { fn(ctx, 0, n); return; }
    int64_t chunk = ((n + threads - 1) / threads + align - 1) / align * align;
    #pragma omp parallel num_threads(threads)
    {
        int64_t lo = chunk * omp_get_thread_num(), hi = lo + chunk < n ? lo + chunk : n;
        if (lo < hi) fn(ctx, lo, hi);
    }
}
#else
typedef struct { dk_part fn; void *ctx; int64_t lo, hi; } dk_job;

static void *dk_run(void *arg) {
    dk_job *j = (dk_job *)arg;
    j->fn(j->ctx, j->lo, j->hi);
    return 0;
}

static void dk_split(dk_part fn, void *ctx, int64_t n, int64_t align, int threads, int64_t work) {
    if (threads > 64) threads = 64;
    if (threads < 2 || n < 2 || work < 65536) { fn(ctx, 0, n); return; }  /* also threads <= 0: one */
    pthread_t tid[64];
    dk_job jobs[64];
    int started[64] = {0};
    int64_t chunk = ((n + threads - 1) / threads + align - 1) / align * align;
    for (int t = 1; t < threads && chunk * t < n; t++) {
        int64_t lo = chunk * t, hi = lo + chunk < n ? lo + chunk : n;
        jobs[t].fn = fn; jobs[t].ctx = ctx; jobs[t].lo = lo; jobs[t].hi = hi;
        started[t] = pthread_create(&tid[t], 0, dk_run, &jobs[t]) == 0;
        if (!started[t]) fn(ctx, lo, hi);
    }
    fn(ctx, 0, chunk < n ? chunk : n);
    for (int t = 1; t < threads; t++)
        if (started[t]) pthread_join(tid[t], 0);
}
#endif

/* 1 when built with OpenMP (the kernels share torch's thread team), else 0. */
int darkcfg_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

typedef struct { const void *x; void *y; } dk_pair;

static void mish_f32_part(void *ctx, int64_t lo, int64_t hi) {
    dk_pair *p = (dk_pair *)ctx;
    mish_f32((const float *)p->x + lo, (float *)p->y + lo, hi - lo);
}

static void mish_bf16_part(void *ctx, int64_t lo, int64_t hi) {
    dk_pair *p = (dk_pair *)ctx;
    mish_bf16((const uint16_t *)p->x + lo, (uint16_t *)p->y + lo, hi - lo);
}

void darkcfg_mish(const float *x, float *y, int64_t n, int threads) {
    dk_pair p = {x, y};
    dk_split(mish_f32_part, &p, n, 32, threads, n);
}

void darkcfg_mish_bf16(const uint16_t *x, uint16_t *y, int64_t n, int threads) {
    dk_pair p = {x, y};
    dk_split(mish_bf16_part, &p, n, 32, threads, n);
}

/* Darknet's BN fold, w[r][i] = (float)((double)w[r][i] * k[r]), for many convs in one call:
   conv j's weights w[j] are rows x len[j] floats, its first element at offset start[j] of the
   whole (start[n] = total), its row r scaled by gain[goff[j] + r].  The total is split over the
   threads by elements, not by convs or rows (their sizes differ by 1000x), so the parts are
   even and there is one fork/join for the whole model instead of one per conv. */
typedef struct { float *const *w; const double *gain; const int64_t *goff, *len, *start; int64_t n; } dk_fold;

static void fold_part(void *ctx, int64_t lo, int64_t hi) {
    const dk_fold *f = (const dk_fold *)ctx;
    int64_t a = 0, b = f->n;   /* the conv holding lo: start[a] <= lo < start[a + 1] */
    while (b - a > 1) {
        int64_t m = (a + b) / 2;
        if (f->start[m] <= lo) a = m; else b = m;
    }
    for (int64_t j = a, pos = lo; j < f->n && pos < hi; j++) {
        int64_t end = (f->start[j + 1] < hi ? f->start[j + 1] : hi) - f->start[j], len = f->len[j];
        float *w = f->w[j];
        const double *g = f->gain + f->goff[j];
        for (int64_t off = pos - f->start[j]; off < end;) {
            int64_t r = off / len, stop = (r + 1) * len < end ? (r + 1) * len : end;
            double k = g[r];
            for (int64_t i = off; i < stop; i++) w[i] = (float)((double)w[i] * k);
            off = stop;
        }
        pos = f->start[j + 1];
    }
}

void darkcfg_scale_rows(float *const *w, const double *gain, const int64_t *goff, const int64_t *len,
                        const int64_t *start, int64_t n, int threads) {
    dk_fold f = {w, gain, goff, len, start, n};
    if (n > 0) dk_split(fold_part, &f, start[n], 64, threads, start[n] / 4);
}

/* The BN gains and shifts of many convs, in float64 as DarknetBatchNorm.gain_shift_of computes
   them (the same IEEE operations in the same order, so the same bits):
       k = scale / sqrt(var + 1e-5)            (AlexeyAB; pjreddie: scale / (sqrt(var) + 1e-6))
       shift = float32(bias - mean * k)
   bn[4 j .. 4 j + 3] are conv j's scale, bias, mean and var (rows[j] floats each); k goes to
   gain (rows one conv after the other), the shift to out[j].  Why here: in torch this was four
   concatenations and eight ops (~2 ms of yolov4's optimize()); it reads ~30k rows.
   The product is stored through a volatile so it is rounded to double before the subtraction:
   -O3 -march=native would otherwise contract bias - mean * k into one FMA (other bits). */
void darkcfg_bn_gains(const float *const *bn, float *const *out, const int64_t *rows, int64_t n,
                      int pjreddie, double *gain) {
    for (int64_t j = 0; j < n; j++) {
        const float *scale = bn[4 * j], *bias = bn[4 * j + 1], *mean = bn[4 * j + 2], *var = bn[4 * j + 3];
        for (int64_t r = 0; r < rows[j]; r++) {
            double v = (double)var[r];
            double den = pjreddie ? __builtin_sqrt(v) + 0.000001 : __builtin_sqrt(v + 0.00001);  /* sqrtsd: no libm */
            double k = (double)scale[r] / den;
            volatile double mk = (double)mean[r] * k;
            out[j][r] = (float)((double)bias[r] - mk);
            *gain++ = k;
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Direct NHWC convolutions, fused with bias and activation (act 0 linear, 1 leaky 0.1, 2 relu).
 * Why: oneDNN (and torch's conv) cost ~40-100 us a call for these layers whatever their size --
 * Yolo-Fastest's depthwise 3x3 on 224x10x10 took 82 us, this kernel 23 us -- and the
 * layers of such nets are mostly that small.  Channels are the vector lanes (NHWC), so every
 * load is contiguous; sums are split over 4 pixels (depthwise) or 6 pixels x 16 channels
 * (1x1) so the FMA latency is hidden.  Summation order differs from oneDNN's: float rounding
 * only (the conformance tests bound it).
 * ------------------------------------------------------------------------------------------- */
static inline float dk_act(float v, int act) {   /* Darknet's activate(): x > 0 ? x : 0.1 x (leaky) / 0 (relu) */
    if (act == 1) return v > 0.0f ? v : 0.1f * v;
    if (act == 2) return v > 0.0f ? v : 0.0f;
    return v;
}

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));
static inline v8 ld(const float *p) { return *(const v8u *)p; }
static inline void st(float *p, v8 v) { *(v8u *)p = v; }
static inline v8 splat(float f) { return (v8){f, f, f, f, f, f, f, f}; }
typedef int32_t v8i __attribute__((vector_size(32)));
static inline v8 vact(v8 v, int act) {   /* Darknet's x > 0 ? x : a*x, a = 0.1 (leaky) or 0 (relu) */
    if (act == 0) return v;
    v8i pos = v > splat(0.0f);
    v8 neg = act == 1 ? v * splat(0.1f) : splat(0.0f);
    return (v8)(((v8i)v & pos) | ((v8i)neg & ~pos));
}

/* The taps [t0, t1) of a k-wide window starting at i0 that fall inside [0, n). */
static inline void dk_taps(int64_t i0, int k, int64_t n, int *t0, int *t1) {
    *t0 = i0 < 0 ? (int)-i0 : 0;
    *t1 = i0 + k > n ? (int)(n - i0) : k;
}

/* ---- depthwise k x k, NHWC, weights [kh][kw][C], bias [C] ---- */
typedef struct {
    const float *x, *w, *b; float *y;
    int64_t H, W, C, OH, OW; int kh, kw, sy, sx, py, px, act;
} dk_dw;

/* Depthwise windows are at most this tall (the kernel's row pointers; DirectConv refuses taller). */
#define DW_MAX_K 32

/* One output row, channels [c0, c0 + 8): the kernel's weights stay in registers along the row.
   rows[ky] is input row iy0 + ky (ky in [ky0, ky1): the rows inside the image), from its pixel 0:
   rows of the input tensor, or of a fused caller's buffer.  K > 0: a K x K kernel known at
   compile time (the interior skips the border tests). */
static inline __attribute__((always_inline)) void dw_row8(const dk_dw *d, const float *const *rows, float *orow,
                                                          int ky0, int ky1, int64_t c0, const int K, int64_t ox_lo,
                                                          int64_t ox_hi) {
    const int64_t C = d->C, W = d->W;
    const int kw = K ? K : d->kw;
    v8 wv[25];
    if (K)
        for (int i = 0; i < K * K; i++) wv[i] = ld(d->w + i * C + c0);
    const v8 bias = ld(d->b + c0);
    const int64_t step = d->sx * C;
    for (int64_t ox = ox_lo; ox < ox_hi; ox++) {
        int64_t ix0 = ox * d->sx - d->px;
        const int64_t at = ix0 * C + c0;
        v8 a = bias;
        if (K && ix0 >= 0 && ox + 3 < ox_hi && ix0 + 3 * d->sx + K <= W) {
            /* four pixels at once: four independent sums hide the FMA latency */
            v8 a1 = bias, a2 = bias, a3 = bias;
            for (int ky = ky0; ky < ky1; ky++)
                for (int kx = 0; kx < K; kx++) {
                    const float *p = rows[ky] + at + kx * C;
                    v8 w = wv[ky * K + kx];
                    a += ld(p) * w; a1 += ld(p + step) * w; a2 += ld(p + 2 * step) * w; a3 += ld(p + 3 * step) * w;
                }
            float *o = orow + ox * C + c0;
            st(o, vact(a, d->act)); st(o + C, vact(a1, d->act)); st(o + 2 * C, vact(a2, d->act)); st(o + 3 * C, vact(a3, d->act));
            ox += 3;
            continue;
        }
        if (K && ix0 >= 0 && ix0 + K <= W) {
            for (int ky = ky0; ky < ky1; ky++)
                for (int kx = 0; kx < K; kx++) a += ld(rows[ky] + at + kx * C) * wv[ky * K + kx];
        } else {
            int kx0, kx1;
            dk_taps(ix0, kw, W, &kx0, &kx1);
            for (int ky = ky0; ky < ky1; ky++)
                for (int kx = kx0; kx < kx1; kx++) a += ld(rows[ky] + at + kx * C) * ld(d->w + (ky * kw + kx) * C + c0);
        }
        st(orow + ox * C + c0, vact(a, d->act));
    }
}

/* Channels [c0, c0 + 16) of output pixels [ox_lo, ox_lo + 4 n) of one row, whose windows lie
   inside the input: 4 pixels x 2 vectors at a time, eight independent sums that keep both FMA
   units busy (dw_row8's four wait on the FMA latency half the time); the second vector is a fixed
   32 bytes from the first (no more address registers than dw_row8's).  Each pixel's sum runs
   over the taps in dw_row8's order: the same bits. */
static inline __attribute__((always_inline)) void dw_row16(const dk_dw *d, const float *const *rows, float *orow,
                                                           int ky0, int ky1, int64_t c0, const int K, int64_t ox_lo,
                                                           int64_t n) {
    const int64_t C = d->C;
    v8 wv[2 * 25];
    for (int i = 0; i < K * K; i++) { wv[2 * i] = ld(d->w + i * C + c0); wv[2 * i + 1] = ld(d->w + i * C + c0 + 8); }
    const v8 b0 = ld(d->b + c0), b1 = ld(d->b + c0 + 8);
    const int64_t step = d->sx * C;
    for (int64_t ox = ox_lo; ox < ox_lo + 4 * n; ox += 4) {
        const int64_t at = (ox * d->sx - d->px) * C + c0;
        v8 a0 = b0, a1 = b0, a2 = b0, a3 = b0, e0 = b1, e1 = b1, e2 = b1, e3 = b1;
        for (int ky = ky0; ky < ky1; ky++)
#pragma GCC unroll 5
            for (int kx = 0; kx < K; kx++) {
                const float *p = rows[ky] + at + kx * C;
                v8 w = wv[2 * (ky * K + kx)], u = wv[2 * (ky * K + kx) + 1];
                a0 += ld(p) * w; a1 += ld(p + step) * w; a2 += ld(p + 2 * step) * w; a3 += ld(p + 3 * step) * w;
                e0 += ld(p + 8) * u; e1 += ld(p + step + 8) * u; e2 += ld(p + 2 * step + 8) * u; e3 += ld(p + 3 * step + 8) * u;
            }
        float *o = orow + ox * C + c0;
        st(o, vact(a0, d->act)); st(o + C, vact(a1, d->act)); st(o + 2 * C, vact(a2, d->act)); st(o + 3 * C, vact(a3, d->act));
        st(o + 8, vact(e0, d->act)); st(o + C + 8, vact(e1, d->act)); st(o + 2 * C + 8, vact(e2, d->act));
        st(o + 3 * C + 8, vact(e3, d->act));
    }
}

/* Channels [c0, c0 + 16): the interior in dw_row16's blocks, the borders by dw_row8. */
static inline __attribute__((always_inline)) void dw_row16_borders(const dk_dw *d, const float *const *rows,
                                                                   float *orow, int ky0, int ky1, int64_t c0,
                                                                   const int K) {
    const int64_t sx = d->sx, OW = d->OW;
    const int64_t first = (d->px + sx - 1) / sx;              /* the first window starting inside */
    const int64_t room = d->W - K - 3 * sx + d->px;           /* the last 4-block start ending inside: room / sx */
    const int64_t last = room < 0 ? -1 : (room / sx < OW - 4 ? room / sx : OW - 4);
    const int64_t n = last >= first ? (last - first) / 4 + 1 : 0;
    const int64_t end = n > 0 ? first + 4 * n : 0;
    const int64_t lo = n > 0 ? first : OW;
    for (int64_t c = c0; c < c0 + 16; c += 8) {
        dw_row8(d, rows, orow, ky0, ky1, c, K, 0, lo);
        if (n > 0) dw_row8(d, rows, orow, ky0, ky1, c, K, end, OW);
    }
    if (n > 0) dw_row16(d, rows, orow, ky0, ky1, c0, K, first, n);
}

/* One output row, every channel, into orow, from the input rows of its window (see dw_row8). */
static void dw_rows(const dk_dw *d, const float *const *rows, int ky0, int ky1, float *orow) {
    const int64_t C = d->C, W = d->W, C8 = C / 8 * 8;
    const int k3 = d->kh == 3 && d->kw == 3, k5 = d->kh == 5 && d->kw == 5;
    int64_t c0 = 0;
    for (; c0 + 16 <= C8 && (k3 || k5); c0 += 16) {
        if (k3) dw_row16_borders(d, rows, orow, ky0, ky1, c0, 3);
        else dw_row16_borders(d, rows, orow, ky0, ky1, c0, 5);
    }
    for (; c0 < C8; c0 += 8) {
        if (k3) dw_row8(d, rows, orow, ky0, ky1, c0, 3, 0, d->OW);
        else if (k5) dw_row8(d, rows, orow, ky0, ky1, c0, 5, 0, d->OW);
        else dw_row8(d, rows, orow, ky0, ky1, c0, 0, 0, d->OW);
    }
    for (int64_t c = C8; c < C; c++)
        for (int64_t ox = 0; ox < d->OW; ox++) {
            int64_t ix0 = ox * d->sx - d->px;
            int kx0, kx1;
            dk_taps(ix0, d->kw, W, &kx0, &kx1);
            float a = d->b[c];
            for (int ky = ky0; ky < ky1; ky++)
                for (int kx = kx0; kx < kx1; kx++)
                    a += rows[ky][(ix0 + kx) * C + c] * d->w[(ky * d->kw + kx) * C + c];
            orow[ox * C + c] = dk_act(a, d->act);
        }
}

/* Output row `row` (image row / OH, row row % OH): its window's first input row and taps. */
static inline void dw_window(const dk_dw *d, int64_t row, int64_t *n, int64_t *iy0, int *ky0, int *ky1) {
    *n = row / d->OH;
    *iy0 = (row % d->OH) * d->sy - d->py;
    dk_taps(*iy0, d->kh, d->H, ky0, ky1);
}

static void dw_one_row(const dk_dw *d, int64_t row, float *orow) {
    int64_t n, iy0;
    int ky0, ky1;
    dw_window(d, row, &n, &iy0, &ky0, &ky1);
    const float *rows[DW_MAX_K];
    for (int ky = ky0; ky < ky1; ky++) rows[ky] = d->x + ((n * d->H + iy0 + ky) * d->W) * d->C;
    dw_rows(d, rows, ky0, ky1, orow);
}

static void dw_part(void *ctx, int64_t lo, int64_t hi) {
    const dk_dw *d = (const dk_dw *)ctx;
    for (int64_t row = lo; row < hi; row++) dw_one_row(d, row, d->y + row * d->OW * d->C);
}

/* g: N, H, W, C, OH, OW, kh, kw, sy, sx, py, px, act, threads (<= 0: torch's) (one array: a call from Python
   converts 5 arguments, not 18) */
void darkcfg_dw_nhwc(const float *x, const float *w, const float *b, float *y, const int64_t *g) {
    dk_dw d = {x, w, b, y, g[1], g[2], g[3], g[4], g[5], (int)g[6], (int)g[7], (int)g[8], (int)g[9], (int)g[10],
               (int)g[11], (int)g[12]};
    dk_split(dw_part, &d, g[0] * g[4], 1, (int)g[13], g[0] * g[4] * g[5] * g[3] * g[6] * g[7]);
}

/* ---- 1x1 stride 1, NHWC: y[p][co] = act(b[co] + sum_ci x[p][ci] w[ci][co] (+ r[p][co]));
   w is [Ci][CoP], b [CoP], CoP % 8 == 0 (16-channel strips, the last 8 on their own).  r (may be NULL): a residual of y's shape added before
   the activation -- a [shortcut] folded into the conv before it (Darknet: act_s(conv + from)).
   x: pixel rows xs floats apart (Ci: a whole NHWC map).  x2 (may be NULL): the input's channels
   Ca..Ci-1 come from there, rows xs2 apart -- a [route] of two maps read in place by the 1x1 conv
   after it (the same sums in the same order as on the concatenation). ---- */
typedef struct { const float *x, *w, *b, *r; float *y; int64_t Ci, Co, CoP; int act; const float *x2; int64_t xs, xs2, Ca; } dk_pw;

/* dk_pw of a 1x1 conv on one whole NHWC map */
static inline dk_pw pw_plain(const float *x, const float *w, const float *b, const float *r, float *y, int64_t Ci,
                             int64_t Co, int64_t CoP, int act) {
    dk_pw d = {x, w, b, r, y, Ci, Co, CoP, act, 0, Ci, 0, Ci};
    return d;
}

#ifdef __AVX__
#include <immintrin.h>
static const int32_t dk_lanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
#endif

/* out[0:m] = act(v (+ res[0:m])), m <= 8.  m < 8 (a layer's last channels, e.g. Yolo-Fastest's 4):
   masked AVX loads/stores -- element copies through a stack vector stalled on store forwarding
   (a 160x160 8->4 conv with its residual took 2x the time of one without). */
static inline __attribute__((always_inline)) void pw_store(float *out, const float *res, v8 v, int m, const int act) {
    if (m >= 8) {
        if (res) v += ld(res);
        st(out, vact(v, act));
        return;
    }
#ifdef __AVX__
    if (m == 4) {   /* (AMD's masked stores are slow: a half-vector store when it is exactly one) */
        __m128 lo = _mm256_castps256_ps128((__m256)v);
        if (res) lo = _mm_add_ps(lo, _mm_loadu_ps(res));
        v8 w = vact((v8)_mm256_castps128_ps256(lo), act);
        _mm_storeu_ps(out, _mm256_castps256_ps128((__m256)w));
        return;
    }
    const __m256i lanes = _mm256_loadu_si256((const __m256i *)(dk_lanes + 8 - m));
    if (res) v += (v8)_mm256_maskload_ps(res, lanes);
    _mm256_maskstore_ps(out, lanes, (__m256)vact(v, act));
#else
    float t[8] = {0};
    if (res) {
        for (int j = 0; j < m; j++) t[j] = res[j];
        v += ld(t);
    }
    st(t, vact(v, act));
    for (int j = 0; j < m; j++) out[j] = t[j];
#endif
}

/* The last 8 output channels when CoP % 16 == 8 (all of them when Co <= 8): one vector per pixel,
   12 pixels at a time so 12 independent sums hide the FMA latency (a 16-wide strip there wasted
   half its multiplies, and 6 sums left the FMA units idle: Yolo-Fastest's 8->8 and 8->4 convs on
   160x160 maps). */
#define PR8 12
/* 12 pixels of the 8-channel strip: xp rows of Ci inputs, outputs (and residuals) rows of `ys` floats. */
static inline __attribute__((always_inline)) void pw8_block(const float *xp, int64_t xs, int64_t Ci, const float *xp2,
                                                            int64_t xs2, int64_t Ci2, const float *wc, int64_t CoP,
                                                            v8 b0, float *yp, const float *rp, int64_t ys, int m0,
                                                            const int act) {
    v8 a[PR8];
    for (int r = 0; r < PR8; r++) a[r] = b0;
    for (int64_t ci = 0; ci < Ci; ci++) {
        v8 w0 = ld(wc + ci * CoP);
        for (int r = 0; r < PR8; r++) a[r] += splat(xp[r * xs + ci]) * w0;
    }
    for (int64_t ci = 0; ci < Ci2; ci++) {   /* a second part's channels (see dk_pw) */
        v8 w0 = ld(wc + (Ci + ci) * CoP);
        for (int r = 0; r < PR8; r++) a[r] += splat(xp2[r * xs2 + ci]) * w0;
    }
    for (int r = 0; r < PR8; r++) pw_store(yp + r * ys, rp ? rp + r * ys : 0, a[r], m0, act);
}

static inline __attribute__((always_inline)) void pw_strip8(const dk_pw *d, int64_t c0, int64_t lo, int64_t hi,
                                                            const int act, const int res) {
    const int64_t Ci = d->Ci, Co = d->Co, Ca = d->Ca, xs = d->xs, xs2 = d->xs2;
    const float *wc = d->w + c0;
    const v8 b0 = ld(d->b + c0);
    const int m0 = Co - c0 >= 8 ? 8 : (int)(Co - c0);
    int64_t p = lo;
    /* The last block ends at hi, overlapping the one before (its pixels come out the same: each
       pixel's sum is the same code wherever its block starts): no one-pixel tail per range, which
       the fused blocks, calling this per image row, would pay on every row. */
    for (; p < hi && hi - lo >= PR8; p += PR8) {
        int64_t q = p + PR8 <= hi ? p : hi - PR8;
        pw8_block(d->x + q * xs, xs, Ca, d->x2 + q * xs2, xs2, Ci - Ca, wc, d->CoP, b0, d->y + q * Co + c0,
                  res ? d->r + q * Co + c0 : 0, Co, m0, act);
    }
    if (p < hi) {
        /* Fewer than 12 pixels in all: the same block code on copies (zero-padded): a one-pixel
           loop compiles to other roundings (GCC fuses one form into FMAs, not the other), and a
           pixel's value must not depend on where the thread split fell. */
        const int n = (int)(hi - p);
        float stack[PR8 * 256], yt[PR8 * 8], rt[PR8 * 8];
        float *xt = Ci <= 256 ? stack : (float *)malloc(sizeof(float) * PR8 * Ci);
        if (!xt) return;   /* (unreachable in practice: a few KB) */
        memset(xt, 0, sizeof(float) * PR8 * Ci);
        for (int r = 0; r < n; r++) {   /* (both parts' channels side by side in the copy) */
            memcpy(xt + r * Ci, d->x + (p + r) * xs, sizeof(float) * Ca);
            if (Ci > Ca) memcpy(xt + r * Ci + Ca, d->x2 + (p + r) * xs2, sizeof(float) * (Ci - Ca));
        }
        for (int r = 0; r < n && res; r++) memcpy(rt + r * 8, d->r + (p + r) * Co + c0, sizeof(float) * m0);
        pw8_block(xt, Ci, Ci, 0, 0, 0, wc, d->CoP, b0, yt, res ? rt : 0, 8, m0, act);
        for (int r = 0; r < n; r++) memcpy(d->y + (p + r) * Co + c0, yt + r * 8, sizeof(float) * m0);
        if (xt != stack) free(xt);
    }
}

#define PR 6
/* 6 pixels x 16 channels: xp rows of Ci inputs, weights rows CoP apart, outputs (and residuals)
   rows of `ys` floats; m0, m1: the channels of each half that exist. */
static inline __attribute__((always_inline)) void pw16_block(const float *xp, int64_t xs, int64_t Ci, const float *xp2,
                                                             int64_t xs2, int64_t Ci2, const float *wc, int64_t CoP,
                                                             v8 b0, v8 b1, float *yp, const float *rp, int64_t ys,
                                                             int m0, int m1, const int act) {
    v8 a[PR][2];
    for (int r = 0; r < PR; r++) { a[r][0] = b0; a[r][1] = b1; }
    for (int64_t ci = 0; ci < Ci; ci++) {
        v8 w0 = ld(wc + ci * CoP), w1 = ld(wc + ci * CoP + 8);
        for (int r = 0; r < PR; r++) {
            v8 xv = splat(xp[r * xs + ci]);
            a[r][0] += xv * w0;
            a[r][1] += xv * w1;
        }
    }
    for (int64_t ci = 0; ci < Ci2; ci++) {   /* a second part's channels (see dk_pw) */
        const float *wk = wc + (Ci + ci) * CoP;
        v8 w0 = ld(wk), w1 = ld(wk + 8);
        for (int r = 0; r < PR; r++) {
            v8 xv = splat(xp2[r * xs2 + ci]);
            a[r][0] += xv * w0;
            a[r][1] += xv * w1;
        }
    }
    for (int r = 0; r < PR; r++) {
        pw_store(yp + r * ys, rp ? rp + r * ys : 0, a[r][0], m0, act);
        if (m1 > 0) pw_store(yp + r * ys + 8, rp ? rp + r * ys + 8 : 0, a[r][1], m1, act);
    }
}

/* Pixels [lo, hi).  act and res (a residual is added) are compile-time constants in each of the
   instances pw_part picks from: the stores then have no per-pixel tests (with 4 input channels,
   those were half the time of Yolo-Fastest's 160x160 1x1 convs). */
static inline __attribute__((always_inline)) void pw_range(const dk_pw *d, int64_t lo, int64_t hi, const int act,
                                                           const int res) {
    const int64_t Ci = d->Ci, Co = d->Co, CoP = d->CoP, Ca = d->Ca, xs = d->xs, xs2 = d->xs2;
    if (CoP % 16 == 8) pw_strip8(d, CoP - 8, lo, hi, act, res);
    for (int64_t c0 = 0; c0 + 16 <= CoP; c0 += 16) {
        const float *wc = d->w + c0;
        v8 b0 = ld(d->b + c0), b1 = ld(d->b + c0 + 8);
        int m0 = Co - c0 >= 8 ? 8 : (int)(Co - c0), m1 = Co - c0 - 8 >= 8 ? 8 : (int)(Co - c0 - 8);
        int64_t p = lo;
        for (; p < hi && hi - lo >= PR; p += PR) {   /* the last block ends at hi (see pw_strip8) */
            const int64_t q = p + PR <= hi ? p : hi - PR;
            pw16_block(d->x + q * xs, xs, Ca, d->x2 + q * xs2, xs2, Ci - Ca, wc, CoP, b0, b1, d->y + q * Co + c0,
                       res ? d->r + q * Co + c0 : 0, Co, m0, m1, act);
        }
        for (; p < hi; p++) {
            const float *xp = d->x + p * xs, *xp2 = d->x2 + p * xs2;
            v8 a0 = b0, a1 = b1;
            for (int64_t ci = 0; ci < Ci; ci++) {
                v8 xv = splat(ci < Ca ? xp[ci] : xp2[ci - Ca]);
                a0 += xv * ld(wc + ci * CoP); a1 += xv * ld(wc + ci * CoP + 8);
            }
            int64_t at = p * Co + c0;
            const float *rp = res ? d->r + at : 0;
            pw_store(d->y + at, rp, a0, m0, act);
            if (m1 > 0) pw_store(d->y + at + 8, res ? rp + 8 : 0, a1, m1, act);
        }
    }
}

static void pw_chunk(const dk_pw *d, int64_t lo, int64_t hi) {
    switch (d->act * 2 + (d->r != 0)) {
        case 0: pw_range(d, lo, hi, 0, 0); break;
        case 1: pw_range(d, lo, hi, 0, 1); break;
        case 2: pw_range(d, lo, hi, 1, 0); break;
        case 3: pw_range(d, lo, hi, 1, 1); break;
        case 4: pw_range(d, lo, hi, 2, 0); break;
        default: pw_range(d, lo, hi, 2, 1); break;
    }
}

/* Pixels in chunks of ~256 KB of inputs, every output strip per chunk: the strips then re-read the
   chunk from L2, not the thread's whole range from memory (the dense nets' 1x1 convs on 104x104
   maps: 2.7 MB of inputs per range, once per 16 outputs).  The last chunk takes the remainder
   (a pixel's value does not depend on where its block or chunk starts). */
static void pw_part(void *ctx, int64_t lo, int64_t hi) {
    const dk_pw *d = (const dk_pw *)ctx;
    int64_t chunk = (65536 / (d->Ci > 0 ? d->Ci : 1)) / 12 * 12;
    if (chunk < 96) chunk = 96;
    for (int64_t p = lo; p < hi; p += chunk) {
        int64_t end = hi - (p + chunk) < chunk ? hi : p + chunk;
        pw_chunk(d, p, end);
        if (end == hi) break;
    }
}

/* g: P (pixels, N*H*W), Ci, Co, CoP, act, threads (<= 0: torch's); r: residual or NULL */
void darkcfg_pw_nhwc(const float *x, const float *w, const float *b, float *y, const int64_t *g) {
    dk_pw d = pw_plain(x, w, b, 0, y, g[1], g[2], g[3], (int)g[4]);
    dk_split(pw_part, &d, g[0], PR, (int)g[5], g[0] * g[1] * g[2]);
}

void darkcfg_pw_residual_nhwc(const float *x, const float *w, const float *b, const float *r, float *y,
                              const int64_t *g, int act) {
    dk_pw d = pw_plain(x, w, b, r, y, g[1], g[2], g[3], act);
    dk_split(pw_part, &d, g[0], PR, (int)g[5], g[0] * g[1] * g[2]);
}

/* The 1x1 conv on a [route] of two maps, each read in place: g as darkcfg_pw_nhwc's, then Ca (the
   first part's channels) and the parts' pixel strides (floats). */
void darkcfg_pw_split_nhwc(const float *x, const float *x2, const float *w, const float *b, float *y,
                           const int64_t *g) {
    dk_pw d = pw_plain(x, w, b, 0, y, g[1], g[2], g[3], (int)g[4]);
    d.x2 = x2; d.Ca = g[6]; d.xs = g[7]; d.xs2 = g[8];
    dk_split(pw_part, &d, g[0], PR, (int)g[5], g[0] * g[1] * g[2]);
}

/* ---- dense k x k conv with few input channels (a network's first conv, on the RGB image), NHWC out.
   oneDNN's blocked convs want many input channels; with 3 they ran at ~45 GFLOP/s here.  Output
   channels are the vector lanes (weights [kh][kw][C][CoP], CoP % 8 == 0, zeros beyond Co); P pixels
   x V vectors of sums at a time (P V = 8-9 independent FMA chains); the input is read through its
   strides (NCHW or NHWC).  A pixel's sum runs over the taps in one order whichever path takes it;
   threads split rows, so no value depends on the split. ---- */
typedef struct {
    const float *x, *w, *b; float *y;
    int64_t H, W, C, OH, OW, Co, CoP, sn, sc, sh, sw; int kh, kw, sy, sx, py, px, act;
} dk_cv;

/* P pixels x V vectors of outputs; taps [ky0, ky1) x [kx0, kx1).  K > 0: the window is K wide at
   compile time (kx0 = 0, kx1 = K: the taps of a row unroll). */
static inline __attribute__((always_inline)) void cv_block(const dk_cv *d, const float *xo, int ky0, int ky1, int kx0,
                                                           int kx1, int64_t c0, float *yo, const int V, const int P,
                                                           const int K) {
    v8 a[12];
    const int64_t C = d->C, CoP = d->CoP, step = d->sx * d->sw, sw = d->sw, sc = d->sc;
    if (K) { kx0 = 0; kx1 = K; }
#pragma GCC unroll 12
    for (int i = 0; i < P * V; i++) a[i] = ld(d->b + c0 + 8 * (i % V));
    for (int ky = ky0; ky < ky1; ky++)
        for (int64_t ci = 0; ci < C; ci++) {
            const float *xr = xo + ky * d->sh + ci * sc;
            const float *wr = d->w + (ky * d->kw * C + ci) * CoP + c0;
#pragma GCC unroll 7
            for (int kx = kx0; kx < kx1; kx++) {
                const float *wp = wr + kx * C * CoP;
                const float *xp = xr + kx * sw;
#pragma GCC unroll 12
                for (int p = 0; p < P; p++) {
                    v8 xv = splat(xp[p * step]);
#pragma GCC unroll 4
                    for (int v = 0; v < V; v++) a[p * V + v] += xv * ld(wp + 8 * v);
                }
            }
        }
    const int act = d->act == 3 ? 0 : d->act;   /* mish: on the whole row afterwards */
#pragma GCC unroll 12
    for (int p = 0; p < P; p++)
#pragma GCC unroll 4
        for (int v = 0; v < V; v++) {
            int64_t left = d->Co - c0 - 8 * v;
            pw_store(yo + p * d->Co + c0 + 8 * v, 0, a[p * V + v], left >= 8 ? 8 : (int)left, act);
        }
}

/* One output row, channels [c0, c0 + 8 V): blocks of P pixels over the pixels whose windows lie
   inside the image (the last block overlapping the one before rather than leaving a tail: one
   accumulator per pixel there waited on the FMA latency), single pixels (clipped windows) at the
   borders.  One function per (V, P, K): each is small enough for the compiler to keep its V x P
   sums in registers (inlined into one routine they spilled).  A pixel's sum runs over the taps in
   the same order on either path, wherever its block starts. */
#define CV_ROW(V, P, K)                                                                                    \
    static __attribute__((noinline)) void cv_row_##V##_##K(const dk_cv *d, const float *xn, int64_t iy0,    \
                                                           int ky0, int ky1, float *orow, int64_t c0) {     \
        int64_t lo = (d->px + d->sx - 1) / d->sx, hi = (d->W + d->px - d->kw) / d->sx + 1;                  \
        if (hi > d->OW) hi = d->OW;                                                                         \
        if (hi - lo < P) lo = hi = d->OW;   /* too few inner pixels for a block: all single */              \
        for (int64_t ox = 0; ox < d->OW;) {                                                                 \
            int64_t ix0 = ox * d->sx - d->px;                                                               \
            if (ox >= lo && ox < hi) {                                                                      \
                int64_t q = ox + P <= hi ? ox : hi - P;                                                     \
                cv_block(d, xn + iy0 * d->sh + (q * d->sx - d->px) * d->sw, ky0, ky1, 0, d->kw, c0,         \
                         orow + q * d->Co, V, P, K);                                                        \
                ox = q + P;                                                                                 \
            } else {                                                                                        \
                int kx0, kx1;                                                                               \
                dk_taps(ix0, d->kw, d->W, &kx0, &kx1);                                                      \
                cv_block(d, xn + iy0 * d->sh + ix0 * d->sw, ky0, ky1, kx0, kx1, c0, orow + ox * d->Co, V, 1, 0); \
                ox += 1;                                                                                    \
            }                                                                                               \
        }                                                                                                   \
    }
CV_ROW(4, 3, 3)
CV_ROW(3, 4, 3)
CV_ROW(2, 6, 3)
CV_ROW(1, 8, 3)
CV_ROW(4, 3, 0)
CV_ROW(3, 4, 0)
CV_ROW(2, 6, 0)
CV_ROW(1, 8, 0)

typedef void (*cv_row_fn)(const dk_cv *, const float *, int64_t, int, int, float *, int64_t);

/* One output row (all of d's output channels). */
static void cv_one_row(const dk_cv *d, int64_t row) {
    int64_t n = row / d->OH, oy = row % d->OH;
    const float *xn = d->x + n * d->sn;
    float *orow = d->y + row * d->OW * d->Co;
    int64_t iy0 = oy * d->sy - d->py;
    int ky0, ky1;
    dk_taps(iy0, d->kh, d->H, &ky0, &ky1);
    const int k3 = d->kw == 3;
    static const cv_row_fn rows3[5] = {0, cv_row_1_3, cv_row_2_3, cv_row_3_3, cv_row_4_3};
    static const cv_row_fn rows0[5] = {0, cv_row_1_0, cv_row_2_0, cv_row_3_0, cv_row_4_0};
    int64_t c0 = 0;
    for (; c0 + 32 <= d->CoP; c0 += 32) (k3 ? rows3 : rows0)[4](d, xn, iy0, ky0, ky1, orow, c0);
    if (c0 < d->CoP) (k3 ? rows3 : rows0)[(d->CoP - c0) / 8](d, xn, iy0, ky0, ky1, orow, c0);
    if (d->act == 3) mish_f32(orow, orow, d->OW * d->Co);
}

static void cv_part(void *ctx, int64_t lo, int64_t hi) {
    for (int64_t row = lo; row < hi; row++) cv_one_row((const dk_cv *)ctx, row);
}

/* g: N, H, W, C, OH, OW, Co, CoP, kh, kw, sy, sx, py, px, act (0 linear, 1 leaky, 2 relu, 3 mish),
   threads (<= 0: torch's), then the input's strides in floats: sn, sc, sh, sw */
void darkcfg_conv_nhwc(const float *x, const float *w, const float *b, float *y, const int64_t *g) {
    dk_cv d = {x, w, b, y, g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[16], g[17], g[18], g[19],
               (int)g[8], (int)g[9], (int)g[10], (int)g[11], (int)g[12], (int)g[13], (int)g[14]};
    int64_t rows = g[0] * g[4];
    dk_split(cv_part, &d, rows, 1, (int)g[15], rows * g[5] * g[6] * g[3] * g[8] * g[9]);
}

/* ---- Grouped k x k conv (not depthwise), NHWC: ResNeXt's 32-group 3x3s.  oneDNN ran those with 4
   or 8 channels per group at 8-22 GMAC/s.  Groups are taken S at a time as "super-groups" of Os
   outputs (Os % 8 == 0: 2 groups of 4 outputs, or 1 group of 8, 16, ...) over their Cs inputs,
   each a small dense conv by the stem kernel's row code (weights [S][kh][kw][Cs][Os], zero
   between the groups a super-group joins), its output Os channels of the full rows. ---- */
typedef struct { dk_cv cv; int64_t S, Cs, Os; } dk_gcv;

static void gcv_part(void *ctx, int64_t lo, int64_t hi) {
    const dk_gcv *g = (const dk_gcv *)ctx;
    const int64_t wsize = (int64_t)g->cv.kh * g->cv.kw * g->Cs * g->Os;
    for (int64_t row = lo; row < hi; row++)
        for (int64_t s = 0; s < g->S; s++) {
            dk_cv e = g->cv;
            e.x += s * g->Cs * e.sc;
            e.w += s * wsize;
            e.b += s * g->Os;
            e.y += s * g->Os;
            cv_one_row(&e, row);
        }
}

/* g: darkcfg_conv_nhwc's, with C = Cs, Co = all output channels (the output's pixel stride),
   CoP = Os, act 0-2; then S, Cs, Os */
void darkcfg_gconv_nhwc(const float *x, const float *w, const float *b, float *y, const int64_t *g) {
    dk_gcv d = {{x, w, b, y, g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[16], g[17], g[18], g[19],
                 (int)g[8], (int)g[9], (int)g[10], (int)g[11], (int)g[12], (int)g[13], (int)g[14]}, g[20], g[21], g[22]};
    int64_t rows = g[0] * g[4];
    dk_split(gcv_part, &d, rows, 1, (int)g[15], rows * g[5] * g[6] * g[3] * g[8] * g[9]);
}

/* ---- [1x1 expand ->] depthwise k x k -> 1x1 (-> + residual), NHWC, one pass: the inverted-residual
   blocks of Yolo-Fastest and the MobileNet YOLOs.  Each thread keeps the expanded rows its
   depthwise windows need in a ring of kh row buffers (each made once per thread, as the window
   slides down) and makes each depthwise output row in a buffer it feeds straight to the
   projecting 1x1: the expanded and depthwise maps -- the block's largest -- never go through
   memory.  Every value comes from the same code as the separate kernels (1x1 rows on whole image
   rows, depthwise rows as in darkcfg_dw_nhwc): bit-identical to running them one by one. ---- */
typedef struct { dk_pw ex; dk_dw dw; dk_pw pw; int expand; } dk_block;

/* Output rows [lo, hi) row by row: the expanded rows in a ring of kh row buffers (large maps). */
static void block_ring(const dk_block *f, int64_t lo, int64_t hi) {
    const dk_dw *d = &f->dw;
    const int64_t W = d->W, C = d->C, OW = d->OW, Co = f->pw.Co, kh = d->kh;
    const int64_t ring_rows = f->expand ? kh : 0;
    float *buf = (float *)malloc(sizeof(float) * (size_t)(ring_rows * W * C + OW * C + 8));
    if (!buf) return;   /* (tens of KB; the caller bounds the sizes) */
    float *mid = buf + ring_rows * W * C;
    int64_t tag[DW_MAX_K];   /* image row held by each ring slot (n * H + iy), -1: none */
    for (int i = 0; i < DW_MAX_K; i++) tag[i] = -1;
    for (int64_t row = lo; row < hi; row++) {
        int64_t n, iy0;
        int ky0, ky1;
        dw_window(d, row, &n, &iy0, &ky0, &ky1);
        const float *rows[DW_MAX_K];
        for (int ky = ky0; ky < ky1; ky++) {
            int64_t image_row = n * d->H + iy0 + ky;
            if (!f->expand) { rows[ky] = d->x + image_row * W * C; continue; }
            int64_t slot = (iy0 + ky) % kh;   /* any kh consecutive rows take distinct slots */
            float *dst = buf + slot * W * C;
            if (tag[slot] != image_row) {
                dk_pw e = f->ex;
                e.x = f->ex.x + image_row * W * f->ex.Ci;
                e.y = dst;
                pw_part(&e, 0, W);
                tag[slot] = image_row;
            }
            rows[ky] = dst;
        }
        dw_rows(d, rows, ky0, ky1, mid);
        dk_pw p = f->pw;
        p.x = mid;
        p.y = f->pw.y + row * OW * Co;
        p.r = f->pw.r ? f->pw.r + row * OW * Co : 0;
        pw_part(&p, 0, OW);
    }
    free(buf);
}

/* Output rows [lo, hi) of one image as a slab (small maps, whose slab fits in L2): one 1x1 call
   for all the expanded rows it needs, the depthwise rows into a buffer, one 1x1 call for all of
   them -- row-sized calls left the 1x1 blocks a third empty on 10x10 maps.  Same values. */
static void block_slab(const dk_block *f, int64_t lo, int64_t hi, int64_t iy_lo, int64_t iy_hi, float *buf) {
    const dk_dw *d = &f->dw;
    const int64_t W = d->W, C = d->C, OW = d->OW, Co = f->pw.Co, n = lo / d->OH;
    float *mid = buf + (f->expand ? (iy_hi - iy_lo) * W * C : 0);
    if (f->expand) {
        dk_pw e = f->ex;
        e.x = f->ex.x + (n * d->H + iy_lo) * W * f->ex.Ci;
        e.y = buf;
        pw_part(&e, 0, (iy_hi - iy_lo) * W);
    }
    for (int64_t row = lo; row < hi; row++) {
        int64_t nn, iy0;
        int ky0, ky1;
        dw_window(d, row, &nn, &iy0, &ky0, &ky1);
        const float *rows[DW_MAX_K];
        for (int ky = ky0; ky < ky1; ky++)
            rows[ky] = f->expand ? buf + (iy0 + ky - iy_lo) * W * C : d->x + ((n * d->H + iy0 + ky) * W) * C;
        dw_rows(d, rows, ky0, ky1, mid + (row - lo) * OW * C);
    }
    dk_pw p = f->pw;
    p.x = mid;
    p.y = f->pw.y + lo * OW * Co;
    p.r = f->pw.r ? f->pw.r + lo * OW * Co : 0;
    pw_part(&p, 0, (hi - lo) * OW);
}

/* A slab's buffers at most this many floats (256 KB: L2) */
#define BLOCK_SLAB_FLOATS 65536

static void block_part(void *ctx, int64_t lo, int64_t hi) {
    const dk_block *f = (const dk_block *)ctx;
    const dk_dw *d = &f->dw;
    for (int64_t start = lo; start < hi;) {   /* per image */
        const int64_t n = start / d->OH, end = (n + 1) * d->OH < hi ? (n + 1) * d->OH : hi;
        const int64_t oy_lo = start - n * d->OH, oy_hi = end - n * d->OH;
        int64_t iy_lo = oy_lo * d->sy - d->py, iy_hi = (oy_hi - 1) * d->sy - d->py + d->kh;
        iy_lo = iy_lo < 0 ? 0 : iy_lo;
        iy_hi = iy_hi > d->H ? d->H : iy_hi;
        const int64_t floats = (f->expand ? (iy_hi - iy_lo) * d->W * d->C : 0) + (end - start) * d->OW * d->C;
        float *buf = floats <= BLOCK_SLAB_FLOATS ? (float *)malloc(sizeof(float) * (size_t)(floats + 8)) : 0;
        if (buf) {
            block_slab(f, start, end, iy_lo, iy_hi, buf);
            free(buf);
        } else {
            block_ring(f, start, end);
        }
        start = end;
    }
}

/* g: the depthwise geometry of darkcfg_dw_nhwc (N, H, W, C, OH, OW, kh, kw, sy, sx, py, px, act, threads),
   then Co, CoP, act of the projecting 1x1, then Ci, CP, act of the expanding 1x1 (Ci = 0: none; its
   outputs are the depthwise conv's C channels).  x: the expanding 1x1's input (else the depthwise
   conv's); r: residual of y's shape, or NULL. */
void darkcfg_block_nhwc(const float *x, const float *we, const float *be, const float *wd, const float *bd,
                        const float *wp, const float *bp, const float *r, float *y, const int64_t *g) {
    const int expand = g[17] > 0;
    dk_block f = {pw_plain(x, we, be, 0, 0, g[17], g[3], g[18], (int)g[19]),
                  {expand ? 0 : x, wd, bd, 0, g[1], g[2], g[3], g[4], g[5], (int)g[6], (int)g[7], (int)g[8],
                   (int)g[9], (int)g[10], (int)g[11], (int)g[12]},
                  pw_plain(0, wp, bp, r, y, g[3], g[14], g[15], (int)g[16]), expand};
    int64_t rows = g[0] * g[4];
    int64_t per_pixel = g[3] * (g[6] * g[7] + g[14] + (expand ? g[17] * g[8] * g[9] : 0));
    dk_split(block_part, &f, rows, 1, (int)g[13], rows * g[5] * per_pixel);
}

/* ---- Batched GEMM out[e] = v[e] u[e] (Winograd's (m+2)^2 products; v [E][M][C], out [E][M][K], K % 8 == 0)
   on pre-packed weights: u[e] stored strip by strip (16 columns,
   then 8 if K % 16 == 8): strip s is a contiguous [C][16] block, so the weights stream from memory
   in order once per product, with no per-call packing (what MKL does on every torch.bmm: for the
   few-row products of Winograd on small maps -- 49 rows for a 26x26 map -- that packing is as
   much work as the products).  6 x 16 (12 x 8) register blocks; the last block of rows overlaps
   the one before instead of a one-row tail, so every row comes from the same code. ---- */
/* One strip of products: the 1x1 kernel's blocks with a zero bias and no activation (rows
   M >= 12: pg_part pads smaller products; the last block overlaps the one before). */
static inline __attribute__((always_inline)) void gemm_strip16(const float *A, int64_t M, int64_t C, const float *B,
                                                               float *Y, int64_t ldy) {
    const v8 zero = splat(0.0f);
    for (int64_t p = 0; p < M; p += PR) {
        const int64_t q = p + PR <= M ? p : M - PR;
        pw16_block(A + q * C, C, C, 0, 0, 0, B, 16, zero, zero, Y + q * ldy, 0, ldy, 8, 8, 0);
    }
}

static inline __attribute__((always_inline)) void gemm_strip8(const float *A, int64_t M, int64_t C, const float *B,
                                                              float *Y, int64_t ldy) {
    for (int64_t p = 0; p < M; p += PR8) {
        const int64_t q = p + PR8 <= M ? p : M - PR8;
        pw8_block(A + q * C, C, C, 0, 0, 0, B, 8, splat(0.0f), Y + q * ldy, 0, ldy, 8, 0);
    }
}

typedef struct { const float *v, *u; float *out; int64_t M, C, K; } dk_pg;

static void pg_part(void *ctx, int64_t lo, int64_t hi) {
    const dk_pg *d = (const dk_pg *)ctx;
    const int64_t M = d->M, C = d->C, K = d->K, K16 = K / 16 * 16;
    /* Fewer than 12 rows: the same block code on a zero-padded copy (a row's value must not
       depend on how many rows its product has: chunks of tiles differ in size). */
    const int64_t MP = M < 12 ? 12 : M;
    float *pad = M < 12 ? (float *)calloc((size_t)(MP * (C + K)), sizeof(float)) : 0;
    if (M < 12 && !pad) return;   /* (a few KB) */
    for (int64_t e = lo; e < hi; e++) {
        const float *A = d->v + e * M * C, *U = d->u + e * C * K;
        float *Y = d->out + e * M * K;
        if (pad) {
            memcpy(pad, A, sizeof(float) * (size_t)(M * C));
            A = pad;
            Y = pad + MP * C;
        }
        for (int64_t k0 = 0; k0 < K16; k0 += 16) gemm_strip16(A, MP, C, U + k0 * C, Y + k0, K);
        if (K16 < K) gemm_strip8(A, MP, C, U + K16 * C, Y + K16, K);
        if (pad) memcpy(d->out + e * M * K, Y, sizeof(float) * (size_t)(M * K));
    }
    free(pad);
}

/* g: E, M, C, K, threads (<= 0: torch's); K % 8 == 0; u packed as above. */
void darkcfg_bgemm_packed(const float *v, const float *u, float *out, const int64_t *g) {
    dk_pg d = {v, u, out, g[1], g[2], g[3]};
    dk_split(pg_part, &d, g[0], 1, (int)g[4], g[0] * g[1] * g[2] * g[3]);
}

/* ---------------------------------------------------------------------------------------------
 * Darknet's [maxpool] on NHWC float32 (forward_maxpool_layer): every output starts at -FLT_MAX
 * and takes an in-bounds input only when it is greater (`val > max ? val : max`: a NaN never
 * wins, -inf comes out as -FLT_MAX); windows start at -pad_top/-pad_left and taps outside the
 * input are skipped.  Channels are the vector lanes.  Why: Yolo-Fastest's SPP pools on 48x10x10
 * maps took ~150 us as strided-slice maxima in torch; this is a few microseconds.
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    const float *x; float *y;
    int64_t H, W, C, OH, OW; int size, sy, sx, pt, pl; int64_t xs, ys;   /* xs, ys: pixel strides (floats) */
} dk_mp;

static inline v8 vmax_darknet(v8 m, v8 v) {
    v8i take = v > m;
    return (v8)(((v8i)v & take) | ((v8i)m & ~take));
}

static void maxpool_part(void *ctx, int64_t lo, int64_t hi) {
    const dk_mp *d = (const dk_mp *)ctx;
    const int64_t C = d->C, W = d->W, H = d->H, C8 = C / 8 * 8, xs = d->xs;
    for (int64_t row = lo; row < hi; row++) {
        int64_t n = row / d->OH, oy = row % d->OH;
        const float *xn = d->x + n * H * W * xs;
        int64_t iy0 = oy * d->sy - d->pt;
        int ky0, ky1;
        dk_taps(iy0, d->size, H, &ky0, &ky1);
        for (int64_t ox = 0; ox < d->OW; ox++) {
            int64_t ix0 = ox * d->sx - d->pl;
            int kx0, kx1;
            dk_taps(ix0, d->size, W, &kx0, &kx1);
            float *out = d->y + (row * d->OW + ox) * d->ys;
            for (int64_t c0 = 0; c0 < C8; c0 += 8) {
                v8 m = splat(-3.402823466e+38f);
                for (int ky = ky0; ky < ky1; ky++)
                    for (int kx = kx0; kx < kx1; kx++)
                        m = vmax_darknet(m, ld(xn + ((iy0 + ky) * W + ix0 + kx) * xs + c0));
                st(out + c0, m);
            }
            for (int64_t c = C8; c < C; c++) {
                float m = -3.402823466e+38f;
                for (int ky = ky0; ky < ky1; ky++)
                    for (int kx = kx0; kx < kx1; kx++) {
                        float v = xn[((iy0 + ky) * W + ix0 + kx) * xs + c];
                        m = v > m ? v : m;
                    }
                out[c] = m;
            }
        }
    }
}

/* g: N, H, W, C, OH, OW, size, sy, sx, pad_top, pad_left, threads (<= 0: torch's), then the pixel
   strides of x and y (C for a whole NHWC map; more for a channel slice: a [route]'s part pooled
   straight into its channels of the pooled concatenation) */
void darkcfg_maxpool_nhwc(const float *x, float *y, const int64_t *g) {
    dk_mp d = {x, y, g[1], g[2], g[3], g[4], g[5], (int)g[6], (int)g[7], (int)g[8], (int)g[9], (int)g[10],
               g[12], g[13]};
    dk_split(maxpool_part, &d, g[0] * g[4], 1, (int)g[11], g[0] * g[4] * g[5] * g[3] * g[6] * g[6]);
}

/* ---------------------------------------------------------------------------------------------
 * Winograd F(m x m, 3 x 3) for dense 3x3 stride-1 convolutions on NHWC float32 (m = 4 or 2;
 * darkcfg/layers/winograd.py says when and why).  The conv is three passes:
 *   1. input transform: each (m+2) x (m+2) input tile d (stride m, zero outside the padded map)
 *      becomes V = B^T d B, stored as V[e][tile][C] (e: the a*a transformed positions);
 *   2. a*a GEMMs M[e] = V[e] U[e] (torch.bmm; U = G w G^T, transformed once in float64);
 *   3. output transform: Y = A^T M A per tile, + bias, activation, stored NHWC.
 * Tiles are numbered n-major, then tile row, then tile column.  Channels are the vector lanes;
 * C % 8 == 0 and K % 8 == 0 (the caller checks).
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    const float *x; float *v; const float *b; float *y;
    int64_t H, W, C, TH, TW, T, row0, sn, sh, sw; int m, pad, act;   /* sn/sh/sw: x's strides (input pass) */
    const float *r;   /* output pass: a residual of y's shape added after the activation, or NULL */
} dk_wg;

/* B^T of F(4,3) (Lavin & Gray), one 6-vector at a time */
static inline void wg_bt6(const v8 *i, v8 *o) {
    const v8 f4 = splat(4.0f), f5 = splat(5.0f), f2 = splat(2.0f);
    o[0] = f4 * i[0] - f5 * i[2] + i[4];
    o[1] = i[3] + i[4] - f4 * (i[1] + i[2]);
    o[2] = f4 * (i[1] - i[2]) + i[4] - i[3];
    o[3] = f2 * (i[3] - i[1]) + i[4] - i[2];
    o[4] = f2 * (i[1] - i[3]) + i[4] - i[2];
    o[5] = f4 * i[1] - f5 * i[3] + i[5];
}

/* B^T of F(2,3) */
static inline void wg_bt4(const v8 *i, v8 *o) {
    o[0] = i[0] - i[2];
    o[1] = i[1] + i[2];
    o[2] = i[2] - i[1];
    o[3] = i[1] - i[3];
}

/* A^T of F(4,3): 6 -> 4 */
static inline void wg_at6(const v8 *i, v8 *o) {
    v8 s12 = i[1] + i[2], d12 = i[1] - i[2], s34 = i[3] + i[4], d34 = i[3] - i[4];
    o[0] = i[0] + s12 + s34;
    o[1] = d12 + splat(2.0f) * d34;
    o[2] = s12 + splat(4.0f) * s34;
    o[3] = d12 + splat(8.0f) * d34 + i[5];
}

/* A^T of F(2,3): 4 -> 2 */
static inline void wg_at4(const v8 *i, v8 *o) {
    o[0] = i[0] + i[1] + i[2];
    o[1] = i[1] - i[2] - i[3];
}

/* m (and so a = m + 2) a compile-time constant in each instance (wg_in_part, wg_out_part pick
   one): the tile loops unroll and t[][] stays in registers -- 5-15% per Winograd layer; GCC then
   fuses some transform products into FMAs, so the values move by a rounding. */
static inline __attribute__((always_inline)) void wg_in_rows(const dk_wg *d, int64_t lo, int64_t hi, const int m) {
    const int64_t C = d->C, H = d->H, W = d->W, T = d->T;
    const int a = m + 2;
    const v8 zero = splat(0.0f);
    for (int64_t r = lo; r < hi; r++) {   /* r: the chunk's tile row; row: n * TH + tile row */
        const int64_t row = d->row0 + r, n = row / d->TH, ty = row % d->TH;
        const float *xn = d->x + n * d->sn;
        const int64_t iy0 = ty * m - d->pad;
        for (int64_t tx = 0; tx < d->TW; tx++) {
            const int64_t ix0 = tx * m - d->pad, tile = r * d->TW + tx;
            const int inside = iy0 >= 0 && ix0 >= 0 && iy0 + a <= H && ix0 + a <= W;
            for (int64_t c0 = 0; c0 < C; c0 += 8) {
                v8 t[6][6], col[6], out[6];
                for (int j = 0; j < a; j++) {       /* column transform: t[.][j] = B^T d[.][j] */
                    const int64_t ix = ix0 + j;
                    for (int i = 0; i < a; i++) {
                        const int64_t iy = iy0 + i;
                        col[i] = (inside || (iy >= 0 && iy < H && ix >= 0 && ix < W))
                                     ? ld(xn + iy * d->sh + ix * d->sw + c0) : zero;
                    }
                    if (m == 4) wg_bt6(col, out); else wg_bt4(col, out);
                    for (int i = 0; i < a; i++) t[i][j] = out[i];
                }
                for (int i = 0; i < a; i++) {       /* row transform: V[i][.] = t[i][.] B */
                    if (m == 4) wg_bt6(t[i], out); else wg_bt4(t[i], out);
                    for (int j = 0; j < a; j++) st(d->v + ((int64_t)(i * a + j) * T + tile) * C + c0, out[j]);
                }
            }
        }
    }
}

static void wg_in_part(void *ctx, int64_t lo, int64_t hi) {
    const dk_wg *d = (const dk_wg *)ctx;
    if (d->m == 4) wg_in_rows(d, lo, hi, 4); else wg_in_rows(d, lo, hi, 2);
}

static inline __attribute__((always_inline)) void wg_out_rows(const dk_wg *d, int64_t lo, int64_t hi, const int m) {
    const int64_t K = d->C, H = d->H, W = d->W, T = d->T;   /* here C is the output channel count */
    const int a = m + 2;
    for (int64_t r = lo; r < hi; r++) {
        const int64_t row = d->row0 + r, n = row / d->TH, ty = row % d->TH;
        float *yn = d->y + n * H * W * K;
        for (int64_t tx = 0; tx < d->TW; tx++) {
            const int64_t tile = r * d->TW + tx;
            for (int64_t k0 = 0; k0 < K; k0 += 8) {
                v8 t[6][4], in[6], out[4];
                for (int i = 0; i < a; i++) {       /* row transform: t[i][.] = M[i][.] A */
                    for (int j = 0; j < a; j++) in[j] = ld(d->v + ((int64_t)(i * a + j) * T + tile) * K + k0);
                    if (m == 4) wg_at6(in, out); else wg_at4(in, out);
                    for (int j = 0; j < m; j++) t[i][j] = out[j];
                }
                const v8 bias = ld(d->b + k0);
                const int act = d->act == 3 ? 0 : d->act;
                for (int j = 0; j < m; j++) {       /* column transform: y[.][j] = A^T t[.][j] */
                    const int64_t ox = tx * m + j;
                    for (int i = 0; i < a; i++) in[i] = t[i][j];
                    if (m == 4) wg_at6(in, out); else wg_at4(in, out);
                    if (ox >= W) continue;
                    for (int i = 0; i < m; i++) {
                        const int64_t oy = ty * m + i;
                        if (oy >= H) continue;
                        const int64_t at = (n * H * W + oy * W + ox) * K + k0;
                        v8 o = vact(out[i] + bias, act);
                        if (d->r && d->act != 3) o += ld(d->r + at);
                        st(d->y + at, o);
                    }
                }
            }
            if (d->act == 3) {   /* mish, on each tile row while it is in cache (the same mish1 as the mish pass) */
                const int64_t ox0 = tx * m, width = W - ox0 < m ? W - ox0 : m;
                for (int i = 0; i < m && ty * m + i < H; i++) {
                    const int64_t at = ((ty * m + i) * W + ox0) * K;
                    float *p = yn + at;
                    mish_f32(p, p, width * K);
                    if (d->r)   /* (K % 8 == 0) */
                        for (int64_t e = 0; e < width * K; e += 8) st(p + e, ld(p + e) + ld(d->r + n * H * W * K + at + e));
                }
            }
        }
    }
}

static void wg_out_part(void *ctx, int64_t lo, int64_t hi) {
    const dk_wg *d = (const dk_wg *)ctx;
    if (d->m == 4) wg_out_rows(d, lo, hi, 4); else wg_out_rows(d, lo, hi, 2);
}

/* g: N, H, W, C, TH, TW, m, pad, threads (<= 0: torch's), row0, rows, sn, sh, sw: the tile rows
   [row0, row0 + rows) of the N * TH in the batch, of an x whose channels are contiguous and whose
   images, rows and pixels are sn, sh, sw floats apart (an NHWC tensor or a channel slice of one).
   v: [a*a][rows*TW][C] */
void darkcfg_wino_in_nhwc(const float *x, float *v, const int64_t *g) {
    dk_wg d = {x, v, 0, 0, g[1], g[2], g[3], g[4], g[5], g[10] * g[5], g[9], g[11], g[12], g[13],
               (int)g[6], (int)g[7], 0};
    dk_split(wg_in_part, &d, g[10], 1, (int)g[8], d.T * (g[6] + 2) * (g[6] + 2) * g[3]);
}

/* g: N, H, W, K, TH, TW, m, act (0 linear, 1 leaky, 2 relu, 3 mish), threads (<= 0: torch's), row0, rows.
   mm: [a*a][rows*TW][K] -> y NHWC; r (NULL: none): an NHWC residual added after the activation (a
   linear [shortcut] after the conv: Darknet's act(conv) + from, the same float add). */
void darkcfg_wino_out_nhwc(const float *mm, const float *b, const float *r, float *y, const int64_t *g) {
    dk_wg d = {0, (float *)mm, b, y, g[1], g[2], g[3], g[4], g[5], g[10] * g[5], g[9], 0, 0, 0, (int)g[6], 0,
               (int)g[7], r};
    dk_split(wg_out_part, &d, g[10], 1, (int)g[8], d.T * (g[6] + 2) * (g[6] + 2) * g[3]);
}

/* The Winograd filter transform U = G w G^T for every (k, c) pair, in float64, rounded once:
   w [K][C][3][3] -> u [a*a][C][K] (the GEMMs' layout); g: G, a x 3, float64 row-major.
   Why C: torch's einsum spent ~0.4 s per 4.7M-weight layer (yolov4: 1.5 s on the first frame). */
typedef struct { const float *w; float *u; const double *g; int64_t K, C; int a, packed; } dk_wt;

typedef double v4d __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef float v4fu __attribute__((vector_size(16), aligned(4)));
static inline v4d splat4d(double f) { return (v4d){f, f, f, f}; }

/* Four filters k..k+3 (k % 4 == 0) at a time, one per float64 lane: the same products in the same
   order as the one-filter loop below, so the same values (a scalar loop ran yolov4's 36 layers in
   0.6 s, most of its first frame's extra time).  Their outputs are adjacent in both layouts (k
   and k+3 share a 16- or 8-wide strip of the packed one): one 4-float store per position. */
static inline void wino_weights_four(const dk_wt *d, int64_t c, int64_t k, const int a) {
    const int64_t K = d->K, C = d->C, plane = C * K, K16 = K / 16 * 16;
    const double *g = d->g;
    v4d f[9], t[6][3];
    for (int j = 0; j < 9; j++)
        for (int q = 0; q < 4; q++) f[j][q] = d->w[((k + q) * C + c) * 9 + j];
    for (int i = 0; i < a; i++)
        for (int l = 0; l < 3; l++)
            t[i][l] = splat4d(g[i * 3]) * f[l] + splat4d(g[i * 3 + 1]) * f[3 + l] + splat4d(g[i * 3 + 2]) * f[6 + l];
    float *out = d->u + (!d->packed ? c * K + k : k < K16 ? (k / 16) * 16 * C + c * 16 + k % 16
                                                          : K16 * C + c * 8 + (k - K16));
    for (int i = 0; i < a; i++)
        for (int m = 0; m < a; m++) {
            v4d v = t[i][0] * splat4d(g[m * 3]) + t[i][1] * splat4d(g[m * 3 + 1]) + t[i][2] * splat4d(g[m * 3 + 2]);
            *(v4fu *)(out + (i * a + m) * plane) = __builtin_convertvector(v, v4f);
        }
}

/* Parts are blocks of 16 filters (the packed layout's strips), each walked over every channel c:
   per plane the stores then run on through memory, and each filter is read front to back.  (By
   channel with all filters inside, every store of a (k, c) pair landed on another page: 36 planes
   x K/16 strips; yolov4's 4.7M-weight layers took 42 ms each, its first frame 285 ms in all.) */
static void wino_weights_part(void *ctx, int64_t lo, int64_t hi) {
    const dk_wt *d = (const dk_wt *)ctx;
    const int a = d->a;
    const int64_t K = d->K, C = d->C, plane = C * K;
    for (int64_t kb = lo; kb < hi; kb++)
    for (int64_t c = 0; c < C; c++)
        for (int64_t k = kb * 16, k_end = k + 16 < K ? k + 16 : K; k < k_end; k++) {
            if (k % 4 == 0 && k + 4 <= k_end) {
                if (a == 6) wino_weights_four(d, c, k, 6); else wino_weights_four(d, c, k, a);
                k += 3;
                continue;
            }
            const float *f = d->w + (k * C + c) * 9;
            double t[6][3];
            for (int i = 0; i < a; i++)
                for (int l = 0; l < 3; l++)
                    t[i][l] = d->g[i * 3] * f[l] + d->g[i * 3 + 1] * f[3 + l] + d->g[i * 3 + 2] * f[6 + l];
            /* packed: darkcfg_bgemm_packed's strips ([C][16] blocks, then [C][8]) straight away */
            const int64_t K16 = K / 16 * 16;
            float *out = d->u + (!d->packed ? c * K + k : k < K16 ? (k / 16) * 16 * C + c * 16 + k % 16
                                                                  : K16 * C + c * 8 + (k - K16));
            for (int i = 0; i < a; i++)
                for (int m = 0; m < a; m++)
                    out[(i * a + m) * plane] = (float)(t[i][0] * d->g[m * 3] + t[i][1] * d->g[m * 3 + 1] + t[i][2] * d->g[m * 3 + 2]);
        }
}

void darkcfg_wino_weights(const float *w, float *u, const double *g, int64_t K, int64_t C, int a, int threads,
                          int packed) {
    dk_wt d = {w, u, g, K, C, a, packed};
    dk_split(wino_weights_part, &d, (K + 15) / 16, 1, threads, K * C * a * a);
}

/* ---------------------------------------------------------------------------------------------
 * [route] on NHWC maps: each output pixel is its parts' channel runs one after another.  Why:
 * torch.cat along the channels of channels-last tensors ran at a quarter of copy speed (64+64
 * channels @104x104: 0.70 ms vs 0.18 ms for a flat copy of the same bytes).  A part is any view
 * whose pixels lie at a fixed stride (a channel slice of an NHWC map: Darknet's groups/group_id).
 * g: P, pixels, Ct (output channels), threads, then per part: channels, pixel stride (floats).
 * ------------------------------------------------------------------------------------------- */
typedef struct { const int64_t *src; float *y; const int64_t *g; } dk_cat;

static inline void copy_run(const float *s, float *y, int64_t c) {
    int64_t i = 0;
    for (; i + 8 <= c; i += 8) st(y + i, ld(s + i));
    for (; i < c; i++) y[i] = s[i];
}

static void cat_part(void *ctx, int64_t lo, int64_t hi) {
    const dk_cat *d = (const dk_cat *)ctx;
    const int64_t P = d->g[0], Ct = d->g[2];
    for (int64_t p = lo; p < hi; p++) {
        float *y = d->y + p * Ct;
        for (int64_t i = 0; i < P; i++) {
            const int64_t c = d->g[4 + 2 * i];
            copy_run((const float *)(intptr_t)d->src[i] + p * d->g[5 + 2 * i], y, c);
            y += c;
        }
    }
}

void darkcfg_concat_nhwc(const int64_t *src, float *y, const int64_t *g) {
    dk_cat d = {src, y, g};
    dk_split(cat_part, &d, g[1], 16, (int)g[3], g[1] * g[2]);
}

/* ---- The count of NaN/Inf float32 values in x[0, n) (all exponent bits set), in one pass with no
   allocation: the weights check of every load (numpy's isfinite().all() made a bool per value
   first: ~40 ms for yolov4's 246 MB). ---- */
typedef struct { const uint32_t *x; int64_t counts[64]; int64_t chunk; } dk_fin;

static void finite_part(void *ctx, int64_t lo, int64_t hi) {
    dk_fin *d = (dk_fin *)ctx;
    int64_t bad = 0;
    for (int64_t i = lo; i < hi; i++) bad += (d->x[i] & 0x7f800000u) == 0x7f800000u;
    d->counts[lo / d->chunk] = bad;
}

int64_t darkcfg_nonfinite(const float *x, int64_t n, int threads) {
    dk_fin d;
    memset(&d, 0, sizeof d);
    d.x = (const uint32_t *)x;
    int t = threads > 0 ? threads : 1;
#ifdef _OPENMP
    if (threads <= 0) t = omp_get_max_threads();
#endif
    if (t > 64) t = 64;
    d.chunk = ((n + t - 1) / t + 63) / 64 * 64;   /* dk_split's ranges: multiples of this one */
    if (d.chunk < 1) d.chunk = 1;
    dk_split(finite_part, &d, n, d.chunk, t, n);
    int64_t bad = 0;
    for (int i = 0; i < 64; i++) bad += d.counts[i];
    return bad;
}

/* ---- Darknet's resize_image (image.c) of an H x W x C uint8 image -- bilinear with aligned corners,
   along x then along y, in float32, each byte as byte/255 -- evaluated at the given output columns
   and rows (their source index, next index, fraction and flags come from darkcfg/image.py, which
   computes them as Darknet does), written as C planes of rows x columns (strides given, so a
   letterbox canvas or a crop can be filled in place).  Why: numpy's gathers and whole-array passes
   took 3.3 ms for a 768x576 photo at 320x240; the same float32 operations here take a fraction.
   Bit-identical to image.py's numpy path (tested): every product and sum is rounded to float32
   on its own, so the compiler must not fuse them into FMAs (fp-contract off below). */
typedef struct {
    const uint8_t *src; int64_t H, W, C;
    const int64_t *ix, *ix1; const float *dx; const uint8_t *lastcol; int64_t ncols;
    const int64_t *iy, *iy1; const float *dy; const uint8_t *add;
    float *out; int64_t plane, row;
} dk_resize;

#if defined(__clang__)
#define DK_NO_CONTRACT
#elif defined(__GNUC__)
#define DK_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define DK_NO_CONTRACT
#endif

/* pass 1 (along x) of source row y at every output column: ncols x C floats */
DK_NO_CONTRACT static void resize_x(const dk_resize *d, int64_t y, float *t) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    const int64_t C = d->C;
    const uint8_t *row = d->src + y * d->W * C, *last = row + (d->W - 1) * C;
    for (int64_t c = 0; c < d->ncols; c++) {
        float *o = t + c * C;
        if (d->lastcol[c]) {
            for (int64_t k = 0; k < C; k++) o[k] = (float)last[k] / 255.0f;
            continue;
        }
        const uint8_t *a = row + d->ix[c] * C, *b = row + d->ix1[c] * C;
        const float f = d->dx[c], g = 1.0f - f;
        for (int64_t k = 0; k < C; k++) {
            float p = g * ((float)a[k] / 255.0f);
            float q = f * ((float)b[k] / 255.0f);
            o[k] = p + q;
        }
    }
}

/* pass 2 (along y) for output rows [lo, hi); each thread keeps the last two pass-1 rows it made */
DK_NO_CONTRACT static void resize_part(void *ctx, int64_t lo, int64_t hi) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    const dk_resize *d = (const dk_resize *)ctx;
    const int64_t n = d->ncols * d->C, C = d->C;
    float *buf = (float *)malloc((size_t)(2 * n) * sizeof(float));
    if (!buf) return;
    float *rows[2] = {buf, buf + n};
    int64_t have[2] = {-1, -1};
    for (int64_t r = lo; r < hi; r++) {
        const float *t[2] = {0, 0};
        const int64_t need[2] = {d->iy[r], d->add[r] ? d->iy1[r] : -1};
        for (int s = 0; s < 1 + (d->add[r] != 0); s++) {
            int64_t y = need[s], other = need[1 - s];
            int slot = have[0] == y ? 0 : have[1] == y ? 1 : -1;
            if (slot < 0) {
                slot = have[0] == other ? 1 : 0;   /* never the slot holding the other row this output needs */
                resize_x(d, y, rows[slot]);
                have[slot] = y;
            }
            t[s] = rows[slot];
        }
        const float f = d->dy[r], g = 1.0f - f;
        float *o = d->out + r * d->row;
        for (int64_t c = 0; c < d->ncols; c++)
            for (int64_t k = 0; k < C; k++) {
                float v = g * t[0][c * C + k];
                if (d->add[r]) {
                    float w = f * t[1][c * C + k];
                    v = v + w;
                }
                o[k * d->plane + c] = v;
            }
    }
    free(buf);
}

/* g: H, W, C, ncols, nrows, plane stride, row stride (floats) of out */
void darkcfg_resize_u8(const uint8_t *src, const int64_t *ix, const int64_t *ix1, const float *dx,
                       const uint8_t *lastcol, const int64_t *iy, const int64_t *iy1, const float *dy,
                       const uint8_t *add, float *out, const int64_t *g, int threads) {
    dk_resize d = {src, g[0], g[1], g[2], ix, ix1, dx, lastcol, g[3], iy, iy1, dy, add, out, g[5], g[6]};
    dk_split(resize_part, &d, g[4], 1, threads, g[3] * g[4] * g[2] * 8);
}
