"""A library built for another TF version, missing, or corrupt: one warning, then the TF path.

Each scenario runs in a fresh process with NESTAD_TF_LIBRARY pointing at a doctored
copy of the library in a temporary directory. The child records every warning, computes
values and gradients through the public API (default backend, layer, ActivationFunction),
and tries backend="kernel"; the parent checks the single warning, the reason, the error
and the values against the Keras reference.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import nestad_tf
from activation_cases import expected_y_d
from conftest import tolerance

pytestmark = pytest.mark.subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VALUES = [-np.inf, -20.0, -2.5, -1.0, -0.3, 0.0, 0.7, 1.0, 3.0, 20.0, np.inf]

CHILD = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import tensorflow as tf
        import nestad_tf

        x = tf.constant(json.loads(sys.argv[1]), tf.float32)
        results = {}
        for name in ("mish", "gelu", "softsign"):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = nestad_tf.activation(x, name)   # backend "auto"
            results[name] = [y.numpy().tolist(), tape.gradient(y, x).numpy().tolist()]
        layer_y = nestad_tf.layers.Activation("mish")(x).numpy().tolist()
        function_y = nestad_tf.silu(x).numpy().tolist()
        graph_y = tf.function(lambda t: nestad_tf.mish(t))(x).numpy().tolist()
        info = nestad_tf.backend_info()
        try:
            nestad_tf.activation(x, "mish", backend="kernel")
            kernel_error = None
        except Exception as error:  # pylint: disable=broad-except
            kernel_error = [type(error).__name__, str(error)]
    print(json.dumps({
        "warnings": [[w.category.__name__, str(w.message)] for w in caught],
        "results": results, "layer_y": layer_y, "function_y": function_y, "graph_y": graph_y,
        "kernel_available": info["kernel_available"], "reason": info["reason"],
        "kernel_error": kernel_error,
    }))
    """
)


def _library():
    path = nestad_tf._loader.library_path()  # pylint: disable=protected-access
    if nestad_tf._loader.load().module is None:  # pylint: disable=protected-access
        pytest.skip("these tests doctor a copy of a working kernel library")
    return path


def _run_child(library_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", NESTAD_TF_LIBRARY=library_path,
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    env.pop("NESTAD_TF_DISABLE_KERNELS", None)
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(VALUES)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _write_build_info(directory, version):
    with open(os.path.join(directory, "_build_info.json"), "w") as f:
        json.dump({"tensorflow_version": version}, f)


def _assert_tf_path_used_correctly(run, reason_fragments):
    nestad_warnings = [message for category, message in run["warnings"] if "nestad" in message]
    assert len(nestad_warnings) == 1, f"expected exactly one nestad warning: {nestad_warnings}"
    message = nestad_warnings[0]
    assert "using the pure-TensorFlow path" in message
    for fragment in reason_fragments:
        assert fragment in message, f"{fragment!r} not in warning: {message}"
    assert "--no-build-isolation" in message, f"no rebuild instruction in: {message}"
    assert run["kernel_available"] is False
    assert all(fragment in run["reason"] for fragment in reason_fragments)

    error_type, error_message = run["kernel_error"] or (None, "")
    assert error_type in ("RuntimeError", "ValueError"), run["kernel_error"]
    assert "backend='kernel'" in error_message and reason_fragments[0] in error_message

    x = tf.constant(VALUES, tf.float32)
    tol = tolerance(tf.float32)
    for name, (y, d) in run["results"].items():
        y_ref, _, d_alternatives = expected_y_d(name, {}, x)
        finite = np.isfinite(VALUES)  # the TF path inherits the Keras formula's NaN at +-inf
        np.testing.assert_allclose(np.array(y)[finite], y_ref[finite], err_msg=name, **tol)
        np.testing.assert_allclose(np.array(d)[finite], d_alternatives[0][finite], err_msg=name,
                                   **tol)
    mish_ref = expected_y_d("mish", {}, x)[0]
    silu_ref = expected_y_d("silu", {}, x)[0]
    finite = np.isfinite(VALUES)
    for got, ref in ((run["layer_y"], mish_ref), (run["graph_y"], mish_ref),
                     (run["function_y"], silu_ref)):
        np.testing.assert_allclose(np.array(got)[finite], ref[finite], **tol)


def test_library_built_for_another_tensorflow_version(tmp_path):
    shutil.copy(_library(), tmp_path / "_nestad_ops.so")
    _write_build_info(tmp_path, "2.0.0")
    run = _run_child(str(tmp_path / "_nestad_ops.so"))
    _assert_tf_path_used_correctly(
        run, ["built for TensorFlow 2.0.0", f"TensorFlow {tf.__version__} is running"])


def test_library_without_build_info(tmp_path):
    shutil.copy(_library(), tmp_path / "_nestad_ops.so")
    run = _run_child(str(tmp_path / "_nestad_ops.so"))
    _assert_tf_path_used_correctly(run, ["built for TensorFlow (unknown)"])


def test_missing_library(tmp_path):
    _library()
    run = _run_child(str(tmp_path / "_nestad_ops.so"))
    _assert_tf_path_used_correctly(run, ["does not exist"])


def test_garbage_library(tmp_path):
    _library()
    (tmp_path / "_nestad_ops.so").write_bytes(b"this is not a shared library\x00" * 100)
    _write_build_info(tmp_path, tf.__version__)
    run = _run_child(str(tmp_path / "_nestad_ops.so"))
    _assert_tf_path_used_correctly(run, ["loading", "failed"])


def test_truncated_library(tmp_path):
    with open(_library(), "rb") as f:
        (tmp_path / "_nestad_ops.so").write_bytes(f.read(8192))  # a valid ELF header, cut off
    _write_build_info(tmp_path, tf.__version__)
    run = _run_child(str(tmp_path / "_nestad_ops.so"))
    _assert_tf_path_used_correctly(run, ["loading", "failed"])


def test_shared_library_without_nestad_ops(tmp_path):
    """A loadable library that is not nestad's (a wrong file installed under its name)."""
    _library()
    import math  # pylint: disable=import-outside-toplevel
    if not getattr(math, "__file__", "").endswith(".so"):
        pytest.skip("this Python has no shared-library module to use as a foreign library")
    shutil.copy(math.__file__, tmp_path / "_nestad_ops.so")
    _write_build_info(tmp_path, tf.__version__)
    run = _run_child(str(tmp_path / "_nestad_ops.so"))
    _assert_tf_path_used_correctly(run, ["does not define the nestad ops"])
