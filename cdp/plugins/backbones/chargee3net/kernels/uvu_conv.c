/* Fused channel-wise ("uvu") tensor-product convolution: CG contraction x radial weight x scatter.
 *
 * For every edge e (sorted by receiver) and every path p (sender irrep i, harmonic l_j, output l_k):
 *     acc[dst_e, p, m_k, u] += w[e, p, u] * sum_{m_i} A_p(e)[m_k, m_i] * x[src_e, i, m_i, u]
 *     A_p(e)[m_k, m_i]       = sum_{m_j} C_p[m_i, m_j, m_k] * Y[e, m_j]
 * with C_p the path-normalised Clebsch-Gordan coefficients, listed sparsely as (m_k, m_i) pairs and their
 * (m_j, c) terms.  No per-edge intermediate is written: one receiver row of `acc` stays in cache while
 * its edges stream through.  Compiled by cdp when a model is loaded (native.py); entry points per dtype.
 *
 * Radial weights come either as rows w[e, :] (cdp_uvu_conv_*) or from a piecewise-cubic table of the edge
 * length (cdp_uvu_conv_table_*, cdp_uvu_receivers_table_*; cdp.nn.radial_table.KnotTable): knots [n + 1, 2, W]
 * contiguous (value v and h·slope s at r_i = i·h), and per edge
 *     s = r_e * inv_h,  i = min(max(floor(s), 0), n - 1),  t = s - i,  u = 1 - t,
 *     w[e, c] = (1+2t)u² v[i,c] + t u² s[i,c] + t²(3-2t) v[i+1,c] + t²(t-1) s[i+1,c]   (cubic Hermite)
 * evaluated into a per-call (per-thread) row buffer just before the edge is used: no [E, W] array exists.
 * For the table entries a path's w_off (path_info[3]) is a column of the table (the radial network's output
 * order), not of a packed w row.
 *
 * Layout: x rows hold each sender irrep as [m_i][mul rounded up to CDP_UVU_PAD_WIDTH, zero padded]; w rows
 * and acc rows carry CDP_UVU_SLACK columns of slack after their last column.
 * path_info, 8 int32 per path: mul, d_k, x_off, w_off, acc_off, row stride (m_k to m_k + 1), first pair,
 *            end pair
 * pair_info, 4 int32 per pair: m_k, m_i * padded mul, first term, end term   (pairs of a path sorted by m_k)
 *
 * Vector paths (float32), chosen at compile time from the target flags; -DCDP_PLAIN forces plain C:
 *   AVX-512F: 16-lane vectors over each path's padded mul (an 8-lane one for an odd number of 8s: no lane
 *             is wasted beyond the padding), four edges x up to four vectors in flight;
 *   AVX2+FMA: 8-lane whole vectors (lanes past mul read zero padding of x, so they add exact zeros);
 *   NEON:     as AVX2 with two 4-lane vectors per 8 channels.
 * Backward (float32): AVX-512 (16 lanes, an 8-lane tail) and AVX2; plain C for NEON builds and float64.
 * float64 is plain C everywhere.  The constants below are exported (cdp_uvu_*) and read by native.py.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CDP_UVU_ABI_VERSION 6
#define CDP_UVU_PAD_WIDTH 8    /* sender rows: mul rounded up to a multiple of this, zero padded */
#define CDP_UVU_SLACK 8        /* columns after each w row and acc row that a vector path may touch */
#define CDP_MAX_MUL 1024       /* largest mul of a path (the plain path's per-path channel buffer) */

#if !defined(CDP_PLAIN) && defined(__AVX512F__) && defined(__FMA__)
#define CDP_AVX512 1
#include <immintrin.h>
#elif !defined(CDP_PLAIN) && defined(__AVX2__) && defined(__FMA__)
#define CDP_AVX2 1
#include <immintrin.h>
#elif !defined(CDP_PLAIN) && (defined(__ARM_NEON) || defined(__ARM_NEON__)) && defined(__aarch64__)
#define CDP_NEON 1
#include <arm_neon.h>
#endif
/* the AVX2 backward kernel serves the AVX-512 build too, with 16-lane vectors where they fit */
#if defined(CDP_AVX512) || defined(CDP_AVX2)
#define CDP_AVX2_BACKWARD 1
#endif

int cdp_uvu_abi_version(void) { return CDP_UVU_ABI_VERSION; }
int cdp_uvu_acc_slack(void) { return CDP_UVU_SLACK; }
int cdp_uvu_pad_width(void) { return CDP_UVU_PAD_WIDTH; }
int cdp_uvu_max_mul(void) { return CDP_MAX_MUL; }

/* which vector path this build compiled: 0 plain C, 1 AVX2, 2 AVX-512, 3 NEON */
int cdp_uvu_vector_path(void)
{
#if defined(CDP_AVX512)
    return 2;
#elif defined(CDP_AVX2)
    return 1;
#elif defined(CDP_NEON)
    return 3;
#else
    return 0;
#endif
}

/* interval of length r: i = min(max(floor(r * inv_h), 0), n - 1) and t = r * inv_h - i (no libm: s >= 0
 * there, so truncation is floor; NaN r gives i = 0 and a NaN t) */
#define CDP_TABLE_INTERVAL(T, r, inv_h, n, i, t)                                                            \
    do {                                                                                                    \
        const T s_ = (r) * (inv_h);                                                                         \
        int64_t i_ = 0;                                                                                     \
        if (s_ > 0) i_ = s_ >= (T)(n) ? (n) - 1 : (int64_t)s_;                                              \
        if (i_ > (n) - 1) i_ = (n) - 1;                                                                     \
        (i) = i_;                                                                                           \
        (t) = s_ - (T)i_;                                                                                   \
    } while (0)

/* table columns every path reads (w_off + mul) fit in a table row of n_cols columns */
static int cdp_table_fits(int64_t n_paths, const int32_t *path_info, int64_t n_cols)
{
    for (int64_t p = 0; p < n_paths; ++p)
        if (path_info[8 * p + 3] < 0 || (int64_t)path_info[8 * p + 3] + path_info[8 * p] > n_cols) return 0;
    return 1;
}

/* One edge, every path (plain C, shared by the edge-major and receiver-major entries): acc rows at
 * row + acc_off of each path (path_acc NULL: one channels-last row) or at CDP_PATH_ROW(row, path_acc, p, rr);
 * tmp holds CDP_MAX_MUL values. */
#define CDP_EDGE_PLAIN(SUFFIX, T)                                                                            \
static void cdp_edge_plain_##SUFFIX(const T *restrict xe, const T *restrict ye, const T *restrict we,      \
         T *restrict row, const int64_t *restrict path_acc, int64_t rr, int64_t n_paths,                   \
         const int32_t *restrict path_info, const int32_t *restrict pair_info,                             \
         const int32_t *restrict term_mj, const T *restrict term_c, T *restrict tmp)                       \
{                                                                                                         \
    for (int64_t p = 0; p < n_paths; ++p) {                                                               \
        const int32_t *pi = path_info + 8 * p;                                                            \
        const int mul = pi[0], d_k = pi[1];                                                               \
        const T *xp = xe + pi[2], *wp = we + pi[3];                                                       \
        T *ap = path_acc ? row + path_acc[2 * p] + rr * path_acc[2 * p + 1] : row + pi[4];                 \
        int q = pi[6];                                                                                    \
        for (int mk = 0; mk < d_k; ++mk) {                                                                \
            int first = 1;                                                                                \
            for (; q < pi[7] && pair_info[4 * q] == mk; ++q) {                                            \
                const int32_t *qi = pair_info + 4 * q;                                                    \
                T s = 0;                                                                                  \
                for (int t = qi[2]; t < qi[3]; ++t) s += term_c[t] * ye[term_mj[t]];                      \
                const T *xr = xp + qi[1];                                                                 \
                if (first) {                                                                              \
                    for (int u = 0; u < mul; ++u) tmp[u] = s * xr[u];                                     \
                    first = 0;                                                                            \
                } else {                                                                                  \
                    for (int u = 0; u < mul; ++u) tmp[u] += s * xr[u];                                    \
                }                                                                                         \
            }                                                                                             \
            if (!first) {                                                                                 \
                T *ar = ap + (int64_t)mk * pi[5];                                                         \
                for (int u = 0; u < mul; ++u) ar[u] += wp[u] * tmp[u];                                    \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
}

CDP_EDGE_PLAIN(f64, double)
CDP_EDGE_PLAIN(f32, float)

/* -- plain C (float64 everywhere; float32 without a vector path) ------------------------------------- */
#define CDP_UVU_PLAIN(SUFFIX, T)                                                                             \
static void cdp_table_row_##SUFFIX(const T *restrict coef, int64_t n, T inv_h, int64_t n_cols, T r,         \
                                   T *restrict out)                                                         \
{                                                                                                         \
    int64_t i;                                                                                            \
    T t;                                                                                                  \
    CDP_TABLE_INTERVAL(T, r, inv_h, n, i, t);                                                             \
    const T *v0 = coef + i * 2 * n_cols, *s0 = v0 + n_cols, *v1 = s0 + n_cols, *s1 = v1 + n_cols;         \
    const T u = 1 - t, a0 = (1 + 2 * t) * u * u, b0 = t * u * u, a1 = t * t * (3 - 2 * t), b1 = t * t * (t - 1); \
    for (int64_t c = 0; c < n_cols; ++c) out[c] = a0 * v0[c] + b0 * s0[c] + a1 * v1[c] + b1 * s1[c];   \
}                                                                                                         \
                                                                                                          \
static int cdp_forward_plain_##SUFFIX(int64_t e0, int64_t e1, const int64_t *restrict src,                \
         const int64_t *restrict dst, const T *restrict y, int64_t y_stride, const T *restrict w,          \
         int64_t w_stride, const T *restrict r, const T *restrict coef, int64_t n_int, T inv_h,            \
         int64_t n_cols, const T *restrict x, int64_t x_stride, T *restrict acc, int64_t acc_stride,       \
         int64_t n_paths, const int32_t *restrict path_info, const int32_t *restrict pair_info,            \
         const int32_t *restrict term_mj, const T *restrict term_c)                                        \
{                                                                                                         \
    T tmp[CDP_MAX_MUL];                                                                                   \
    for (int64_t p = 0; p < n_paths; ++p)                                                                 \
        if (path_info[8 * p] > CDP_MAX_MUL) return 1;                                                     \
    if (coef && !cdp_table_fits(n_paths, path_info, n_cols)) return 3;                                    \
    if (e1 <= e0) return 0;                                                                               \
    T *wbuf = NULL;                                                                                       \
    if (coef && !(wbuf = (T *)malloc(sizeof(T) * (size_t)(n_cols + 1)))) return 2;                        \
    for (int64_t e = e0; e < e1; ++e) {                                                                   \
        const T *ye = y + e * y_stride;                                                                   \
        const T *we;                                                                                      \
        if (coef) {                                                                                       \
            cdp_table_row_##SUFFIX(coef, n_int, inv_h, n_cols, r[e], wbuf);                               \
            we = wbuf;                                                                                    \
        } else {                                                                                          \
            we = w + e * w_stride;                                                                        \
        }                                                                                                 \
        cdp_edge_plain_##SUFFIX(x + src[e] * x_stride, ye, we, acc + dst[e] * acc_stride, NULL, 0, n_paths,       \
                                path_info, pair_info, term_mj, term_c, tmp);                                  \
    }                                                                                                     \
    free(wbuf);                                                                                           \
    return 0;                                                                                             \
}

