/* Standalone check of kernels/uvu_conv.c for cross-compiled builds (run under qemu-aarch64 by
 * tests/plugins/backbones/test_chargee3net_native.py): a fixed pseudo-random problem (multiplicities that
 * are not multiples of 8, receivers with 0-6 edges), the float32 and float64 entries with weight rows and
 * with a table, and the receiver-major table entry (float32, written into NaN); prints every accumulator
 * value, one per line, so builds can be compared number by number.
 * Build: cc -O2 -std=c99 uvu_harness.c ../../cdp/plugins/backbones/chargee3net/kernels/uvu_conv.c */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cdp_uvu_conv_f32(int64_t, int64_t, const int64_t *, const int64_t *, const float *, int64_t, const float *,
                     int64_t, const float *, int64_t, float *, int64_t, int64_t, const int32_t *, const int32_t *,
                     const int32_t *, const float *);
int cdp_uvu_conv_f64(int64_t, int64_t, const int64_t *, const int64_t *, const double *, int64_t, const double *,
                     int64_t, const double *, int64_t, double *, int64_t, int64_t, const int32_t *, const int32_t *,
                     const int32_t *, const double *);
int cdp_uvu_conv_table_f32(int64_t, int64_t, const int64_t *, const int64_t *, const float *, int64_t, const float *,
                           const float *, int64_t, double, int64_t, const float *, int64_t, float *, int64_t, int64_t,
                           const int32_t *, const int32_t *, const int32_t *, const float *);
int cdp_uvu_conv_table_f64(int64_t, int64_t, const int64_t *, const int64_t *, const double *, int64_t, const double *,
                           const double *, int64_t, double, int64_t, const double *, int64_t, double *, int64_t, int64_t,
                           const int32_t *, const int32_t *, const int32_t *, const double *);
int cdp_uvu_receivers_table_f32(int64_t, int64_t, const int64_t *, const int64_t *, const float *, int64_t,
                                const float *, const float *, int64_t, double, int64_t, const float *, int64_t, float *,
                                const int64_t *, int64_t, const int32_t *, const int32_t *, const int32_t *,
                                const float *);
int cdp_uvu_vector_path(void);
int cdp_uvu_acc_slack(void);
int cdp_uvu_pad_width(void);

static uint64_t state = 88172645463325252ull;
static double uniform(void)  /* xorshift64: the same numbers on every machine */
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (double)(state >> 11) / 9007199254740992.0;
}

#define N_BLOCKS 4
#define N_PATHS 6
#define N_SEND 7
#define N_RECV 9
#define Y_DIM 9
#define N_INT 17
#define TABLE_SHIFT 3

