#!/usr/bin/env bash
# Builds and runs the standalone GPU test-and-bench program (no TensorFlow needed):
#
#   bash tools/gpu_check/run.sh                 accuracy of every activation + bandwidth table
#   bash tools/gpu_check/run.sh --self-check    no GPU: kernel thread code on the CPU, comparison logic
#   bash tools/gpu_check/run.sh --no-bench | --only mish | --bench-elements N | --require-target
#
# Environment: NVCC (default nvcc), NESTAD_CUDA_ARCHS (default: the GPU's compute
# capability from nvidia-smi, else "80;90"), GPU_CHECK_BUILD (default build/gpu_check).
# Tolerances are read from TOLERANCES in tests/conftest.py (when python3 is present).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
NVCC="${NVCC:-nvcc}"
BUILD="${GPU_CHECK_BUILD:-$ROOT/build/gpu_check}"
mkdir -p "$BUILD"

if [[ -z "${NESTAD_CUDA_ARCHS:-}" ]]; then
  NESTAD_CUDA_ARCHS="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null \
                       | head -1 | tr -d '. ' || true)"
  NESTAD_CUDA_ARCHS="${NESTAD_CUDA_ARCHS:-80;90}"
fi
ARCH_FLAGS=()
for arch in ${NESTAD_CUDA_ARCHS//[;,]/ }; do
  ARCH_FLAGS+=("-gencode=arch=compute_${arch},code=sm_${arch}")
done
mapfile -t FLAGS < <(grep -v '^#' "$ROOT/kernels/cuda/nvcc_flags.txt" | sed '/^\s*$/d')

# Object per source, compiled in parallel (the kernels are the same files setup.py builds).
start=$(date +%s)
pids=()
objects=()
for src in "$ROOT"/kernels/cuda/*.cu "$ROOT/tools/gpu_check/gpu_check.cu"; do
  obj="$BUILD/$(basename "$src" .cu).o"
  objects+=("$obj")
  "$NVCC" "${FLAGS[@]}" "${ARCH_FLAGS[@]}" -I"$ROOT/kernels" -c "$src" -o "$obj" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
"$NVCC" "${ARCH_FLAGS[@]}" "${objects[@]}" -o "$BUILD/gpu_check"
echo "gpu_check: built for sm ${NESTAD_CUDA_ARCHS} in $(( $(date +%s) - start )) s -> $BUILD/gpu_check"

TOLERANCES=""
if command -v python3 >/dev/null; then
  TOLERANCES="$(python3 - "$ROOT/tests/conftest.py" <<'PY'
import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
for node in tree.body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "TOLERANCES":
        items = []
        for key, value in zip(node.value.keys, node.value.values):
            kw = {k.arg: ast.literal_eval(k.value) for k in value.keywords}
            items.append(f"{key.attr}={kw['rtol']}:{kw['atol']}")
        print(",".join(items))
PY
)"
fi
exec "$BUILD/gpu_check" ${TOLERANCES:+--tolerances "$TOLERANCES"} "$@"
