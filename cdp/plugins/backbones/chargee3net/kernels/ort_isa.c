/* cdp's fused kernel (kernels/uvu_conv.c) compiled once per vector path into the onnxruntime operator
 * library, its entry points renamed cdp_ort_<CDP_ORT_ISA>_*: one library runs on every x86-64 CPU and picks
 * its path at load (ort_ops.cc).  Built by ort_ops.py with -DCDP_ORT_ISA=avx512|avx2|generic
 * and that path's flags. */
#define CDP_ORT_CAT2(a, b, c) a##b##c
#define CDP_ORT_CAT(a, b, c) CDP_ORT_CAT2(a, b, c)
#define CDP_ORT_NAME(n) CDP_ORT_CAT(cdp_ort_, CDP_ORT_ISA, n)
#define cdp_uvu_abi_version CDP_ORT_NAME(_abi_version)
#define cdp_uvu_acc_slack CDP_ORT_NAME(_acc_slack)
#define cdp_uvu_pad_width CDP_ORT_NAME(_pad_width)
#define cdp_uvu_max_mul CDP_ORT_NAME(_max_mul)
#define cdp_uvu_vector_path CDP_ORT_NAME(_vector_path)
#define cdp_uvu_conv_f32 CDP_ORT_NAME(_conv_f32)
#define cdp_uvu_conv_f64 CDP_ORT_NAME(_conv_f64)
#define cdp_uvu_conv_table_f32 CDP_ORT_NAME(_conv_table_f32)
#define cdp_uvu_conv_table_f64 CDP_ORT_NAME(_conv_table_f64)
#define cdp_uvu_receivers_table_f32 CDP_ORT_NAME(_receivers_table_f32)
#define cdp_uvu_receivers_table_f64 CDP_ORT_NAME(_receivers_table_f64)
#define cdp_uvu_conv_backward_f32 CDP_ORT_NAME(_conv_backward_f32)
#define cdp_uvu_conv_backward_f64 CDP_ORT_NAME(_conv_backward_f64)
#include "uvu_conv.c"
