// onnxruntime custom operator library of cdp: ai.cdp.UvuConvTable, ChargE3Net's convolution aggregate
// computed by cdp's fused kernel (uvu_conv.c, compiled in per vector path: ort_isa.c), so an exported
// decoder never materialises per-edge tensor-product outputs.  Built and verified by cdp/plugins/backbones/chargee3net/ort_ops.py;
// registered with SessionOptions.register_custom_ops_library (Python) or RegisterCustomOpsLibrary (C++).
//
// UvuConvTable(x [Ns, X] f32, sh [E, dY] f32, r [E] f32, src [E] i64, dst [E] i64, slots [R] f32,
//              knots [n + 1, 2, W] f32, inv_h [1] f32, paths [P, 8] i32, pairs [Q, 4] i32, m_j [T] i32, c [T] f32,
//              path_block [P, 2] i64) -> M [R · mid] f32
// x: the packed senders (lin1's output, each sender irrep [m_i][mul padded to 8]); sh, r: the edges'
// harmonics and lengths (Å); edges in any order (sorted here by receiver); slots: one entry per receiver
// (only its length is read); knots/inv_h: the radial table (values and h·slopes at the knots); paths/pairs/m_j/c: the kernel's plan; path_block:
// per path the (first column, width) of its mid block.  M holds block b of the mid irreps as [R, d_b, mul_b]
// at R · (first column of b) (cdp's "blocks" layout).  Bad shapes or indices raise an error, never read
// out of bounds.  One thread (cdp's sessions run one intra-op thread).
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

extern "C" {
typedef int (*cdp_receivers_fn)(int64_t, int64_t, const int64_t *, const int64_t *, const float *, int64_t,
                                const float *, const float *, int64_t, double, int64_t, const float *, int64_t,
                                float *, const int64_t *, int64_t, const int32_t *, const int32_t *, const int32_t *,
                                const float *);
int cdp_ort_avx512_receivers_table_f32(int64_t, int64_t, const int64_t *, const int64_t *, const float *, int64_t,
                                       const float *, const float *, int64_t, double, int64_t, const float *, int64_t,
                                       float *, const int64_t *, int64_t, const int32_t *, const int32_t *,
                                       const int32_t *, const float *);
int cdp_ort_avx2_receivers_table_f32(int64_t, int64_t, const int64_t *, const int64_t *, const float *, int64_t,
                                     const float *, const float *, int64_t, double, int64_t, const float *, int64_t,
                                     float *, const int64_t *, int64_t, const int32_t *, const int32_t *,
                                     const int32_t *, const float *);
int cdp_ort_generic_receivers_table_f32(int64_t, int64_t, const int64_t *, const int64_t *, const float *, int64_t,
                                        const float *, const float *, int64_t, double, int64_t, const float *, int64_t,
                                        float *, const int64_t *, int64_t, const int32_t *, const int32_t *,
                                        const int32_t *, const float *);
}

namespace {

const char *g_isa = "generic";

cdp_receivers_fn pick_kernel() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma")) {
    g_isa = "avx512";
    return cdp_ort_avx512_receivers_table_f32;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    g_isa = "avx2";
    return cdp_ort_avx2_receivers_table_f32;
  }
#endif
  return cdp_ort_generic_receivers_table_f32;
}

const cdp_receivers_fn g_kernel = pick_kernel();

void require(bool ok, const std::string &what) {
  if (!ok) throw Ort::Exception("UvuConvTable: " + what, ORT_INVALID_ARGUMENT);
}

struct UvuKernel {
  UvuKernel(const OrtApi &, const OrtKernelInfo *) {}