CDP_UVU_PLAIN(f64, double)

#if defined(CDP_AVX512) || defined(CDP_AVX2) || defined(CDP_NEON)
/* -- float32 vector paths: groups of up to four consecutive edges of one receiver ---------------------- */

/* one table row (float32) into out[0 .. n_cols) */
static void cdp_table_row_f32(const float *restrict coef, int64_t n, float inv_h, int64_t n_cols, float r,
                              float *restrict out)
{
    int64_t i;
    float t;
    CDP_TABLE_INTERVAL(float, r, inv_h, n, i, t);
    /* knots [n + 1, 2, W]: value and h·slope at r_i, then at r_{i+1}: four consecutive rows */
    const float *v0 = coef + i * 2 * n_cols, *s0 = v0 + n_cols, *v1 = s0 + n_cols, *s1 = v1 + n_cols;
    const float u = 1.f - t, a0 = (1.f + 2.f * t) * u * u, b0 = t * u * u, a1 = t * t * (3.f - 2.f * t), b1 = t * t * (t - 1.f);
    int64_t c = 0;
#if defined(CDP_AVX512)
    const __m512 va0 = _mm512_set1_ps(a0), vb0 = _mm512_set1_ps(b0), va1 = _mm512_set1_ps(a1), vb1 = _mm512_set1_ps(b1);
    for (; c < n_cols; c += 16) {
        const int64_t left = n_cols - c;
        const __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        __m512 v = _mm512_mul_ps(va0, _mm512_maskz_loadu_ps(m, v0 + c));
        v = _mm512_fmadd_ps(vb0, _mm512_maskz_loadu_ps(m, s0 + c), v);
        v = _mm512_fmadd_ps(va1, _mm512_maskz_loadu_ps(m, v1 + c), v);
        _mm512_mask_storeu_ps(out + c, m, _mm512_fmadd_ps(vb1, _mm512_maskz_loadu_ps(m, s1 + c), v));
    }
#elif defined(CDP_AVX2)
    const __m256 va0 = _mm256_set1_ps(a0), vb0 = _mm256_set1_ps(b0), va1 = _mm256_set1_ps(a1), vb1 = _mm256_set1_ps(b1);
    for (; c + 8 <= n_cols; c += 8) {
        __m256 v = _mm256_mul_ps(va0, _mm256_loadu_ps(v0 + c));
        v = _mm256_fmadd_ps(vb0, _mm256_loadu_ps(s0 + c), v);
        v = _mm256_fmadd_ps(va1, _mm256_loadu_ps(v1 + c), v);
        _mm256_storeu_ps(out + c, _mm256_fmadd_ps(vb1, _mm256_loadu_ps(s1 + c), v));
    }
#elif defined(CDP_NEON)
    for (; c + 4 <= n_cols; c += 4) {
        float32x4_t v = vmulq_n_f32(vld1q_f32(v0 + c), a0);
        v = vfmaq_n_f32(v, vld1q_f32(s0 + c), b0);
        v = vfmaq_n_f32(v, vld1q_f32(v1 + c), a1);
        vst1q_f32(out + c, vfmaq_n_f32(v, vld1q_f32(s1 + c), b1));
    }
#endif
    for (; c < n_cols; ++c) out[c] = a0 * v0[c] + b0 * s0[c] + a1 * v1[c] + b1 * s1[c];
}

/* A is computed for CDP_GROUPS groups of four edge slots at once (one vector of CDP_LANES lanes per pair;
 * empty slots have zero harmonics, so zero A): a[CDP_LANES * q + 4 * group + slot] */
#if defined(CDP_AVX512)
#define CDP_GROUPS 4
#elif defined(CDP_AVX2)
#define CDP_GROUPS 2
#else
#define CDP_GROUPS 1
#endif
#define CDP_LANES (4 * CDP_GROUPS)

static inline void cdp_group_a(int64_t n_pairs, const int32_t *restrict pair_info, const int32_t *restrict term_mj,
                               const float *restrict term_c, const float *restrict yt, float *restrict a)
{
    for (int64_t q = 0; q < n_pairs; ++q) {
        const int32_t *qi = pair_info + 4 * q;
#if defined(CDP_AVX512)
        __m512 s = _mm512_setzero_ps();
        for (int t = qi[2]; t < qi[3]; ++t)
            s = _mm512_fmadd_ps(_mm512_set1_ps(term_c[t]), _mm512_loadu_ps(yt + CDP_LANES * term_mj[t]), s);
        _mm512_storeu_ps(a + CDP_LANES * q, s);
#elif defined(CDP_AVX2)
        __m256 s = _mm256_setzero_ps();
        for (int t = qi[2]; t < qi[3]; ++t)
            s = _mm256_fmadd_ps(_mm256_set1_ps(term_c[t]), _mm256_loadu_ps(yt + CDP_LANES * term_mj[t]), s);
        _mm256_storeu_ps(a + CDP_LANES * q, s);
#else
        float32x4_t s = vdupq_n_f32(0.f);
        for (int t = qi[2]; t < qi[3]; ++t) s = vfmaq_n_f32(s, vld1q_f32(yt + CDP_LANES * term_mj[t]), term_c[t]);
        vst1q_f32(a + CDP_LANES * q, s);
#endif
    }
}

#if defined(CDP_AVX512)
/* K (1, 2 or 4) 16-lane vectors of channels [off, off + 16K) of one output row, four edges; every lane is
 * below the path's padded mul (x zero padded there: those lanes add exact zeros) */
static inline __attribute__((always_inline)) void
cdp_rows512(const int K, const int off, const float *const xs[4], const float *const ws[4],
            const float *restrict a, const int32_t *restrict pair_info, const int q0, const int q1,
            float *restrict ar)
{
    __m512 t0[4], t1[4], t2[4], t3[4];
    for (int k = 0; k < K; ++k) t0[k] = t1[k] = t2[k] = t3[k] = _mm512_setzero_ps();
    for (int q = q0; q < q1; ++q) {
        const int xo = pair_info[4 * q + 1] + off;
        const float *aq = a + CDP_LANES * q;
        const __m512 c0 = _mm512_set1_ps(aq[0]), c1 = _mm512_set1_ps(aq[1]);
        const __m512 c2 = _mm512_set1_ps(aq[2]), c3 = _mm512_set1_ps(aq[3]);
        for (int k = 0; k < K; ++k) {
            t0[k] = _mm512_fmadd_ps(c0, _mm512_loadu_ps(xs[0] + xo + 16 * k), t0[k]);
            t1[k] = _mm512_fmadd_ps(c1, _mm512_loadu_ps(xs[1] + xo + 16 * k), t1[k]);
            t2[k] = _mm512_fmadd_ps(c2, _mm512_loadu_ps(xs[2] + xo + 16 * k), t2[k]);
            t3[k] = _mm512_fmadd_ps(c3, _mm512_loadu_ps(xs[3] + xo + 16 * k), t3[k]);
        }
    }
    for (int k = 0; k < K; ++k) {
        const int o = off + 16 * k;
        __m512 r = _mm512_mul_ps(_mm512_loadu_ps(ws[0] + o), t0[k]);
        __m512 s = _mm512_mul_ps(_mm512_loadu_ps(ws[2] + o), t2[k]);
        r = _mm512_fmadd_ps(_mm512_loadu_ps(ws[1] + o), t1[k], r);
        s = _mm512_fmadd_ps(_mm512_loadu_ps(ws[3] + o), t3[k], s);
        _mm512_storeu_ps(ar + o, _mm512_add_ps(_mm512_loadu_ps(ar + o), _mm512_add_ps(r, s)));
    }
}

/* the last 8 channels of a padded row when padded mul is an odd number of 8-lane vectors */
static inline void cdp_rows256(const int off, const float *const xs[4], const float *const ws[4],
                               const float *restrict a, const int32_t *restrict pair_info, const int q0,
                               const int q1, float *restrict ar)
{
    __m256 t0 = _mm256_setzero_ps(), t1 = t0, t2 = t0, t3 = t0;
    for (int q = q0; q < q1; ++q) {
        const int xo = pair_info[4 * q + 1] + off;
        const float *aq = a + CDP_LANES * q;
        t0 = _mm256_fmadd_ps(_mm256_broadcast_ss(aq + 0), _mm256_loadu_ps(xs[0] + xo), t0);
        t1 = _mm256_fmadd_ps(_mm256_broadcast_ss(aq + 1), _mm256_loadu_ps(xs[1] + xo), t1);
        t2 = _mm256_fmadd_ps(_mm256_broadcast_ss(aq + 2), _mm256_loadu_ps(xs[2] + xo), t2);
        t3 = _mm256_fmadd_ps(_mm256_broadcast_ss(aq + 3), _mm256_loadu_ps(xs[3] + xo), t3);
    }
    __m256 r = _mm256_mul_ps(_mm256_loadu_ps(ws[0] + off), t0);
    __m256 s = _mm256_mul_ps(_mm256_loadu_ps(ws[2] + off), t2);
    r = _mm256_fmadd_ps(_mm256_loadu_ps(ws[1] + off), t1, r);
    s = _mm256_fmadd_ps(_mm256_loadu_ps(ws[3] + off), t3, s);
    _mm256_storeu_ps(ar + off, _mm256_add_ps(_mm256_loadu_ps(ar + off), _mm256_add_ps(r, s)));
}
#endif

