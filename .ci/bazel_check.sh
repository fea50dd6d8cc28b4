#!/usr/bin/env bash
# Bazel route check: builds the kernel library with Bazel (BUILD, WORKSPACE)
# and checks that it computes exactly what the setup.py-built library computes.
#
#   bash .ci/bazel_check.sh        (after `pip install --no-build-isolation -e .`)
#
# 1. Installs Debian's offline Bazel (bazel-bootstrap 4.2.3 + bazel-platforms)
#    with apt-get when missing (needs root).
# 2. bazel build //:_nestad_ops.so against the TensorFlow of $PYTHON (default:
#    python3 on PATH); the output stays in Bazel's output base (~/.cache/bazel),
#    no bazel-* links are created in the checkout.
# 3. Runs FusedActivation (mish, gelu, gelu_approximate; half, bfloat16,
#    float, double) on a few hundred values, once with the setup.py library
#    (nestad_tf._loader.load().module) and once with the Bazel one
#    (tf.load_op_library), in two processes (the two libraries register the same
#    op names, so they cannot share one), and requires bit-identical y and f',
#    eagerly and under XLA (jit_compile: the Bazel library's custom calls).
# Exits non-zero with a message saying which step failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
start_seconds=$SECONDS

fail() {
  echo "bazel_check: FAILED: $*" >&2
  exit 1
}

# --- 1. Bazel ---------------------------------------------------------------
if ! command -v bazel >/dev/null 2>&1 || [[ ! -d /usr/share/bazel/tools/platforms ]]; then
  echo "bazel_check: installing bazel-bootstrap and bazel-platforms with apt-get"
  command -v apt-get >/dev/null 2>&1 \
    || fail "bazel is not installed and apt-get is unavailable; install Bazel 4.2.x and Debian's bazel-platforms"
  export DEBIAN_FRONTEND=noninteractive
  apt_log="$(mktemp)"
  if ! apt-get install -y -qq --no-install-recommends bazel-bootstrap bazel-platforms >"$apt_log" 2>&1; then
    apt-get update -qq >>"$apt_log" 2>&1 || true
    apt-get install -y -qq --no-install-recommends bazel-bootstrap bazel-platforms >>"$apt_log" 2>&1 \
      || { tail -20 "$apt_log" >&2; fail "apt-get install bazel-bootstrap bazel-platforms failed"; }
  fi
  rm -f "$apt_log"
fi

# --- 2. Build ---------------------------------------------------------------
PYTHON_BIN_PATH="$("$PYTHON" -c 'import sys; print(sys.executable)')" \
  || fail "cannot run $PYTHON"
export PYTHON_BIN_PATH
# The server exits after 60 idle seconds instead of staying resident; no
# convenience links in the checkout (--symlink_prefix=/).
bazel_cmd=(bazel --max_idle_secs=60)
build_flags=(--symlink_prefix=/ --noshow_progress)
build_start=$SECONDS
build_log="$(mktemp)"
if ! "${bazel_cmd[@]}" build "${build_flags[@]}" //:_nestad_ops.so //:build_info >"$build_log" 2>&1; then
  tail -40 "$build_log" >&2
  rm -f "$build_log"
  fail "bazel build //:_nestad_ops.so failed (output above)"
fi
rm -f "$build_log"
bazel_bin="$("${bazel_cmd[@]}" info "${build_flags[@]}" bazel-bin 2>/dev/null)"
bazel_library="$bazel_bin/_nestad_ops.so"
[[ -f "$bazel_library" ]] || fail "bazel reported success but $bazel_library does not exist"
echo "bazel_check: built $bazel_library in $((SECONDS - build_start)) s"

# --- 3. Compare with the setup.py library -----------------------------------
work_dir="$(mktemp -d)"
trap 'rm -rf "$work_dir"' EXIT

