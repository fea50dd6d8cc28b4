#!/usr/bin/env bash
# CI compile check of the CUDA code; needs nvcc, no GPU. Skips (exit 0) without nvcc.
#   1. kernels/cuda/*.cu with the flags of kernels/cuda/nvcc_flags.txt, SASS for sm_80 and sm_90;
#   2. the TF op glue (kernels/cuda/*_ops.cc, g++ -DGOOGLE_CUDA=1) when CUDA
#      TensorFlow headers are at hand: $NESTAD_TF_CUDA_INCLUDE (a CUDA TF wheel's
#      tensorflow/include), or the Python's TensorFlow when it is a CUDA build;
#   3. the XLA FFI handlers (kernels/cuda/*_ffi.cc, the C++ compiler, XLA's header-only
#      FFI API from the Python's TensorFlow, CUDA build or not);
#   4. tools/gpu_check (sm_90), linked, and its --self-check run (CPU only).
# Fails on any compile error or self-check failure. Prints its time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$NVCC" ]]; then
  echo "cuda_check: nvcc not found, skipped"
  exit 0
fi
OUT="$(mktemp -d /tmp/nestad_cuda_check.XXXXXX)"
trap 'rm -rf "$OUT"' EXIT
start=$(date +%s)
mapfile -t FLAGS < <(grep -v '^#' "$ROOT/kernels/cuda/nvcc_flags.txt" | sed '/^\s*$/d')
INCLUDE=(-I"$ROOT/kernels")

names=()
pids=()
compile() {  # name, command...
  local name="$1"
  shift
  names+=("$name")
  ("$@" > "$OUT/$name.log" 2>&1) &
  pids+=($!)
}
for src in "$ROOT"/kernels/cuda/*.cu; do
  compile "$(basename "$src")" "$NVCC" "${FLAGS[@]}" -gencode=arch=compute_80,code=[sm_80,sm_90] \
    "${INCLUDE[@]}" -c "$src" -o "$OUT/$(basename "$src" .cu).o"
done
compile gpu_check.cu "$NVCC" "${FLAGS[@]}" -gencode=arch=compute_90,code=sm_90 "${INCLUDE[@]}" \
  -c "$ROOT/tools/gpu_check/gpu_check.cu" -o "$OUT/gpu_check.o"

TF_INCLUDE="${NESTAD_TF_CUDA_INCLUDE:-}"
if [[ -z "$TF_INCLUDE" ]] && command -v python3 >/dev/null; then
  TF_INCLUDE="$(python3 -c 'import tensorflow as tf; print(tf.sysconfig.get_include() if tf.sysconfig.get_build_info().get("is_cuda_build") else "")' 2>/dev/null || true)"
fi
if [[ -n "$TF_INCLUDE" && -f "$TF_INCLUDE/third_party/gpus/cuda/include/cuda_runtime.h" ]]; then
  for glue in "$ROOT"/kernels/cuda/*_ops.cc; do
    compile "$(basename "$glue")" "${CXX:-g++}" -c -O2 -g0 -fPIC --std=c++17 \
      -D_GLIBCXX_USE_CXX11_ABI=1 -DEIGEN_MAX_ALIGN_BYTES=64 -DGOOGLE_CUDA=1 \
      -Wno-deprecated-declarations -Wno-interference-size -Wno-unused-function \
      -I"$TF_INCLUDE" -I"$TF_INCLUDE/third_party/gpus/cuda/include" "${INCLUDE[@]}" \
      "$glue" -o "$OUT/glue_$(basename "$glue" .cc).o"
  done
else
  echo "cuda_check: TF op glue not compiled (no CUDA TensorFlow headers; set NESTAD_TF_CUDA_INCLUDE)"
fi

TF_ANY_INCLUDE="$(python3 -c 'import tensorflow as tf; print(tf.sysconfig.get_include())' 2>/dev/null || true)"
if [[ -n "$TF_ANY_INCLUDE" && -f "$TF_ANY_INCLUDE/xla/ffi/api/ffi.h" ]]; then
  for handlers in "$ROOT"/kernels/cuda/*_ffi.cc; do
    compile "$(basename "$handlers")" "${CXX:-g++}" -c -O2 -g0 -fPIC --std=c++17 \
      -D_GLIBCXX_USE_CXX11_ABI=1 -Wno-deprecated-declarations -I"$TF_ANY_INCLUDE" "${INCLUDE[@]}" \
      "$handlers" -o "$OUT/ffi_$(basename "$handlers" .cc).o"
  done
else
  echo "cuda_check: XLA FFI handlers not compiled (no TensorFlow with XLA's FFI headers)"
fi

failed=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "cuda_check: FAILED to compile ${names[$i]}:"
    cat "$OUT/${names[$i]}.log"
    failed=1
  fi
done
if [[ $failed -eq 0 ]]; then
  objects=()
  for src in "$ROOT"/kernels/cuda/*.cu; do objects+=("$OUT/$(basename "$src" .cu).o"); done
  objects+=("$OUT/gpu_check.o")
  if "$NVCC" -gencode=arch=compute_90,code=sm_90 "${objects[@]}" -o "$OUT/gpu_check" \
      > "$OUT/link.log" 2>&1 && "$OUT/gpu_check" --self-check > "$OUT/self_check.log" 2>&1; then
    tail -1 "$OUT/self_check.log"
  else
    echo "cuda_check: FAILED to link or self-check tools/gpu_check:"
    cat "$OUT/link.log"
    grep -v " ok$" "$OUT/self_check.log" 2>/dev/null | tail -40 || true
    failed=1
  fi
fi
echo "cuda_check: $( [[ $failed -eq 0 ]] && echo ok || echo FAILED ) ($("$NVCC" --version | tail -1 | tr -s ' '); $(( $(date +%s) - start )) s)"
exit $failed