/* all paths of one group of four edges (missing edges read the zero row) */
static inline void cdp_group_paths(int64_t n_paths, const int32_t *restrict path_info, const int32_t *restrict pair_info,
                                   const float *const xg[4], const float *const wg[4], const float *zero,
                                   const float *restrict a, float *restrict ae)
{
    for (int64_t p = 0; p < n_paths; ++p) {
        const int32_t *pi = path_info + 8 * p;
        const int mul = pi[0], d_k = pi[1];
        /* the zero row stands in for missing edges at every offset a real row is read at */
        const float *xs[4], *ws[4];
        for (int g = 0; g < 4; ++g) {
            xs[g] = xg[g] + (xg[g] == zero ? 0 : pi[2]);
            ws[g] = wg[g] + (wg[g] == zero ? 0 : pi[3]);
        }
        float *ap = ae + pi[4];
        int q0 = pi[6];
        const int q_end = pi[7];
        for (int mk = 0; mk < d_k && q0 < q_end; ++mk) {
            int q1 = q0;
            while (q1 < q_end && pair_info[4 * q1] == mk) ++q1;
            if (q1 == q0) continue;
            float *ar = ap + mk * pi[5];
#if defined(CDP_AVX512)
            /* whole 16-lane vectors over the padded mul, then one 8-lane vector when it is odd in 8s */
            const int n8 = (mul + CDP_UVU_PAD_WIDTH - 1) / CDP_UVU_PAD_WIDTH * (CDP_UVU_PAD_WIDTH / 8);
            const int n16 = n8 / 2;
            int v = 0;
            for (; v + 4 <= n16; v += 4) cdp_rows512(4, 16 * v, xs, ws, a, pair_info, q0, q1, ar);
            if (v + 2 <= n16) { cdp_rows512(2, 16 * v, xs, ws, a, pair_info, q0, q1, ar); v += 2; }
            if (v < n16) { cdp_rows512(1, 16 * v, xs, ws, a, pair_info, q0, q1, ar); ++v; }
            if (n8 & 1) cdp_rows256(16 * v, xs, ws, a, pair_info, q0, q1, ar);
#elif defined(CDP_AVX2)
            const float *x0 = xs[0], *x1 = xs[1], *x2 = xs[2], *x3 = xs[3];
            const float *w0 = ws[0], *w1 = ws[1], *w2 = ws[2], *w3 = ws[3];
            const int n_vec = (mul + 7) / 8;
            int v = 0;
            for (; v + 1 < n_vec; v += 2) {
                const int oa = 8 * v, ob = oa + 8;
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
                for (int q = q0; q < q1; ++q) {
                    const int xo = pair_info[4 * q + 1];
                    const float *aq = a + CDP_LANES * q;
                    __m256 c = _mm256_broadcast_ss(aq + 0);
                    a0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(x0 + xo + oa), a0);
                    b0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(x0 + xo + ob), b0);
                    c = _mm256_broadcast_ss(aq + 1);
                    a1 = _mm256_fmadd_ps(c, _mm256_loadu_ps(x1 + xo + oa), a1);
                    b1 = _mm256_fmadd_ps(c, _mm256_loadu_ps(x1 + xo + ob), b1);
                    c = _mm256_broadcast_ss(aq + 2);
                    a2 = _mm256_fmadd_ps(c, _mm256_loadu_ps(x2 + xo + oa), a2);
                    b2 = _mm256_fmadd_ps(c, _mm256_loadu_ps(x2 + xo + ob), b2);
                    c = _mm256_broadcast_ss(aq + 3);
                    a3 = _mm256_fmadd_ps(c, _mm256_loadu_ps(x3 + xo + oa), a3);
                    b3 = _mm256_fmadd_ps(c, _mm256_loadu_ps(x3 + xo + ob), b3);
                }
                __m256 ra = _mm256_mul_ps(_mm256_loadu_ps(w0 + oa), a0), rb = _mm256_mul_ps(_mm256_loadu_ps(w0 + ob), b0);
                __m256 sa = _mm256_mul_ps(_mm256_loadu_ps(w2 + oa), a2), sb = _mm256_mul_ps(_mm256_loadu_ps(w2 + ob), b2);
                ra = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + oa), a1, ra); rb = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + ob), b1, rb);
                sa = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + oa), a3, sa); sb = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + ob), b3, sb);
                _mm256_storeu_ps(ar + oa, _mm256_add_ps(_mm256_loadu_ps(ar + oa), _mm256_add_ps(ra, sa)));
                _mm256_storeu_ps(ar + ob, _mm256_add_ps(_mm256_loadu_ps(ar + ob), _mm256_add_ps(rb, sb)));
            }
            for (; v < n_vec; ++v) {
                const int off = 8 * v;
                __m256 t0 = _mm256_setzero_ps(), t1 = t0, t2 = t0, t3 = t0;
                for (int q = q0; q < q1; ++q) {
                    const int xo = pair_info[4 * q + 1] + off;
                    const float *aq = a + CDP_LANES * q;
                    t0 = _mm256_fmadd_ps(_mm256_broadcast_ss(aq + 0), _mm256_loadu_ps(x0 + xo), t0);
                    t1 = _mm256_fmadd_ps(_mm256_broadcast_ss(aq + 1), _mm256_loadu_ps(x1 + xo), t1);
                    t2 = _mm256_fmadd_ps(_mm256_broadcast_ss(aq + 2), _mm256_loadu_ps(x2 + xo), t2);
                    t3 = _mm256_fmadd_ps(_mm256_broadcast_ss(aq + 3), _mm256_loadu_ps(x3 + xo), t3);
                }
                __m256 r = _mm256_mul_ps(_mm256_loadu_ps(w0 + off), t0);
                __m256 s = _mm256_mul_ps(_mm256_loadu_ps(w2 + off), t2);
                r = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + off), t1, r);
                s = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + off), t3, s);
                /* channels past mul read zero-padded x, so those lanes add exact zeros to the neighbours */
                _mm256_storeu_ps(ar + off, _mm256_add_ps(_mm256_loadu_ps(ar + off), _mm256_add_ps(r, s)));
            }
#else /* NEON: 8 channels as two 4-lane vectors; lanes past mul read zero padding, as AVX2 */
            const int n_vec = (mul + 7) / 8;
            for (int v = 0; v < n_vec; ++v) {
                const int off = 8 * v;
                float32x4_t lo[4], hi[4];
                for (int g = 0; g < 4; ++g) lo[g] = hi[g] = vdupq_n_f32(0.f);
                for (int q = q0; q < q1; ++q) {
                    const int xo = pair_info[4 * q + 1] + off;
                    const float32x4_t aq = vld1q_f32(a + CDP_LANES * q);
                    lo[0] = vfmaq_laneq_f32(lo[0], vld1q_f32(xs[0] + xo), aq, 0);
                    hi[0] = vfmaq_laneq_f32(hi[0], vld1q_f32(xs[0] + xo + 4), aq, 0);
                    lo[1] = vfmaq_laneq_f32(lo[1], vld1q_f32(xs[1] + xo), aq, 1);
                    hi[1] = vfmaq_laneq_f32(hi[1], vld1q_f32(xs[1] + xo + 4), aq, 1);
                    lo[2] = vfmaq_laneq_f32(lo[2], vld1q_f32(xs[2] + xo), aq, 2);
                    hi[2] = vfmaq_laneq_f32(hi[2], vld1q_f32(xs[2] + xo + 4), aq, 2);
                    lo[3] = vfmaq_laneq_f32(lo[3], vld1q_f32(xs[3] + xo), aq, 3);
                    hi[3] = vfmaq_laneq_f32(hi[3], vld1q_f32(xs[3] + xo + 4), aq, 3);
                }
                float32x4_t rl = vmulq_f32(vld1q_f32(ws[0] + off), lo[0]);
                float32x4_t rh = vmulq_f32(vld1q_f32(ws[0] + off + 4), hi[0]);
                for (int g = 1; g < 4; ++g) {
                    rl = vfmaq_f32(rl, vld1q_f32(ws[g] + off), lo[g]);
                    rh = vfmaq_f32(rh, vld1q_f32(ws[g] + off + 4), hi[g]);
                }
                vst1q_f32(ar + off, vaddq_f32(vld1q_f32(ar + off), rl));
                vst1q_f32(ar + off + 4, vaddq_f32(vld1q_f32(ar + off + 4), rh));
            }
#endif
            q0 = q1;
        }
    }
}

