"""64-bit indexing: a tensor of more than 2^31 elements goes through both ops correctly.

A bfloat16 tensor of 2^31 + 1031*k elements is 4 GiB. To keep the peak at two such
tensors, each op runs in a tf.function whose input is built inside it (tf.tile of a
short pattern, so the output takes over the input's buffer) with shapes unknown at
trace time (so Grappler folds no 4 GiB constant). Every element is then checked, in
chunks, against the Keras reference of its pattern value, and dx against 2 f'.

The > 2^31 case needs ~10 GiB of memory (10.2 GB peak RSS, about a minute on 2
idle cores): it is marked slow and runs whenever at least 16 GiB are available
(CI's 24 GiB machines), or when NESTAD_TF_LARGE_TESTS=1 forces it;
NESTAD_TF_SKIP_LARGE_TESTS=1 skips it. The same code runs on a 16.8M-element
tensor in every suite.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PATTERN = 1031  # prime: pattern rows never line up with the kernel's 256-element blocks
LARGE = 2**31 // PATTERN + 2  # rows of the pattern: 2,147,485,365 elements > 2^31
SMALL = 2**24 // PATTERN + 2

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    import tensorflow as tf
    import nestad_tf
    from activation_cases import expected_y_d
    from conftest import tolerance

    name, rows = sys.argv[1], int(sys.argv[2])
    lib = nestad_tf._loader.load().module
    spec = nestad_tf.registry.get(name)
    kernel_name, kernel_params = spec.kernel_attrs(spec.bind({}))
    values = np.concatenate([np.linspace(-12.0, 12.0, %(pattern)d - 3), [np.inf, -np.inf, 0.0]])
    pattern = tf.cast(tf.constant(values), tf.bfloat16)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.bfloat16), tf.TensorSpec([], tf.int64)])
    def forward(pattern, rows):
        return lib.fused_activation(tf.tile(pattern, [rows]), activation=kernel_name,
                                           params=kernel_params)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.bfloat16)])
    def backward(d):
        dy = tf.fill(tf.shape(d, out_type=tf.int64), tf.constant(2, tf.bfloat16))
        return lib.fused_activation_grad(dy, d)

    def as_float32(bits):
        return (bits.astype(np.uint32) << 16).view(np.float32)

    def check(tensor, expected_row, what):
        bits = np.asarray(tensor).view(np.uint16).reshape(rows, -1)
        expected = np.asarray(tf.cast(tf.cast(expected_row, tf.bfloat16), tf.float32))
        tol = tolerance(tf.bfloat16)
        allowed = tol["atol"] + tol["rtol"] * np.abs(expected)
        bad = 0
        for start in range(0, rows, 1 << 15):
            got = as_float32(bits[start:start + (1 << 15)])
            with np.errstate(invalid="ignore"):
                ok = (np.abs(got - expected) <= allowed) | (got == expected)
            bad += int(np.count_nonzero(~ok))
        assert bad == 0, f"{what}: {bad} elements wrong"

    started = time.time()
    y, d = forward(pattern, rows)
    n = int(tf.size(y, out_type=tf.int64))  # int32 would wrap past 2^31
    forward_s = time.time() - started
    y_ref, d_ref, _ = expected_y_d(name, {}, pattern)
    check(y, y_ref, "y")
    # The very last elements (past 2^31 in the large case), as Python floats: a slice
    # of y may share y's buffer and would keep all of it alive.
    last = [float(v) for v in tf.cast(y[n - 3:], tf.float32).numpy()]
    del y
    check(d, d_ref, "f'")
    started = time.time()
    dx = backward(d)
    backward_s = time.time() - started
    d_bits, dx_bits = np.asarray(d).view(np.uint16), np.asarray(dx).view(np.uint16)
    for start in range(0, n, 1 << 25):
        stop = start + (1 << 25)
        twice = 2 * as_float32(d_bits[start:stop])
        assert np.array_equal(as_float32(dx_bits[start:stop]), twice, equal_nan=True), start
    print(json.dumps({
        "elements": n, "forward_s": forward_s, "backward_s": backward_s,
        "last": last,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }))
    """ % {"pattern": PATTERN}
)


def _run(name, rows):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", CHILD, name, str(rows)],
                            capture_output=True, text=True, timeout=1800, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.subprocess
def test_forward_and_backward_every_element_16m_bfloat16():
    run = _run("mish", SMALL)
    assert run["elements"] == SMALL * PATTERN > 2**24


@pytest.mark.slow
@pytest.mark.subprocess
def _available_gib():
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


_RUN_LARGE = not os.environ.get("NESTAD_TF_SKIP_LARGE_TESTS") and (
    os.environ.get("NESTAD_TF_LARGE_TESTS") or _available_gib() >= 16)


@pytest.mark.skipif(not _RUN_LARGE, reason="needs ~10 GiB: runs when >= 16 GiB are available "
                    "or NESTAD_TF_LARGE_TESTS=1")
def test_forward_and_backward_more_than_2_pow_31_elements_bfloat16():
    run = _run("mish", LARGE)
    assert run["elements"] == LARGE * PATTERN > 2**31
    print(json.dumps(run))