  void Compute(OrtKernelContext *context) {
    Ort::KernelContext ctx(context);
    auto in = [&](size_t i) { return ctx.GetInput(i); };
    auto shape = [&](size_t i) { return in(i).GetTensorTypeAndShapeInfo().GetShape(); };
    const auto xs = shape(0), shs = shape(1), rs = shape(2), srcs = shape(3), dsts = shape(4), slots = shape(5);
    const auto cs = shape(6), hs = shape(7), ps = shape(8), qs = shape(9), mjs = shape(10), ccs = shape(11),
               pbs = shape(12);
    require(hs.size() == 1 && hs[0] == 1, "inv_h must hold one value");
    require(xs.size() == 2 && shs.size() == 2 && rs.size() == 1 && srcs.size() == 1 && dsts.size() == 1 &&
                slots.size() == 1 && cs.size() == 3 && cs[1] == 2 && ps.size() == 2 && ps[1] == 8 && qs.size() == 2 &&
                qs[1] == 4 && mjs.size() == 1 && ccs.size() == 1 && mjs[0] == ccs[0] && pbs.size() == 2 &&
                pbs[1] == 2 && pbs[0] == ps[0] && cs[0] >= 2,
            "input shapes do not match the operator's signature");
    const int64_t n_send = xs[0], x_width = xs[1], n_edges = shs[0], y_dim = shs[1], n_recv = slots[0];
    require(rs[0] == n_edges && srcs[0] == n_edges && dsts[0] == n_edges, "sh, r, src and dst disagree on the edge count");
    const float *x = in(0).GetTensorData<float>(), *sh = in(1).GetTensorData<float>(), *r = in(2).GetTensorData<float>();
    const int64_t *src = in(3).GetTensorData<int64_t>(), *dst = in(4).GetTensorData<int64_t>();
    const float *coef = in(6).GetTensorData<float>(), inv_h = in(7).GetTensorData<float>()[0];
    require(std::isfinite(inv_h) && inv_h > 0.f, "inv_h must be finite and positive");
    const int32_t *paths = in(8).GetTensorData<int32_t>(), *pairs = in(9).GetTensorData<int32_t>();
    const int32_t *mj = in(10).GetTensorData<int32_t>();
    const float *c = in(11).GetTensorData<float>();
    const int64_t *block = in(12).GetTensorData<int64_t>();
    const int64_t n_paths = ps[0], n_pairs = qs[0], n_terms = mjs[0], n_int = cs[0] - 1, n_cols = cs[2];

    // the plan (initializers of the exported file) is checked as strictly as the edges
    int64_t mid = 0;
    for (int64_t p = 0; p < n_paths; ++p) {
      const int32_t *pi = paths + 8 * p;
      const int64_t mul = pi[0], d_k = pi[1], padmul = (mul + 7) / 8 * 8;
      require(mul >= 1 && mul <= 1024 && d_k >= 1 && d_k <= 9 && (d_k & 1) && pi[2] >= 0 && pi[3] >= 0 &&
                  pi[3] + mul <= n_cols && pi[6] >= 0 && pi[6] <= pi[7] && pi[7] <= n_pairs && pi[5] >= mul,
              "path table out of range");
      for (int64_t q = pi[6]; q < pi[7]; ++q) {
        const int32_t *qi = pairs + 4 * q;
        require(qi[0] >= 0 && qi[0] < d_k && qi[1] >= 0 && qi[1] % padmul == 0 && qi[1] / padmul < 9 &&
                    pi[2] + qi[1] + padmul <= x_width && qi[2] >= 0 && qi[2] <= qi[3] && qi[3] <= n_terms,
                "pair table out of range");
        for (int64_t t = qi[2]; t < qi[3]; ++t) require(mj[t] >= 0 && mj[t] < y_dim, "harmonic index out of range");
      }
      mid += mul * d_k;
    }
    for (int64_t p = 0; p < n_paths; ++p) {
      const int32_t *pi = paths + 8 * p;
      const int64_t start = block[2 * p], width = block[2 * p + 1], col = pi[4] - start;
      require(start >= 0 && width >= 1 && start + width <= mid && col >= 0 &&
                  col + (pi[1] - 1) * (int64_t)pi[5] + pi[0] <= width,
              "path blocks out of range");
    }
    std::vector<int64_t> ptr(n_recv + 1, 0), order(n_edges), path_acc(2 * n_paths);
    for (int64_t e = 0; e < n_edges; ++e) {
      require(src[e] >= 0 && src[e] < n_send, "a sender index is out of range");
      require(dst[e] >= 0 && dst[e] < n_recv, "a receiver index is out of range");
      ++ptr[dst[e] + 1];
    }
    for (int64_t k = 0; k < n_recv; ++k) ptr[k + 1] += ptr[k];
    std::vector<int64_t> fill(ptr.begin(), ptr.end() - 1);
    for (int64_t e = 0; e < n_edges; ++e) order[fill[dst[e]]++] = e;  // stable: edges keep their order per receiver
    std::vector<int64_t> src_s(n_edges);
    std::vector<float> sh_s(n_edges * y_dim), r_s(n_edges);
    for (int64_t k = 0; k < n_edges; ++k) {
      const int64_t e = order[k];
      src_s[k] = src[e];
      r_s[k] = r[e];
      std::memcpy(&sh_s[k * y_dim], sh + e * y_dim, sizeof(float) * y_dim);
    }
    for (int64_t p = 0; p < n_paths; ++p) {
      const int64_t start = block[2 * p];
      path_acc[2 * p] = n_recv * start + (paths[8 * p + 4] - start);
      path_acc[2 * p + 1] = block[2 * p + 1];
    }
    auto out = ctx.GetOutput(0, std::vector<int64_t>{n_recv * mid});
    float *acc = out.GetTensorMutableData<float>();
    const int status = g_kernel(0, n_recv, ptr.data(), src_s.data(), sh_s.data(), y_dim, r_s.data(), coef, n_int,
                                (double)inv_h, n_cols, x, x_width, acc, path_acc.data(), n_paths, paths, pairs, mj, c);
    require(status == 0, "kernel status " + std::to_string(status));
  }
};

struct UvuOp : Ort::CustomOpBase<UvuOp, UvuKernel> {
  void *CreateKernel(const OrtApi &api, const OrtKernelInfo *info) const { return new UvuKernel(api, info); }
  const char *GetName() const { return "UvuConvTable"; }
  size_t GetInputTypeCount() const { return 13; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    switch (i) {
      case 3: case 4: case 12: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
      case 8: case 9: case 10: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
      default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    }
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

UvuOp g_op;

}  // namespace

extern "C" {
__attribute__((visibility("default"))) const char *cdp_ort_ops_isa(void) { return g_isa; }

__attribute__((visibility("default"))) OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *api) {
  Ort::InitApi(api->GetApi(ORT_API_VERSION));
  static Ort::CustomOpDomain *domain = nullptr;
  try {
    if (domain == nullptr) {
      domain = new Ort::CustomOpDomain("ai.cdp");
      domain->Add(&g_op);
    }
    Ort::UnownedSessionOptions(options).Add(*domain);
  } catch (const Ort::Exception &e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
}