static int cdp_forward_vec_f32(int64_t e0, int64_t e1, const int64_t *restrict src, const int64_t *restrict dst,
                               const float *restrict y, int64_t y_stride, const float *restrict w, int64_t w_stride,
                               const float *restrict r, const float *restrict coef, int64_t n_int, float inv_h,
                               int64_t n_cols, const float *restrict x, int64_t x_stride, float *restrict acc,
                               int64_t acc_stride, int64_t n_paths, const int32_t *restrict path_info,
                               const int32_t *restrict pair_info, const int32_t *restrict term_mj,
                               const float *restrict term_c)
{
    int64_t n_pairs = 0;
    for (int64_t p = 0; p < n_paths; ++p) {
        if (path_info[8 * p] > CDP_MAX_MUL) return 1;
        if (path_info[8 * p + 7] > n_pairs) n_pairs = path_info[8 * p + 7];
    }
    if (coef && !cdp_table_fits(n_paths, path_info, n_cols)) return 3;
    if (e1 <= e0) return 0;
    /* table rows: n_cols columns, then zeros up to a multiple of 16 plus slack (whole-vector tails) */
    const int64_t row_len = coef ? ((n_cols + 15) / 16) * 16 + 16 : 0;
    const int64_t w_len = coef ? row_len : w_stride;
    const int64_t zero_len = ((((x_stride > w_len ? x_stride : w_len) + 15) / 16) * 16) + 16;  /* any row offset + a vector */
    float *a = (float *)malloc(sizeof(float) * (size_t)(CDP_LANES * n_pairs + CDP_LANES));
    float *zero = (float *)calloc((size_t)zero_len, sizeof(float));
    float *yt = (float *)malloc(sizeof(float) * (size_t)(CDP_LANES * y_stride + CDP_LANES));
    float *wbuf = coef ? (float *)calloc((size_t)(4 * row_len), sizeof(float)) : NULL;
    if (!a || !zero || !yt || (coef && !wbuf)) { free(a); free(zero); free(yt); free(wbuf); return 2; }

    int64_t e = e0;
    while (e < e1) {
        /* up to CDP_GROUPS groups, each up to four consecutive edges of one receiver */
        int64_t g_start[CDP_GROUPS];
        int g_count[CDP_GROUPS], n_groups = 0;
        int64_t f = e;
        while (n_groups < CDP_GROUPS && f < e1) {
            int g_n = 1;
            while (g_n < 4 && f + g_n < e1 && dst[f + g_n] == dst[f]) ++g_n;
            g_start[n_groups] = f;
            g_count[n_groups++] = g_n;
            f += g_n;
        }
        for (int64_t j = 0; j < y_stride; ++j) {  /* harmonics, transposed: yt[j][4 * group + slot], 0 if empty */
            float *row = yt + CDP_LANES * j;
            for (int gi = 0; gi < CDP_GROUPS; ++gi)
                for (int g = 0; g < 4; ++g)
                    row[4 * gi + g] = gi < n_groups && g < g_count[gi] ? y[(g_start[gi] + g) * y_stride + j] : 0.f;
        }
        cdp_group_a(n_pairs, pair_info, term_mj, term_c, yt, a);
        for (int gi = 0; gi < n_groups; ++gi) {
            const int64_t eg = g_start[gi];
            const int g_n = g_count[gi];
            const float *xg[4], *wg[4];
            for (int g = 0; g < 4; ++g) {  /* missing edges read the zero row */
                xg[g] = g < g_n ? x + src[eg + g] * x_stride : zero;
                if (g >= g_n) {
                    wg[g] = zero;
                } else if (coef) {
                    cdp_table_row_f32(coef, n_int, inv_h, n_cols, r[eg + g], wbuf + g * row_len);
                    wg[g] = wbuf + g * row_len;
                } else {
                    wg[g] = w + (eg + g) * w_stride;
                }
            }
            cdp_group_paths(n_paths, path_info, pair_info, xg, wg, zero, a + 4 * gi, acc + dst[eg] * acc_stride);
        }
        e = f;
    }
    free(a);
    free(zero);
    free(yt);
    free(wbuf);
    return 0;
}
#define CDP_FORWARD_F32 cdp_forward_vec_f32
#else
CDP_UVU_PLAIN(f32, float)
#define CDP_FORWARD_F32 cdp_forward_plain_f32
#endif

/* -- entry points ---------------------------------------------------------------------------------- */
int cdp_uvu_conv_f32(int64_t e0, int64_t e1, const int64_t *restrict src, const int64_t *restrict dst,
                     const float *restrict y, int64_t y_stride, const float *restrict w, int64_t w_stride,
                     const float *restrict x, int64_t x_stride, float *restrict acc, int64_t acc_stride,
                     int64_t n_paths, const int32_t *restrict path_info, const int32_t *restrict pair_info,
                     const int32_t *restrict term_mj, const float *restrict term_c)
{
    return CDP_FORWARD_F32(e0, e1, src, dst, y, y_stride, w, w_stride, NULL, NULL, 0, 0.f, 0, x, x_stride,
                           acc, acc_stride, n_paths, path_info, pair_info, term_mj, term_c);
}

int cdp_uvu_conv_f64(int64_t e0, int64_t e1, const int64_t *restrict src, const int64_t *restrict dst,
                     const double *restrict y, int64_t y_stride, const double *restrict w, int64_t w_stride,
                     const double *restrict x, int64_t x_stride, double *restrict acc, int64_t acc_stride,
                     int64_t n_paths, const int32_t *restrict path_info, const int32_t *restrict pair_info,
                     const int32_t *restrict term_mj, const double *restrict term_c)
{
    return cdp_forward_plain_f64(e0, e1, src, dst, y, y_stride, w, w_stride, NULL, NULL, 0, 0.0, 0, x, x_stride,
                                 acc, acc_stride, n_paths, path_info, pair_info, term_mj, term_c);
}

/* Table entries: r [E] edge lengths, coef: knots [n_int + 1, 2, n_cols] contiguous, inv_h = n_int / r_max; a path's
 * w_off is its first column in the table.  Returns 3 when a path's columns do not fit in n_cols. */
int cdp_uvu_conv_table_f32(int64_t e0, int64_t e1, const int64_t *restrict src, const int64_t *restrict dst,
                           const float *restrict y, int64_t y_stride, const float *restrict r,
                           const float *restrict coef, int64_t n_int, double inv_h, int64_t n_cols,
                           const float *restrict x, int64_t x_stride, float *restrict acc, int64_t acc_stride,
                           int64_t n_paths, const int32_t *restrict path_info, const int32_t *restrict pair_info,
                           const int32_t *restrict term_mj, const float *restrict term_c)
{
    if (n_int < 1 || n_cols < 0) return 3;
    return CDP_FORWARD_F32(e0, e1, src, dst, y, y_stride, NULL, 0, r, coef, n_int, (float)inv_h, n_cols, x,
                           x_stride, acc, acc_stride, n_paths, path_info, pair_info, term_mj, term_c);
}

int cdp_uvu_conv_table_f64(int64_t e0, int64_t e1, const int64_t *restrict src, const int64_t *restrict dst,
                           const double *restrict y, int64_t y_stride, const double *restrict r,
                           const double *restrict coef, int64_t n_int, double inv_h, int64_t n_cols,
                           const double *restrict x, int64_t x_stride, double *restrict acc, int64_t acc_stride,
                           int64_t n_paths, const int32_t *restrict path_info, const int32_t *restrict pair_info,
                           const int32_t *restrict term_mj, const double *restrict term_c)
{
    if (n_int < 1 || n_cols < 0) return 3;
    return cdp_forward_plain_f64(e0, e1, src, dst, y, y_stride, NULL, 0, r, coef, n_int, inv_h, n_cols, x,
                                 x_stride, acc, acc_stride, n_paths, path_info, pair_info, term_mj, term_c);
}

/* -- receiver-major entries: every row of receivers [r0, r1) written whole, radial weights from the table --
 *
 *     cdp_uvu_receivers_table_{f32,f64}(r0, r1, ptr, src, y, y_stride, r, coef, n_int, inv_h, n_cols,
 *                                       x, x_stride, acc, path_acc, n_paths, paths, pairs, m_j, c)
 *
 * The same sum as cdp_uvu_conv_table_* over the edges [ptr[r0], ptr[r1]) (ptr [R + 1] int64: receiver rr
 * owns edges [ptr[rr], ptr[rr + 1]), edges sorted by receiver), with two differences:
 *   - where each path writes is given per path: path_acc [n_paths][2] int64 = (offset, receiver stride), so
 *     path p's channel u of row m_k of receiver rr is acc[offset + rr * stride + m_k * paths[p].row_stride
 *     + u] (the paths table's acc_off is not used).  The caller chooses the layout: channels-last rows
 *     (offset acc_off, stride the row width) or one contiguous [R][d][mul] block per output irrep;
 *   - acc need not be zeroed: every path's values of every receiver in [r0, r1) are written (zeros for a
 *     receiver without edges); nothing else is touched.
 *
 * AVX-512 / AVX2 (float32): per receiver, per chunk of up to CDP_CH of its edges, the radial weight rows are
 * evaluated from the table (a few long streams), then per path the chunk's coefficients A_p(e) are formed
 * densely [d_k][d_i][edge] (zeros where C has none), and for each vector of the path's channels the d_k
 * output rows stay in registers across the receiver's edges:
 *     t[m_k] = sum_{m_i} A_p(e)[m_k, m_i] x[src_e, m_i]      (d_i loads, d_k·d_i FMAs with broadcast A)
 *     acc[m_k] += w_e ∘ t[m_k]
 * (or x scaled by w_e first when d_k ≥ d_i), each row stored once per receiver, masked to the path's mul.
 * One function per (d_i, d_k), unrolled by the compiler, keeps every accumulator in a register; tiles
 * with few accumulators alternate two sets between consecutive edges to hide FMA latency.  Other builds
 * and float64: the same receiver-major order in plain C (channel loops left to the compiler). */
#define CDP_PATH_ROW(acc, path_acc, p, rr) ((acc) + (path_acc)[2 * (p)] + (rr) * (path_acc)[2 * (p) + 1])

#define CDP_RECEIVERS_PLAIN(SUFFIX, T)                                                                        \
static void cdp_zero_receiver_##SUFFIX(int64_t rr, T *restrict acc, const int64_t *restrict path_acc,         \
                                       int64_t n_paths, const int32_t *restrict path_info)                    \
{                                                                                                             \
    for (int64_t p = 0; p < n_paths; ++p) {                                                                   \
        const int32_t *pi = path_info + 8 * p;                                                                \
        T *row = CDP_PATH_ROW(acc, path_acc, p, rr);                                                          \
        for (int mk = 0; mk < pi[1]; ++mk) memset(row + (int64_t)mk * pi[5], 0, sizeof(T) * (size_t)pi[0]);  \
    }                                                                                                         \
}                                                                                                             \
                                                                                                              \