int main(void)
{
    const int slack = cdp_uvu_acc_slack(), pad = cdp_uvu_pad_width();
    const int block_mul[N_BLOCKS] = {13, 21, 8, 37}, block_d[N_BLOCKS] = {3, 1, 5, 3};
    const int path_block[N_PATHS] = {0, 0, 1, 2, 2, 3}, path_dk[N_PATHS] = {3, 1, 5, 3, 1, 5};
    int x_off[N_BLOCKS], x_width = 0;
    for (int b = 0; b < N_BLOCKS; ++b) {
        x_off[b] = x_width;
        x_width += block_d[b] * ((block_mul[b] + pad - 1) / pad) * pad;
    }
    int32_t paths[8 * N_PATHS], tpaths[8 * N_PATHS], pairs[4 * 512], mj[2048];
    double c[2048];
    int n_pairs = 0, n_terms = 0, w_width = 0, acc_width = 0;
    for (int p = 0; p < N_PATHS; ++p) {
        const int b = path_block[p], mul = block_mul[b], padded = ((mul + pad - 1) / pad) * pad, first = n_pairs;
        for (int mk = 0; mk < path_dk[p]; ++mk)
            for (int mi = 0; mi < block_d[b]; ++mi) {
                if (uniform() < 0.3) continue;
                const int nt = 1 + (int)(3 * uniform());
                pairs[4 * n_pairs] = mk;
                pairs[4 * n_pairs + 1] = mi * padded;
                pairs[4 * n_pairs + 2] = n_terms;
                for (int t = 0; t < nt; ++t, ++n_terms) {
                    mj[n_terms] = (int)(Y_DIM * uniform());
                    c[n_terms] = 2 * uniform() - 1;
                }
                pairs[4 * n_pairs + 3] = n_terms;
                ++n_pairs;
            }
        const int32_t row[8] = {mul, path_dk[p], x_off[b], w_width, acc_width, mul, first, n_pairs};
        memcpy(paths + 8 * p, row, sizeof row);
        memcpy(tpaths + 8 * p, row, sizeof row);
        tpaths[8 * p + 3] = w_width + TABLE_SHIFT;  /* table columns: the packed ones shifted */
        w_width += mul;
        acc_width += path_dk[p] * mul;
    }
    int64_t src[64], dst[64];
    int n_edges = 0;
    for (int r = 0; r < N_RECV; ++r) {
        const int k = (int)(7 * uniform());
        for (int j = 0; j < k; ++j, ++n_edges) {
            dst[n_edges] = r;
            src[n_edges] = (int64_t)(N_SEND * uniform());
        }
    }
    const int n_cols = w_width + TABLE_SHIFT + 2, w_stride = w_width + slack, acc_stride = acc_width + slack;
    double *y = calloc((size_t)n_edges * Y_DIM, sizeof(double)), *w = calloc((size_t)n_edges * w_stride, sizeof(double));
    double *x = calloc((size_t)N_SEND * x_width, sizeof(double)), *r = calloc((size_t)n_edges, sizeof(double));
    double *coef = calloc((size_t)N_INT * 4 * n_cols, sizeof(double));
    for (int i = 0; i < n_edges * Y_DIM; ++i) y[i] = 2 * uniform() - 1;
    for (int e = 0; e < n_edges; ++e)
        for (int j = 0; j < w_width; ++j) w[e * w_stride + j] = 2 * uniform() - 1;
    for (int s = 0; s < N_SEND; ++s)
        for (int b = 0; b < N_BLOCKS; ++b) {
            const int padded = ((block_mul[b] + pad - 1) / pad) * pad;
            for (int mi = 0; mi < block_d[b]; ++mi)
                for (int u = 0; u < block_mul[b]; ++u) x[s * x_width + x_off[b] + mi * padded + u] = 2 * uniform() - 1;
        }
    for (int e = 0; e < n_edges; ++e) r[e] = 4.4 * uniform();
    r[0] = 0.0;
    for (int i = 0; i < N_INT * 4 * n_cols; ++i) coef[i] = 2 * uniform() - 1;
    const double inv_h = N_INT / 4.0;

    float *yf = malloc(sizeof(float) * n_edges * Y_DIM), *wf = malloc(sizeof(float) * n_edges * w_stride);
    float *xf = malloc(sizeof(float) * N_SEND * x_width), *rf = malloc(sizeof(float) * n_edges);
    float *coeff = malloc(sizeof(float) * N_INT * 4 * n_cols), *cf = malloc(sizeof(float) * n_terms);
    for (int i = 0; i < n_edges * Y_DIM; ++i) yf[i] = (float)y[i];
    for (int i = 0; i < n_edges * w_stride; ++i) wf[i] = (float)w[i];
    for (int i = 0; i < N_SEND * x_width; ++i) xf[i] = (float)x[i];
    for (int i = 0; i < n_edges; ++i) rf[i] = (float)r[i];
    for (int i = 0; i < N_INT * 4 * n_cols; ++i) coeff[i] = (float)coef[i];
    for (int i = 0; i < n_terms; ++i) cf[i] = (float)c[i];

    float *af = calloc((size_t)N_RECV * acc_stride, sizeof(float)), *tf = calloc((size_t)N_RECV * acc_stride, sizeof(float));
    double *ad = calloc((size_t)N_RECV * acc_stride, sizeof(double)), *td = calloc((size_t)N_RECV * acc_stride, sizeof(double));
    int status = 0;
    status |= cdp_uvu_conv_f32(0, n_edges, src, dst, yf, Y_DIM, wf, w_stride, xf, x_width, af, acc_stride, N_PATHS,
                               paths, pairs, mj, cf);
    status |= cdp_uvu_conv_table_f32(0, n_edges, src, dst, yf, Y_DIM, rf, coeff, N_INT, inv_h, n_cols, xf, x_width, tf,
                                     acc_stride, N_PATHS, tpaths, pairs, mj, cf);
    status |= cdp_uvu_conv_f64(0, n_edges, src, dst, y, Y_DIM, w, w_stride, x, x_width, ad, acc_stride, N_PATHS, paths,
                               pairs, mj, c);
    status |= cdp_uvu_conv_table_f64(0, n_edges, src, dst, y, Y_DIM, r, coef, N_INT, inv_h, n_cols, x, x_width, td,
                                     acc_stride, N_PATHS, tpaths, pairs, mj, c);
    /* the receiver-major entry into the same channels-last rows, pre-filled with NaN where paths write */
    float *rf32 = calloc((size_t)N_RECV * acc_stride, sizeof(float));
    int64_t ptr[N_RECV + 1], path_acc[2 * N_PATHS];
    for (int rr = 0, e = 0; rr <= N_RECV; ++rr) {
        while (e < n_edges && dst[e] < rr) ++e;
        ptr[rr] = e;
    }
    for (int p = 0; p < N_PATHS; ++p) {
        path_acc[2 * p] = tpaths[8 * p + 4];
        path_acc[2 * p + 1] = acc_stride;
        for (int rr = 0; rr < N_RECV; ++rr)
            for (int i = 0; i < tpaths[8 * p + 1] * tpaths[8 * p]; ++i) rf32[rr * acc_stride + tpaths[8 * p + 4] + i] = 0.f / 0.f;
    }
    status |= cdp_uvu_receivers_table_f32(0, N_RECV, ptr, src, yf, Y_DIM, rf, coeff, N_INT, inv_h, n_cols, xf, x_width,
                                          rf32, path_acc, N_PATHS, tpaths, pairs, mj, cf);
    printf("vector_path %d edges %d status %d\n", cdp_uvu_vector_path(), n_edges, status);
    for (int i = 0; i < N_RECV * acc_stride; ++i)
        printf("%.9e %.9e %.17e %.17e %.9e\n", af[i], tf[i], ad[i], td[i], rf32[i]);
    return status;
}
