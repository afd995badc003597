#!/usr/bin/env bash
# Build and run the C++/onnxruntime example against a tiny exported model; fail if it differs from PyTorch.
#
# Needs: the cdp environment (torch, onnx, onnxscript, onnxruntime from pip) active, g++ (or cmake).
# onnxruntime's library comes from the PyPI wheel; its C/C++ headers are vendored in cdp/export/third_party/onnxruntime.
# Env: CDP_CPP_BACKBONE (chargee3net|invdeepdft|equideepdft, default chargee3net), CDP_CPP_BUILD (build dir).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
B=${CDP_CPP_BUILD:-build/cpp}
BACKBONE=${CDP_CPP_BACKBONE:-chargee3net}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$B"

echo "== tiny $BACKBONE checkpoint, ONNX export and example inputs"
"$PY" examples/cpp/make_tiny_checkpoint.py "$B/tiny.ckpt" "$BACKBONE"
"$PY" -m cdp.cli.main export "$B/tiny.ckpt" --format onnx -o "$B/export" --example-inputs "$B/example"

echo "== build (onnxruntime library from the PyPI wheel)"
ORT_LIB_DIR=$("$PY" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')
if command -v cmake >/dev/null 2>&1; then
  cmake -S examples/cpp -B "$B/cmake" -DORT_LIB_DIR="$ORT_LIB_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$B/cmake" -j 2
  BIN="$B/cmake/cdp_ort_density"
else
  make -C examples/cpp BUILD="$(pwd)/$B/make" ORT_LIB_DIR="$ORT_LIB_DIR"
  BIN="$B/make/cdp_ort_density"
fi

echo "== run"
"$BIN" "$B/export" "$B/example" "$B/density_cpp.npy" --batch 8 --workers 2 --check 1e-5

echo "== compare in Python"
"$PY" - "$B" <<'PYEOF'
import sys, numpy as np
b = sys.argv[1]
ref = np.load(f"{b}/example/density.npy"); got = np.load(f"{b}/density_cpp.npy")
assert got.shape == ref.shape, (got.shape, ref.shape)
rel = np.abs(got - ref).max() / np.abs(ref).max()
print(f"C++ onnxruntime vs PyTorch: {len(ref)} probes, max|diff|/max|rho| = {rel:.2e}")
sys.exit(0 if rel <= 1e-5 else 1)
PYEOF

if [ "$BACKBONE" = chargee3net ]; then
  echo "== the same model exported with cdp's onnxruntime operators (--ops cdp), run with its library"
  "$PY" -m cdp.cli.main export "$B/tiny.ckpt" --format onnx --ops cdp -o "$B/export-cdp-ops" --force
  "$BIN" "$B/export-cdp-ops" "$B/example" "$B/density_cpp_ops.npy" --batch 8 --workers 2 --check 1e-5 \
    --custom-ops "$B/export-cdp-ops/cdp_ort_ops.so"
  "$PY" -c "import sys, numpy as np; r = np.load('$B/example/density.npy'); g = np.load('$B/density_cpp_ops.npy'); d = np.abs(g - r).max() / np.abs(r).max(); print(f'C++ with cdp operators vs PyTorch: max|diff|/max|rho| = {d:.2e}'); sys.exit(0 if d <= 1e-5 else 1)"
fi