static int cdp_receivers_plain_##SUFFIX(int64_t r0, int64_t r1, const int64_t *restrict ptr,                  \
        const int64_t *restrict src, const T *restrict y, int64_t y_stride, const T *restrict r,              \
        const T *restrict coef, int64_t n_int, T inv_h, int64_t n_cols, const T *restrict x,                  \
        int64_t x_stride, T *restrict acc, const int64_t *restrict path_acc, int64_t n_paths,                 \
        const int32_t *restrict path_info, const int32_t *restrict pair_info,                                 \
        const int32_t *restrict term_mj, const T *restrict term_c)                                            \
{                                                                                                             \
    T tmp[CDP_MAX_MUL];                                                                                       \
    for (int64_t p = 0; p < n_paths; ++p)                                                                     \
        if (path_info[8 * p] > CDP_MAX_MUL) return 1;                                                         \
    if (!cdp_table_fits(n_paths, path_info, n_cols)) return 3;                                                \
    if (r1 <= r0) return 0;                                                                                   \
    T *wbuf = (T *)malloc(sizeof(T) * (size_t)(n_cols + 1));                                                  \
    if (!wbuf) return 2;                                                                                      \
    for (int64_t rr = r0; rr < r1; ++rr) {                                                                    \
        cdp_zero_receiver_##SUFFIX(rr, acc, path_acc, n_paths, path_info);                                    \
        for (int64_t e = ptr[rr]; e < ptr[rr + 1]; ++e) {                                                     \
            cdp_table_row_##SUFFIX(coef, n_int, inv_h, n_cols, r[e], wbuf);                                   \
            cdp_edge_plain_##SUFFIX(x + src[e] * x_stride, y + e * y_stride, wbuf, acc, path_acc, rr, n_paths, \
                                    path_info, pair_info, term_mj, term_c, tmp);                              \
        }                                                                                                     \
    }                                                                                                         \
    free(wbuf);                                                                                               \
    return 0;                                                                                                 \
}

CDP_RECEIVERS_PLAIN(f64, double)
CDP_RECEIVERS_PLAIN(f32, float) /* vector builds too: irreps above l = 4 (d > 9) have no register tile */

#if defined(CDP_AVX512) || defined(CDP_AVX2)
#define CDP_CH 16 /* edges of one receiver whose coefficients A are formed at once */
#if defined(CDP_AVX512)
#define CDP_VL 16
#define CDP_VREGS 32
typedef __m512 cdp_vf;
typedef __mmask16 cdp_vm;
static inline cdp_vm cdp_vmask(int n) { return n >= 16 ? (cdp_vm)0xFFFF : (cdp_vm)((1u << n) - 1u); }
/* AVX-512 masks cost nothing on full vectors: no branch on ``full`` */
static inline cdp_vf cdp_vload(const float *p, cdp_vm m, int full) { (void)full; return _mm512_maskz_loadu_ps(m, p); }
static inline void cdp_vstore(float *p, cdp_vm m, int full, cdp_vf v) { (void)full; _mm512_mask_storeu_ps(p, m, v); }
#define cdp_vset1 _mm512_set1_ps
#define cdp_vfma _mm512_fmadd_ps
#define cdp_vmul _mm512_mul_ps
#define cdp_vadd _mm512_add_ps
#define cdp_vzero _mm512_setzero_ps
#else
#define CDP_VL 8
#define CDP_VREGS 16
typedef __m256 cdp_vf;
typedef __m256i cdp_vm;
static inline cdp_vm cdp_vmask(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
static inline cdp_vf cdp_vload(const float *p, cdp_vm m, int full) { return full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m); }
static inline void cdp_vstore(float *p, cdp_vm m, int full, cdp_vf v) { if (full) _mm256_storeu_ps(p, v); else _mm256_maskstore_ps(p, m, v); }
#define cdp_vset1 _mm256_set1_ps
#define cdp_vfma _mm256_fmadd_ps
#define cdp_vmul _mm256_mul_ps
#define cdp_vadd _mm256_add_ps
#define cdp_vzero _mm256_setzero_ps
#endif

/* one path of one chunk of n_e edges of a receiver: xe[e] its sender row + the path's x_off, we[e] its radial
 * weights + the path's first column, a [DK·DI][CDP_CH] the dense coefficients; rows ar + m_k·row_stride,
 * channels [0, mul): the first chunk of a receiver stores, later chunks add. */
typedef void (*cdp_tile_fn)(int n_e, const float *const *xe, const float *const *we, const float *restrict a,
                            float *restrict ar, int64_t row_stride, int padmul, int mul, int first);

/* entry k = m_k·d_i + m_i of the tile's pattern (PLO/PHI: compile-time constants of the tile; every bit set
 * for the dense tiles), so the compiler drops the multiply-adds of entries that are zero for every edge */
#define CDP_ON(k) ((k) < 64 ? ((PLO >> (k)) & 1ull) : ((PHI >> ((k) - 64)) & 1ull))

#define CDP_TILE_EDGE(S, E)                                                                                   \
    do {                                                                                                      \
        const cdp_vf w_ = cdp_vload(we[E] + v0, m, full);                                                     \
        const float *xr_ = xe[E] + v0;                                                                        \
        const float *ae_ = a + (E);                                                                           \
        if (T_FORM) {                                                                                         \
            cdp_vf t_[TDK];                                                                                   \
            _Pragma("GCC unroll 9") for (int mk = 0; mk < TDK; ++mk) t_[mk] = cdp_vzero();                    \
            _Pragma("GCC unroll 9") for (int mi = 0; mi < TDI; ++mi) {                                        \
                int col_ = 0;                                                                                 \
                _Pragma("GCC unroll 9") for (int mk = 0; mk < TDK; ++mk) col_ |= (int)CDP_ON(mk * TDI + mi);  \
                if (!col_) continue;                                                                          \
                const cdp_vf xv_ = cdp_vload(xr_ + mi * padmul, m, full);                                     \
                _Pragma("GCC unroll 9") for (int mk = 0; mk < TDK; ++mk)                                      \
                    if (CDP_ON(mk * TDI + mi))                                                                \
                        t_[mk] = cdp_vfma(cdp_vset1(ae_[(mk * TDI + mi) * CDP_CH]), xv_, t_[mk]);             \
            }                                                                                                 \
            _Pragma("GCC unroll 9") for (int mk = 0; mk < TDK; ++mk) acc[S][mk] = cdp_vfma(w_, t_[mk], acc[S][mk]); \
        } else {                                                                                              \
            _Pragma("GCC unroll 9") for (int mi = 0; mi < TDI; ++mi) {                                        \
                int col_ = 0;                                                                                 \
                _Pragma("GCC unroll 9") for (int mk = 0; mk < TDK; ++mk) col_ |= (int)CDP_ON(mk * TDI + mi);  \
                if (!col_) continue;                                                                          \
                const cdp_vf wx_ = cdp_vmul(w_, cdp_vload(xr_ + mi * padmul, m, full));                       \
                _Pragma("GCC unroll 9") for (int mk = 0; mk < TDK; ++mk)                                      \
                    if (CDP_ON(mk * TDI + mi))                                                                \
                        acc[S][mk] = cdp_vfma(cdp_vset1(ae_[(mk * TDI + mi) * CDP_CH]), wx_, acc[S][mk]);     \
            }                                                                                                 \
        }                                                                                                     \
    } while (0)

#define CDP_TILE_GEN(NAME, DI, DK, LO, HI)                                                                    \
static void NAME(int n_e, const float *const *xe, const float *const *we, const float *restrict a,           \
                 float *restrict ar, int64_t row_stride, int padmul, int mul, int first)                     \
{                                                                                                             \
    const uint64_t PLO = (LO), PHI = (HI);                                                                    \
    enum { TDI = DI, TDK = DK, T_FORM = (DK < DI) && (2 * DK + 2 <= CDP_VREGS - 2) };                                             \
    enum { NS = ((T_FORM ? 3 : 2) * DK + 2 <= CDP_VREGS - 4) ? 2 : 1 };                                       \
    for (int v0 = 0; v0 < mul; v0 += CDP_VL) {                                                                \
        const int lanes = mul - v0 < CDP_VL ? mul - v0 : CDP_VL;                                              \
        const int full = lanes == CDP_VL;                                                                     \
        const cdp_vm m = cdp_vmask(lanes);                                                                    \
        cdp_vf acc[NS][DK];                                                                                   \
        _Pragma("GCC unroll 9") for (int mk = 0; mk < DK; ++mk) {                                             \
            acc[0][mk] = first ? cdp_vzero() : cdp_vload(ar + mk * row_stride + v0, m, full);                \
            if (NS > 1) acc[NS - 1][mk] = cdp_vzero();                                                        \
        }                                                                                                     \
        int e = 0;                                                                                            \
        if (NS > 1)                                                                                           \
            for (; e + 1 < n_e; e += 2) {                                                                     \
                CDP_TILE_EDGE(0, e);                                                                          \
                CDP_TILE_EDGE(NS - 1, e + 1);                                                                 \
            }                                                                                                 \
        for (; e < n_e; ++e) CDP_TILE_EDGE(0, e);                                                             \
        _Pragma("GCC unroll 9") for (int mk = 0; mk < DK; ++mk)                                               \
            cdp_vstore(ar + mk * row_stride + v0, m, full, NS > 1 ? cdp_vadd(acc[0][mk], acc[NS - 1][mk]) : acc[0][mk]); \
    }                                                                                                         \
}

#define CDP_TILE(DI, DK) CDP_TILE_GEN(cdp_tile_##DI##_##DK, DI, DK, ~0ull, ~0ull)
#define CDP_TILES_DI(DI) CDP_TILE(DI, 1) CDP_TILE(DI, 3) CDP_TILE(DI, 5) CDP_TILE(DI, 7) CDP_TILE(DI, 9)
CDP_TILES_DI(1)
CDP_TILES_DI(3)
CDP_TILES_DI(5)
CDP_TILES_DI(7)
CDP_TILES_DI(9)
#define CDP_TILE_ROW(DI) {cdp_tile_##DI##_1, cdp_tile_##DI##_3, cdp_tile_##DI##_5, cdp_tile_##DI##_7, cdp_tile_##DI##_9}
static const cdp_tile_fn cdp_tiles[5][5] = {CDP_TILE_ROW(1), CDP_TILE_ROW(3), CDP_TILE_ROW(5), CDP_TILE_ROW(7), CDP_TILE_ROW(9)};

