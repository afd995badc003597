/* Fused channel-wise ("uvu") tensor-product convolution: CG contraction x radial weight x scatter.
 *
 * For every edge e (sorted by receiver) and every path p (sender irrep i, harmonic l_j, output l_k):
 *     acc[dst_e, p, m_k, u] += w[e, p, u] * sum_{m_i} A_p(e)[m_k, m_i] * x[src_e, i, m_i, u]
 *     A_p(e)[m_k, m_i]       = sum_{m_j} C_p[m_i, m_j, m_k] * Y[e, m_j]
 * with C_p the path-normalised Clebsch-Gordan coefficients, listed sparsely as (m_k, m_i) pairs and their
 * (m_j, c) terms.  No per-edge intermediate is written: one receiver row of `acc` stays in cache while
 * its edges stream through.  Compiled at first use by cdp (native.py); one entry point per dtype.
 *
 * Layout: x rows hold each sender irrep as [m_i][mul rounded up to 8, zero padded]; w rows and acc rows
 * carry 8 columns of slack after their last column (see cdp_uvu_slack).
 * path_info, 8 int32 per path: mul, d_k, x_off, w_off, acc_off, row stride (m_k to m_k + 1), first pair,
 *            end pair
 * pair_info, 4 int32 per pair: m_k, m_i * padded mul, first term, end term   (pairs of a path sorted by m_k)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#define CDP_MAX_MUL 1024

#define CDP_UVU_KERNEL(NAME, T)                                                                              \
int NAME(int64_t e0, int64_t e1, const int64_t *restrict src, const int64_t *restrict dst,                \
         const T *restrict y, int64_t y_stride, const T *restrict w, int64_t w_stride,                    \
         const T *restrict x, int64_t x_stride, T *restrict acc, int64_t acc_stride,                      \
         int64_t n_paths, const int32_t *restrict path_info, const int32_t *restrict pair_info,           \
         const int32_t *restrict term_mj, const T *restrict term_c)                                        \
{                                                                                                         \
    T tmp[CDP_MAX_MUL];                                                                                   \
    for (int64_t p = 0; p < n_paths; ++p)                                                                 \
        if (path_info[8 * p] > CDP_MAX_MUL) return 1;                                                     \
    for (int64_t e = e0; e < e1; ++e) {                                                                   \
        const T *ye = y + e * y_stride;                                                                   \
        const T *we = w + e * w_stride;                                                                   \
        const T *xe = x + src[e] * x_stride;                                                              \
        T *ae = acc + dst[e] * acc_stride;                                                                \
        for (int64_t p = 0; p < n_paths; ++p) {                                                           \
            const int32_t *pi = path_info + 8 * p;                                                        \
            const int mul = pi[0], d_k = pi[1];                                                           \
            const T *xp = xe + pi[2];                                                                     \
            const T *wp = we + pi[3];                                                                     \
            T *ap = ae + pi[4];                                                                           \
            int q = pi[6];                                                                                \
            const int q_end = pi[7];                                                                      \
            for (int mk = 0; mk < d_k; ++mk) {                                                            \
                int first = 1;                                                                            \
                for (; q < q_end && pair_info[4 * q] == mk; ++q) {                                        \
                    const int32_t *qi = pair_info + 4 * q;                                                \
                    T s = 0;                                                                              \
                    for (int t = qi[2]; t < qi[3]; ++t) s += term_c[t] * ye[term_mj[t]];                  \
                    const T *xr = xp + qi[1];                                                       \
                    if (first) {                                                                          \
                        for (int u = 0; u < mul; ++u) tmp[u] = s * xr[u];                                 \
                        first = 0;                                                                        \
                    } else {                                                                              \
                        for (int u = 0; u < mul; ++u) tmp[u] += s * xr[u];                                \
                    }                                                                                     \
                }                                                                                         \
                if (!first) {                                                                             \
                    T *ar = ap + mk * pi[5];                                                             \
                    for (int u = 0; u < mul; ++u) ar[u] += wp[u] * tmp[u];                                \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
    return 0;                                                                                             \
}

#if defined(__AVX2__) && defined(__FMA__)
/* float32 with AVX2/FMA: up to four edges of one receiver at once (four independent FMA chains per
 * 8-channel vector), the per-edge coefficients A_p(e) of the four edges computed together.  Whole vectors
 * only: a path's last vector reads x channels past mul, which the caller pads with zeros, so those lanes
 * add exact zeros; w rows and acc rows need 8 columns of slack after their last (finite) column. */