cat >"$work_dir/compare.py" <<'PYTHON_EOF'
"""reference <out.npz>: results of the setup.py library; bazel <lib.so> <ref.npz>: compare."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf

ACTIVATIONS = ["mish", "gelu", "gelu_approximate"]
DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}
# A few hundred values: a dense sweep over the interesting range plus the tails.
VALUES = np.concatenate([
    np.linspace(-12.0, 12.0, 481),
    [0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 30.0, -30.0, 1e4, -1e4, np.inf, -np.inf, np.nan],
])


def run_all(fused_activation):
    results = {}
    for activation in ACTIVATIONS:
        for dtype in DTYPES:
            x = tf.cast(tf.constant(VALUES, tf.float64), dtype)
            y, derivative = fused_activation(x, activation=activation, params=[])
            for name, tensor in (("y", y), ("derivative", derivative)):
                array = tensor.numpy()
                results[f"{activation}/{dtype.name}/{name}"] = array.view(BITS[array.itemsize])
    return results


def main(mode, *args):
    if mode == "reference":
        import nestad_tf._loader
        loaded = nestad_tf._loader.load()
        if loaded.module is None:
            sys.exit(f"the setup.py-built library cannot be used: {loaded.reason}")
        np.savez(args[0], op_namespace=nestad_tf._loader.OP_NAMESPACE,
                 **run_all(loaded.module.fused_activation))
        return
    library_path, reference_path = args
    # This process does not import nestad_tf: its library would register the ops
    # first, and tf.load_op_library would then give this one no wrappers.
    library = tf.load_op_library(library_path)
    reference = np.load(reference_path)
    # tf.load_op_library names the wrapper after the full op type (see nestad_tf._loader).
    op_name = f"{str(reference['op_namespace']).lower()}_fused_activation"
    fused_activation = getattr(library, op_name)
    results = run_all(fused_activation)
    # The same op under XLA: the Bazel library's custom-call lowering and FFI handlers.
    jitted = tf.function(fused_activation, jit_compile=True)
    results.update({f"xla:{key}": bits for key, bits in run_all(jitted).items()})
    mish = tf.function(lambda t: fused_activation(t, activation="mish", params=[]),
                       jit_compile=True)
    hlo = mish.experimental_get_compiler_ir(tf.constant(VALUES, tf.float32))(stage="optimized_hlo")
    if 'custom_call_target="nestad_fused_activation"' not in hlo:
        sys.exit("the Bazel library's op did not lower to nestad's XLA custom call:\n" + hlo)
    mismatches = []
    for label, bits in results.items():
        key = label[len("xla:"):] if label.startswith("xla:") else label
        differing = np.flatnonzero(bits != reference[key])
        if differing.size:
            i = differing[0]
            mismatches.append(f"{label}: {differing.size} of {bits.size} values differ "
                              f"(first at x={float(VALUES[i])!r}: bits {bits[i]:#x} vs setup.py {reference[key][i]:#x})")
    if mismatches:
        sys.exit("the Bazel library differs from the setup.py library:\n  " + "\n  ".join(mismatches))
    print(f"bazel_check: {len(results)} outputs x {VALUES.size} values bit-identical, eager and "
          f"under XLA ({', '.join(ACTIVATIONS)}; {', '.join(d.name for d in DTYPES)})")


main(*sys.argv[1:])
PYTHON_EOF

# TensorFlow's start-up chatter goes to a log, shown only when a step fails.
run_python() {
  if ! "$PYTHON_BIN_PATH" "$work_dir/compare.py" "$@" 2>"$work_dir/stderr.log"; then
    grep -v 'absl::InitializeLog\|oneDNN custom operations' "$work_dir/stderr.log" | tail -30 >&2
    return 1
  fi
}
run_python reference "$work_dir/reference.npz" \
  || fail "computing the reference with the setup.py-built library (nestad_tf._loader) failed"
run_python bazel "$bazel_library" "$work_dir/reference.npz" \
  || fail "the Bazel-built library $bazel_library does not match the setup.py-built one"
echo "bazel_check: OK in $((SECONDS - start_seconds)) s"