/* pattern tiles: one per sparsity pattern of A that e3nn's real Clebsch-Gordan coefficients give for l ≤ 4
 * (not every entry set); a path whose non-zero (m_k, m_i) pairs fit one runs it instead of the dense tile */
/* BEGIN PATTERNS (gen_patterns.py) */
#define CDP_PATTERN_LIST(X) \
    X(0, 3, 3, 0x00000000000000eeull, 0x00000ull) \
    X(1, 3, 3, 0x0000000000000111ull, 0x00000ull) \
    X(2, 3, 5, 0x0000000000005dddull, 0x00000ull) \
    X(3, 3, 5, 0x0000000000007f7full, 0x00000ull) \
    X(4, 3, 7, 0x000000000017fffdull, 0x00000ull) \
    X(5, 3, 7, 0x00000000001ffbffull, 0x00000ull) \
    X(6, 3, 9, 0x0000000005fffffdull, 0x00000ull) \
    X(7, 3, 9, 0x0000000007ffdfffull, 0x00000ull) \
    X(8, 5, 3, 0x00000000000075d7ull, 0x00000ull) \
    X(9, 5, 3, 0x0000000000007f7full, 0x00000ull) \
    X(10, 5, 5, 0x0000000000bbabbaull, 0x00000ull) \
    X(11, 5, 5, 0x0000000000fbefbeull, 0x00000ull) \
    X(12, 5, 5, 0x0000000001041041ull, 0x00000ull) \
    X(13, 5, 5, 0x0000000001efffefull, 0x00000ull) \
    X(14, 5, 7, 0x0000000475d75d71ull, 0x00000ull) \
    X(15, 5, 7, 0x00000006cbfdfe9bull, 0x00000ull) \
    X(16, 5, 7, 0x00000007f5fffd7full, 0x00000ull) \
    X(17, 5, 7, 0x00000007fffdffffull, 0x00000ull) \
    X(18, 5, 9, 0x000011dfbfffbf71ull, 0x00000ull) \
    X(19, 5, 9, 0x00001bfbffbffbfbull, 0x00000ull) \
    X(20, 7, 3, 0x00000000001fdf7full, 0x00000ull) \
    X(21, 7, 3, 0x00000000001ffbffull, 0x00000ull) \
    X(22, 7, 5, 0x00000005fbadaefdull, 0x00000ull) \
    X(23, 7, 5, 0x0000000757471757ull, 0x00000ull) \
    X(24, 7, 5, 0x00000007dff77fdfull, 0x00000ull) \
    X(25, 7, 5, 0x00000007fffdffffull, 0x00000ull) \
    X(26, 7, 7, 0x00008ebae28ebae2ull, 0x00000ull) \
    X(27, 7, 7, 0x0000fefefefefefeull, 0x00000ull) \
    X(28, 7, 7, 0x0001010101010101ull, 0x00000ull) \
    X(29, 7, 7, 0x0001daeff7dfeeb7ull, 0x00000ull) \
    X(30, 7, 7, 0x0001fbffffffffbfull, 0x00000ull) \
    X(31, 7, 9, 0x41c5d5d1c5d5d1c1ull, 0x00000ull) \
    X(32, 7, 9, 0x636f7ffb6fff7b63ull, 0x00000ull) \
    X(33, 7, 9, 0x77fdf7fffff7dff7ull, 0x00000ull) \
    X(34, 7, 9, 0x7f7fffff7fffff7full, 0x00000ull) \
    X(35, 9, 3, 0x0000000007fdfdffull, 0x00000ull) \
    X(36, 9, 3, 0x0000000007ffdfffull, 0x00000ull) \
    X(37, 9, 5, 0x00001bfffbbbfffbull, 0x00000ull) \
    X(38, 9, 5, 0x00001fb7f1f1fdbfull, 0x00000ull) \
    X(39, 9, 7, 0x5bf7efe363fbf7edull, 0x00000ull) \
    X(40, 9, 7, 0x5fffffff7ffffffdull, 0x00000ull) \
    X(41, 9, 7, 0x715d4741c1715d47ull, 0x00000ull) \
    X(42, 9, 7, 0x7f7f7ff7f7ff7f7full, 0x00000ull) \
    X(43, 9, 9, 0xab8b8283a3ab8b82ull, 0x083a3ull) \
    X(44, 9, 9, 0xeffbeeefbfeffbeeull, 0x0efbfull) \
    X(45, 9, 9, 0x1004010040100401ull, 0x10040ull) \
    X(46, 9, 9, 0xfedfc7c7f6fedec7ull, 0x1c6f6ull) \
    X(47, 9, 9, 0xfffffffffffefeffull, 0x1fefeull) \
    /* end of list */
/* END PATTERNS */
#define CDP_PTILE_FN(N, DI, DK, LO, HI) CDP_TILE_GEN(cdp_ptile_##N, DI, DK, LO, HI)
#define CDP_PTILE_ENTRY(N, DI, DK, LO, HI) {DI, DK, LO, HI, cdp_ptile_##N},
CDP_PATTERN_LIST(CDP_PTILE_FN)
struct cdp_ptile { int di, dk; uint64_t lo, hi; cdp_tile_fn fn; };
static const struct cdp_ptile cdp_ptiles[] = {CDP_PATTERN_LIST(CDP_PTILE_ENTRY) {0, 0, 0, 0, NULL}};

/* the tile for a path: the pattern tile with the fewest entries that covers the path's pairs, else dense;
 * *lo, *hi become the entries the tile reads (every entry for a dense tile) */
static cdp_tile_fn cdp_pick_tile(int di, int dk, uint64_t *lo, uint64_t *hi)
{
    cdp_tile_fn best = cdp_tiles[di / 2][dk / 2];
    int best_bits = di * dk + 1;
    uint64_t best_lo = ~0ull, best_hi = ~0ull;
    for (const struct cdp_ptile *t = cdp_ptiles; t->fn; ++t) {
        if (t->di != di || t->dk != dk || (*lo & ~t->lo) || (*hi & ~t->hi)) continue;
        const int bits = __builtin_popcountll(t->lo) + __builtin_popcountll(t->hi);
        if (bits < best_bits) { best = t->fn; best_bits = bits; best_lo = t->lo; best_hi = t->hi; }
    }
    *lo = best_lo;
    *hi = best_hi;
    return best;
}

/* 1 when paths p and q have the same coefficients A for every edge: the same shape, tile entries and terms
 * (harmonic index and coefficient, bitwise) entry by entry */
static int cdp_same_a(const int32_t *ep, const int32_t *eq, int64_t n_ent, const int32_t *term_mj,
                      const float *term_c)
{
    for (int64_t k = 0; k < n_ent; ++k) {
        const int32_t p0 = ep[2 * k], p1 = ep[2 * k + 1], q0 = eq[2 * k], q1 = eq[2 * k + 1];
        if (p1 - p0 != q1 - q0) return 0;
        for (int32_t t = 0; t < p1 - p0; ++t)
            if (term_mj[p0 + t] != term_mj[q0 + t] || memcmp(term_c + p0 + t, term_c + q0 + t, sizeof(float))) return 0;
    }
    return 1;
}

/* one coefficient of A for the CDP_CH edges of a chunk: sum of its terms c · Y[m_j] (yt: [m_j][edge]) */
static inline void cdp_chunk_a(int t0, int t1, const int32_t *restrict term_mj, const float *restrict term_c,
                               const float *restrict yt, float *restrict out)
{
#if defined(CDP_AVX512)
    __m512 s = _mm512_setzero_ps();
    for (int t = t0; t < t1; ++t) s = _mm512_fmadd_ps(_mm512_set1_ps(term_c[t]), _mm512_loadu_ps(yt + term_mj[t] * CDP_CH), s);
    _mm512_storeu_ps(out, s);
#else
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    for (int t = t0; t < t1; ++t) {
        const __m256 c = _mm256_set1_ps(term_c[t]);
        s0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(yt + term_mj[t] * CDP_CH), s0);
        s1 = _mm256_fmadd_ps(c, _mm256_loadu_ps(yt + term_mj[t] * CDP_CH + 8), s1);
    }
    _mm256_storeu_ps(out, s0);
    _mm256_storeu_ps(out + 8, s1);
#endif
}