int cdp_uvu_conv_f32(int64_t e0, int64_t e1, const int64_t *restrict src, const int64_t *restrict dst,
                     const float *restrict y, int64_t y_stride, const float *restrict w, int64_t w_stride,
                     const float *restrict x, int64_t x_stride, float *restrict acc, int64_t acc_stride,
                     int64_t n_paths, const int32_t *restrict path_info, const int32_t *restrict pair_info,
                     const int32_t *restrict term_mj, const float *restrict term_c)
{
    if (e1 <= e0) return 0;
    int64_t n_pairs = 0, zero_len = x_stride > w_stride ? x_stride : w_stride;
    for (int64_t p = 0; p < n_paths; ++p) {
        if (path_info[8 * p + 7] > n_pairs) n_pairs = path_info[8 * p + 7];
    }
    float *a = (float *)malloc(sizeof(float) * (size_t)(4 * n_pairs + 8));
    float *zero = (float *)malloc(sizeof(float) * (size_t)(((zero_len + 15) / 8) * 8));  /* any row offset + 8 */
    float *yt = (float *)malloc(sizeof(float) * (size_t)(4 * y_stride + 4));
    if (!a || !zero || !yt) { free(a); free(zero); free(yt); return 2; }
    memset(zero, 0, sizeof(float) * (size_t)(((zero_len + 15) / 8) * 8));

    int64_t e = e0;
    while (e < e1) {
        /* a group: up to four consecutive edges of the same receiver; missing ones read zeros */
        int g_n = 1;
        while (g_n < 4 && e + g_n < e1 && dst[e + g_n] == dst[e]) ++g_n;
        const float *xg[4], *wg[4];
        for (int64_t j = 0; j < y_stride; ++j) {  /* harmonics of the group, transposed: yt[j][g] */
            for (int g = 0; g < 4; ++g) yt[4 * j + g] = g < g_n ? y[(e + g) * y_stride + j] : 0.f;
        }
        for (int g = 0; g < 4; ++g) {
            xg[g] = g < g_n ? x + src[e + g] * x_stride : zero;
            wg[g] = g < g_n ? w + (e + g) * w_stride : zero;
        }
        for (int64_t q = 0; q < n_pairs; ++q) {  /* A_p(e)[m_k, m_i] of the four edges at once */
            const int32_t *qi = pair_info + 4 * q;
            __m128 s = _mm_setzero_ps();
            for (int t = qi[2]; t < qi[3]; ++t)
                s = _mm_fmadd_ps(_mm_set1_ps(term_c[t]), _mm_loadu_ps(yt + 4 * term_mj[t]), s);
            _mm_storeu_ps(a + 4 * q, s);
        }
        float *ae = acc + dst[e] * acc_stride;
        for (int64_t p = 0; p < n_paths; ++p) {
            const int32_t *pi = path_info + 8 * p;
            const int mul = pi[0], d_k = pi[1];
            /* the zero row stands in for missing edges at every offset a real row is read at */
            const float *x0 = xg[0] + (xg[0] == zero ? 0 : pi[2]), *x1 = xg[1] + (xg[1] == zero ? 0 : pi[2]);
            const float *x2 = xg[2] + (xg[2] == zero ? 0 : pi[2]), *x3 = xg[3] + (xg[3] == zero ? 0 : pi[2]);
            const float *w0 = wg[0] + (wg[0] == zero ? 0 : pi[3]), *w1 = wg[1] + (wg[1] == zero ? 0 : pi[3]);
            const float *w2 = wg[2] + (wg[2] == zero ? 0 : pi[3]), *w3 = wg[3] + (wg[3] == zero ? 0 : pi[3]);
            float *ap = ae + pi[4];
            int q0 = pi[6];
            const int q_end = pi[7];
            const int n_vec = (mul + 7) / 8;
            for (int mk = 0; mk < d_k && q0 < q_end; ++mk) {
                int q1 = q0;
                while (q1 < q_end && pair_info[4 * q1] == mk) ++q1;
                if (q1 == q0) continue;
                float *ar = ap + mk * pi[5];
                int v = 0;
                for (; v + 1 < n_vec; v += 2) {
                    const int oa = 8 * v, ob = oa + 8;
                    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
                    for (int q = q0; q < q1; ++q) {
                        const int xo = pair_info[4 * q + 1];
                        const float *aq = a + 4 * q;
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
                        const float *aq = a + 4 * q;
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
                q0 = q1;
            }
        }
        e += g_n;
    }
    free(a);
    free(zero);
    free(yt);
    return 0;
}
#else
CDP_UVU_KERNEL(cdp_uvu_conv_f32, float)
#endif
CDP_UVU_KERNEL(cdp_uvu_conv_f64, double)

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

#if defined(__AVX2__) && defined(__FMA__)
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
                    for (int v = 0; v < n_vec; ++v) {
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

int cdp_uvu_abi_version(void) { return 4; }

/* slack (columns) that w rows and acc rows need after their last column */
int cdp_uvu_acc_slack(void) { return 8; }