static int cdp_receivers_vec_f32(int64_t r0, int64_t r1, const int64_t *restrict ptr, const int64_t *restrict src,
                                 const float *restrict y, int64_t y_stride, const float *restrict r,
                                 const float *restrict coef, int64_t n_int, float inv_h, int64_t n_cols,
                                 const float *restrict x, int64_t x_stride, float *restrict acc,
                                 const int64_t *restrict path_acc, int64_t n_paths, const int32_t *restrict path_info,
                                 const int32_t *restrict pair_info, const int32_t *restrict term_mj,
                                 const float *restrict term_c)
{
    for (int64_t p = 0; p < n_paths; ++p) {
        const int32_t *pi = path_info + 8 * p;
        if (pi[0] > CDP_MAX_MUL) return 1;
        int big = pi[1] > 9 || !(pi[1] & 1);  /* tiles exist for d_k, d_i in {1, 3, 5, 7, 9} (l <= 4) */
        for (int q = pi[6]; q < pi[7] && !big; ++q)
            big = pair_info[4 * q + 1] >= 9 * ((pi[0] + CDP_UVU_PAD_WIDTH - 1) / CDP_UVU_PAD_WIDTH * CDP_UVU_PAD_WIDTH);
        if (big)
            return cdp_receivers_plain_f32(r0, r1, ptr, src, y, y_stride, r, coef, n_int, inv_h, n_cols, x, x_stride,
                                           acc, path_acc, n_paths, path_info, pair_info, term_mj, term_c);
    }
    if (!cdp_table_fits(n_paths, path_info, n_cols)) return 3;
    if (r1 <= r0) return 0;
    /* d_i of each path: from its pairs' m_i (rounded up to odd: an m_i without any pair is a zero column);
     * then every dense entry (m_k, m_i) of every path as a term range [t0, t1) (t0 == t1: zero) */
    int *d_i = (int *)malloc(sizeof(int) * (size_t)(n_paths + 1));
    int64_t *ent_off = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n_paths + 1));
    float *a = NULL;  /* every path's A for the chunk [entries][edge]; paths with equal A share one */
    float *yt = (float *)malloc(sizeof(float) * (size_t)((y_stride + 1) * CDP_CH));
    int32_t *entries = NULL;
    cdp_tile_fn *tile = (cdp_tile_fn *)malloc(sizeof(cdp_tile_fn) * (size_t)(n_paths + 1));
    /* weight rows of a chunk: n_cols columns and a vector of slack (masked loads never read past mul) */
    const int64_t row_len = ((n_cols + 15) / 16) * 16 + 16;
    float *wbuf = (float *)malloc(sizeof(float) * (size_t)(CDP_CH * row_len));
    int status = 0;
    int64_t *rep = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n_paths + 1));
    uint64_t *need = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)(2 * n_paths + 2));
    if (!d_i || !ent_off || !yt || !wbuf || !tile || !rep || !need) { status = 2; goto done; }
    ent_off[0] = 0;
    for (int64_t p = 0; p < n_paths; ++p) {
        const int32_t *pi = path_info + 8 * p;
        const int padmul = (pi[0] + CDP_UVU_PAD_WIDTH - 1) / CDP_UVU_PAD_WIDTH * CDP_UVU_PAD_WIDTH;
        int top = 0;
        for (int q = pi[6]; q < pi[7]; ++q)
            if (pair_info[4 * q + 1] / padmul > top) top = pair_info[4 * q + 1] / padmul;
        d_i[p] = (top + 1) | 1;
        ent_off[p + 1] = ent_off[p] + (int64_t)pi[1] * d_i[p];
    }
    entries = (int32_t *)malloc(sizeof(int32_t) * (size_t)(2 * ent_off[n_paths] + 2));
    a = (float *)malloc(sizeof(float) * (size_t)((ent_off[n_paths] + 1) * CDP_CH));
    if (!entries || !a) { status = 2; goto done; }
    for (int64_t p = 0; p < n_paths; ++p) {
        const int32_t *pi = path_info + 8 * p;
        const int padmul = (pi[0] + CDP_UVU_PAD_WIDTH - 1) / CDP_UVU_PAD_WIDTH * CDP_UVU_PAD_WIDTH;
        int32_t *ent = entries + 2 * ent_off[p];
        uint64_t lo = 0, hi = 0;
        for (int64_t k = 0; k < ent_off[p + 1] - ent_off[p]; ++k) ent[2 * k] = ent[2 * k + 1] = 0;
        for (int q = pi[6]; q < pi[7]; ++q) {
            const int32_t *qi = pair_info + 4 * q;
            const int k = qi[0] * d_i[p] + qi[1] / padmul;
            ent[2 * k] = qi[2];
            ent[2 * k + 1] = qi[3];
            if (k < 64) lo |= 1ull << k; else hi |= 1ull << (k - 64);
        }
        tile[p] = cdp_pick_tile(d_i[p], pi[1], &lo, &hi);
        need[2 * p] = lo;
        need[2 * p + 1] = hi;
        rep[p] = p;  /* an earlier path with the same A (e.g. the same Clebsch-Gordan path of the other parity) */
        for (int64_t q = 0; q < p; ++q)
            if (rep[q] == q && d_i[q] == d_i[p] && path_info[8 * q + 1] == pi[1] && need[2 * q] == lo &&
                need[2 * q + 1] == hi && cdp_same_a(ent, entries + 2 * ent_off[q], ent_off[p + 1] - ent_off[p], term_mj, term_c)) {
                rep[p] = q;
                break;
            }
    }
    const float *xb[CDP_CH], *xe[CDP_CH], *we[CDP_CH];
    for (int64_t rr = r0; rr < r1; ++rr) {
        const int64_t e_begin = ptr[rr], e_end = ptr[rr + 1];
        if (e_end <= e_begin) {
            cdp_zero_receiver_f32(rr, acc, path_acc, n_paths, path_info);
            continue;
        }
        for (int64_t c0 = e_begin; c0 < e_end; c0 += CDP_CH) {
            const int n = e_end - c0 < CDP_CH ? (int)(e_end - c0) : CDP_CH;
            for (int64_t j = 0; j < y_stride; ++j)
                for (int l = 0; l < CDP_CH; ++l) yt[j * CDP_CH + l] = l < n ? y[(c0 + l) * y_stride + j] : 0.f;
            for (int l = 0; l < n; ++l) {  /* the chunk's radial weight rows: a few long streams through the table */
                xb[l] = x + src[c0 + l] * x_stride;
                cdp_table_row_f32(coef, n_int, inv_h, n_cols, r[c0 + l], wbuf + l * row_len);
            }
            for (int64_t p = 0; p < n_paths; ++p) {
                const int32_t *pi = path_info + 8 * p;
                const int mul = pi[0], d_k = pi[1], di = d_i[p];
                const int padmul = (mul + CDP_UVU_PAD_WIDTH - 1) / CDP_UVU_PAD_WIDTH * CDP_UVU_PAD_WIDTH;
                /* A [d_k][d_i][edge] from the entries' term ranges (an empty range is a zero), only the entries
                 * the path's tile reads, once per group of paths with the same A */
                float *ap = a + ent_off[rep[p]] * CDP_CH;
                if (rep[p] == p) {
                    const int32_t *ent = entries + 2 * ent_off[p];
                    const uint64_t lo = need[2 * p], hi = need[2 * p + 1];
                    for (int k = 0; k < d_k * di; ++k)
                        if (k < 64 ? (lo >> k) & 1ull : (hi >> (k - 64)) & 1ull)
                            cdp_chunk_a(ent[2 * k], ent[2 * k + 1], term_mj, term_c, yt, ap + k * CDP_CH);
                }
                for (int l = 0; l < n; ++l) {
                    xe[l] = xb[l] + pi[2];
                    we[l] = wbuf + l * row_len + pi[3];
                }
                tile[p](n, xe, we, ap, CDP_PATH_ROW(acc, path_acc, p, rr), pi[5], padmul, mul, c0 == e_begin);
            }
        }
    }
done:
    free(rep);
    free(need);
    free(tile);
    free(wbuf);
    free(d_i);
    free(ent_off);
    free(entries);
    free(a);
    free(yt);
    return status;
}
#endif

int cdp_uvu_receivers_table_f32(int64_t r0, int64_t r1, const int64_t *restrict ptr, const int64_t *restrict src,
                                const float *restrict y, int64_t y_stride, const float *restrict r,
                                const float *restrict coef, int64_t n_int, double inv_h, int64_t n_cols,
                                const float *restrict x, int64_t x_stride, float *restrict acc,
                                const int64_t *restrict path_acc, int64_t n_paths, const int32_t *restrict path_info,
                                const int32_t *restrict pair_info, const int32_t *restrict term_mj,
                                const float *restrict term_c)
{
    if (n_int < 1 || n_cols < 0) return 3;
#if defined(CDP_AVX512) || defined(CDP_AVX2)
    return cdp_receivers_vec_f32(r0, r1, ptr, src, y, y_stride, r, coef, n_int, (float)inv_h, n_cols, x, x_stride,
                                 acc, path_acc, n_paths, path_info, pair_info, term_mj, term_c);
#else
    return cdp_receivers_plain_f32(r0, r1, ptr, src, y, y_stride, r, coef, n_int, (float)inv_h, n_cols, x, x_stride,
                                   acc, path_acc, n_paths, path_info, pair_info, term_mj, term_c);
#endif
}

int cdp_uvu_receivers_table_f64(int64_t r0, int64_t r1, const int64_t *restrict ptr, const int64_t *restrict src,
                                const double *restrict y, int64_t y_stride, const double *restrict r,
                                const double *restrict coef, int64_t n_int, double inv_h, int64_t n_cols,
                                const double *restrict x, int64_t x_stride, double *restrict acc,
                                const int64_t *restrict path_acc, int64_t n_paths, const int32_t *restrict path_info,
                                const int32_t *restrict pair_info, const int32_t *restrict term_mj,
                                const double *restrict term_c)
{
    if (n_int < 1 || n_cols < 0) return 3;
    return cdp_receivers_plain_f64(r0, r1, ptr, src, y, y_stride, r, coef, n_int, inv_h, n_cols, x, x_stride, acc,
                                   path_acc, n_paths, path_info, pair_info, term_mj, term_c);
}

/* Backward of the fused kernel: given g = dL/dacc, for every edge e and path p (same tables as forward)
 *     gx[src_e, i, m_i, u] += sum_{m_k} A_p(e)[m_k, m_i] * w[e, p, u] * g[dst_e, p, m_k, u]
 *     gw[e, p, u]          += sum_{m_k} g[dst_e, p, m_k, u] * sum_{m_i} A_p(e)[m_k, m_i] * x[src_e, i, m_i, u]
 *     gy[e, m_j]           += sum_{pairs, terms with m_j} c * sum_u w[e, p, u] * g[dst_e, p, m_k, u] * x[src_e, i, m_i, u]
 * gw and gy rows belong to one edge (callers split edges between threads freely); gx rows are shared by
 * the edges of one sender, so each thread gets its own gx (or NULL: not needed).  gy may be NULL.
 * gx has x's layout and stride, gw w's, gy y's; all must be zeroed by the caller. */
#define CDP_UVU_BACKWARD(NAME, T)                                                                            \
int NAME(int64_t e0, int64_t e1, const int64_t *restrict src, const int64_t *restrict dst,                \
         const T *restrict y, int64_t y_stride, const T *restrict w, int64_t w_stride,                    \
         const T *restrict x, int64_t x_stride, const T *restrict g, int64_t g_stride,                    \
         T *restrict gx, T *restrict gw, T *restrict gy,                                                   \
         int64_t n_paths, const int32_t *restrict path_info, const int32_t *restrict pair_info,           \
         const int32_t *restrict term_mj, const T *restrict term_c)                                        \
{                                                                                                         \
    T tmp[CDP_MAX_MUL], gwv[CDP_MAX_MUL];                                                                 \
    int64_t n_pairs = 0;                                                                                  \
    for (int64_t p = 0; p < n_paths; ++p) {                                                               \
        if (path_info[8 * p] > CDP_MAX_MUL) return 1;                                                     \
        if (path_info[8 * p + 7] > n_pairs) n_pairs = path_info[8 * p + 7];                               \
    }                                                                                                     \
    if (e1 <= e0) return 0;                                                                               \
    T *a = (T *)malloc(sizeof(T) * (size_t)(n_pairs + 1));                                                \
    if (!a) return 2;                                                                                     \
    for (int64_t e = e0; e < e1; ++e) {                                                                   \
        const T *ye = y + e * y_stride;                                                                   \
        const T *we = w + e * w_stride;                                                                   \
        const T *xe = x + src[e] * x_stride;                                                              \
        const T *ge = g + dst[e] * g_stride;                                                              \
        T *gxe = gx ? gx + src[e] * x_stride : NULL;                                                      \
        T *gwe = gw + e * w_stride;                                                                       \
        T *gye = gy ? gy + e * y_stride : NULL;                                                           \
        for (int64_t q = 0; q < n_pairs; ++q) {                                                           \
            const int32_t *qi = pair_info + 4 * q;                                                        \
            T s = 0;                                                                                      \
            for (int t = qi[2]; t < qi[3]; ++t) s += term_c[t] * ye[term_mj[t]];                          \
            a[q] = s;                                                                                     \
        }                                                                                                 \
        for (int64_t p = 0; p < n_paths; ++p) {                                                           \
            const int32_t *pi = path_info + 8 * p;                                                        \
            const int mul = pi[0], d_k = pi[1];                                                           \
            const T *xp = xe + pi[2];                                                                     \
            const T *wp = we + pi[3];                                                                     \
            const T *gp = ge + pi[4];                                                                     \
            T *gwp = gwe + pi[3];                                                                         \
            int q0 = pi[6];                                                                               \
            const int q_end = pi[7];                                                                      \
            for (int mk = 0; mk < d_k && q0 < q_end; ++mk) {                                              \
                int q1 = q0;                                                                              \
                while (q1 < q_end && pair_info[4 * q1] == mk) ++q1;                                       \
                if (q1 == q0) continue;                                                                   \
                const T *gr = gp + mk * pi[5];                                                            \
                for (int u = 0; u < mul; ++u) { gwv[u] = gr[u] * wp[u]; tmp[u] = 0; }                     \
                for (int q = q0; q < q1; ++q) {                                                           \
                    const int32_t *qi = pair_info + 4 * q;                                                \
                    const T *xr = xp + qi[1];                                                             \
                    const T aq = a[q];                                                                    \
                    for (int u = 0; u < mul; ++u) tmp[u] += aq * xr[u];                                   \
                    if (gye) {                                                                            \
                        T d = 0;                                                                          \
                        for (int u = 0; u < mul; ++u) d += gwv[u] * xr[u];                                \
                        for (int t = qi[2]; t < qi[3]; ++t) gye[term_mj[t]] += term_c[t] * d;             \
                    }                                                                                     \
                    if (gxe) {                                                                            \
                        T *gxr = gxe + pi[2] + qi[1];                                                     \
                        for (int u = 0; u < mul; ++u) gxr[u] += aq * gwv[u];                              \
                    }                                                                                     \
                }                                                                                         \
                for (int u = 0; u < mul; ++u) gwp[u] += gr[u] * tmp[u];                                   \
                q0 = q1;                                                                                  \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
    free(a);                                                                                              \
    return 0;                                                                                             \
}

#if defined(CDP_AVX2_BACKWARD)
/* float32 with AVX2/FMA: whole 8-channel vectors, as in the forward kernel.  Lanes past a path's mul read
 * zero-padded x (so the harmonic gradient and the weight gradient gain exact zeros there) and a
 * neighbouring path's g and w (finite), whose products land only in x's padding columns of gx, which the
 * caller discards; w/gw and g rows need 8 columns of slack after their last column. */
static inline float cdp_hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
    return _mm_cvtss_f32(s);
}

int cdp_uvu_conv_backward_f32(int64_t e0, int64_t e1, const int64_t *restrict src, const int64_t *restrict dst,
                              const float *restrict y, int64_t y_stride, const float *restrict w, int64_t w_stride,
                              const float *restrict x, int64_t x_stride, const float *restrict g, int64_t g_stride,
                              float *restrict gx, float *restrict gw, float *restrict gy,
                              int64_t n_paths, const int32_t *restrict path_info, const int32_t *restrict pair_info,
                              const int32_t *restrict term_mj, const float *restrict term_c)
{
    int64_t n_pairs = 0;
    for (int64_t p = 0; p < n_paths; ++p) {
        if (path_info[8 * p] > CDP_MAX_MUL) return 1;
        if (path_info[8 * p + 7] > n_pairs) n_pairs = path_info[8 * p + 7];
    }
    if (e1 <= e0) return 0;
    float *a = (float *)malloc(sizeof(float) * (size_t)(4 * n_pairs + 4));   /* A of four edges: a[4q + g] */
    float *da = (float *)malloc(sizeof(float) * (size_t)(n_pairs + 1));      /* dL/dA of one edge */
    float *yt = (float *)malloc(sizeof(float) * (size_t)(4 * y_stride + 4));
    if (!a || !da || !yt) { free(a); free(da); free(yt); return 2; }
    for (int64_t eg = e0; eg < e1; eg += 4) {
        const int g_n = e1 - eg < 4 ? (int)(e1 - eg) : 4;
        for (int64_t j = 0; j < y_stride; ++j)  /* harmonics of the four edges, transposed: yt[j][g] */
            for (int k = 0; k < 4; ++k) yt[4 * j + k] = k < g_n ? y[(eg + k) * y_stride + j] : 0.f;
        for (int64_t q = 0; q < n_pairs; ++q) {  /* A_p(e)[m_k, m_i] of the four edges at once */
            const int32_t *qi = pair_info + 4 * q;
            __m128 s = _mm_setzero_ps();
            for (int t = qi[2]; t < qi[3]; ++t)
                s = _mm_fmadd_ps(_mm_set1_ps(term_c[t]), _mm_loadu_ps(yt + 4 * term_mj[t]), s);
            _mm_storeu_ps(a + 4 * q, s);
        }
        for (int k = 0; k < g_n; ++k) {
            const int64_t e = eg + k;
            const float *we = w + e * w_stride;
            const float *xe = x + src[e] * x_stride;
            const float *ge = g + dst[e] * g_stride;
            float *gxe = gx ? gx + src[e] * x_stride : NULL;
            float *gwe = gw + e * w_stride;
            for (int64_t p = 0; p < n_paths; ++p) {
                const int32_t *pi = path_info + 8 * p;
                const int d_k = pi[1], n_vec = (pi[0] + 7) / 8;
                const float *xp = xe + pi[2];
                const float *wp = we + pi[3];
                const float *gp = ge + pi[4];
                float *gwp = gwe + pi[3];
                float *gxp = gxe ? gxe + pi[2] : NULL;
                int q0 = pi[6];
                const int q_end = pi[7];
                for (int mk = 0; mk < d_k && q0 < q_end; ++mk) {
                    int q1 = q0;
                    while (q1 < q_end && pair_info[4 * q1] == mk) ++q1;
                    if (q1 == q0) continue;
                    const float *gr = gp + mk * pi[5];
                    if (gy) for (int q = q0; q < q1; ++q) da[q] = 0.f;
                    int v = 0;
#if defined(CDP_AVX512)
                    for (; v + 2 <= n_vec; v += 2) {  /* 16 lanes at a time, then an 8-lane tail below */
                        const int off = 8 * v;
                        const __m512 gv = _mm512_loadu_ps(gr + off);
                        const __m512 gwv = _mm512_mul_ps(gv, _mm512_loadu_ps(wp + off));
                        __m512 tmp = _mm512_setzero_ps();
                        for (int q = q0; q < q1; ++q) {
                            const int xo = pair_info[4 * q + 1] + off;
                            const __m512 aq = _mm512_set1_ps(a[4 * q + k]);
                            const __m512 xv = _mm512_loadu_ps(xp + xo);
                            tmp = _mm512_fmadd_ps(aq, xv, tmp);
                            if (gxp) _mm512_storeu_ps(gxp + xo, _mm512_fmadd_ps(aq, gwv, _mm512_loadu_ps(gxp + xo)));
                            if (gy) da[q] += _mm512_reduce_add_ps(_mm512_mul_ps(gwv, xv));
                        }
                        _mm512_storeu_ps(gwp + off, _mm512_fmadd_ps(gv, tmp, _mm512_loadu_ps(gwp + off)));
                    }
#endif
                    for (; v < n_vec; ++v) {
                        const int off = 8 * v;
                        const __m256 gv = _mm256_loadu_ps(gr + off);
                        const __m256 gwv = _mm256_mul_ps(gv, _mm256_loadu_ps(wp + off));
                        __m256 tmp = _mm256_setzero_ps();
                        for (int q = q0; q < q1; ++q) {
                            const int xo = pair_info[4 * q + 1] + off;
                            const __m256 aq = _mm256_broadcast_ss(a + 4 * q + k);
                            const __m256 xv = _mm256_loadu_ps(xp + xo);
                            tmp = _mm256_fmadd_ps(aq, xv, tmp);
                            if (gxp) _mm256_storeu_ps(gxp + xo, _mm256_fmadd_ps(aq, gwv, _mm256_loadu_ps(gxp + xo)));
                            if (gy) da[q] += cdp_hsum(_mm256_mul_ps(gwv, xv));
                        }
                        _mm256_storeu_ps(gwp + off, _mm256_fmadd_ps(gv, tmp, _mm256_loadu_ps(gwp + off)));
                    }
                    if (gy) {
                        float *gye = gy + e * y_stride;
                        for (int q = q0; q < q1; ++q) {
                            const int32_t *qi = pair_info + 4 * q;
                            for (int t = qi[2]; t < qi[3]; ++t) gye[term_mj[t]] += term_c[t] * da[q];
                        }
                    }
                    q0 = q1;
                }
            }
        }
    }
    free(a);
    free(da);
    free(yt);
    return 0;
}
#else
CDP_UVU_BACKWARD(cdp_uvu_conv_backward_f32, float)
#endif
CDP_UVU_BACKWARD(cdp_uvu_conv_backward_f64, double)
