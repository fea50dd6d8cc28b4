"""Concurrency and determinism: threads, repeated runs and intra-op thread counts.

The CPU kernels hand elements to threads in blocks of 256 (kernels/fused_activation_ops.cc),
so that every element is computed by the same code path whatever the sharding: the
results must be bit-identical, not merely close.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import tensorflow as tf

import nestad_tf

# (activation, params, dtype, number of elements): sizes that are not multiples of the
# block or of any SIMD width, and large enough that TF's cost model shards them.
CASES = [
    ("mish", {}, "float32", 300_007),
    ("gelu", {}, "float32", 100_003),
    ("gelu", {"approximate": True}, "float64", 65_537),
    ("silu", {}, "bfloat16", 100_001),
    ("softplus", {}, "float16", 100_009),
    ("relu", {"negative_slope": 0.1, "max_value": 6.0}, "float32", 70_001),
    ("squareplus", {"b": 2.0}, "float64", 50_003),
]


def _case_input(dtype, size, seed=7):
    rng = np.random.default_rng(seed)
    values = rng.normal(0.0, 4.0, size)
    values[::997] = np.inf
    values[1::997] = -np.inf
    values[2::997] = np.nan
    return tf.cast(tf.constant(values), dtype)


def _forward_and_gradient(name, params, x, upstream):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = nestad_tf.activation(x, name, backend="kernel", **params)
    return y, tape.gradient(y, x, output_gradients=upstream)


@tf.function(reduce_retracing=True)
def _forward_and_gradient_graph(x, upstream, name, params_items):
    return _forward_and_gradient(name, dict(params_items), x, upstream)


def _digest(*tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(np.asarray(tf.cast(t, tf.float64) if t.dtype == tf.bfloat16 else t).tobytes())
    return h.hexdigest()


def _run_case(case, graph):
    name, params, dtype, size = case
    x = _case_input(dtype, size)
    upstream = tf.cast(_case_input(dtype, size, seed=8), dtype)
    if graph:
        y, dx = _forward_and_gradient_graph(x, upstream, name, tuple(sorted(params.items())))
    else:
        y, dx = _forward_and_gradient(name, params, x, upstream)
    return _digest(y, dx)


def test_repeated_runs_are_bit_identical():
    for case in CASES[:3]:
        digests = {_run_case(case, graph=False) for _ in range(3)}
        digests |= {_run_case(case, graph=True) for _ in range(2)}
        assert len(digests) == 1, f"{case}: results differ between runs"


def test_eight_threads_match_a_serial_run():
    serial = {(i, graph): _run_case(case, graph) for i, case in enumerate(CASES)
              for graph in (False, True)}
    barrier = threading.Barrier(8)
    results, errors = [], []

    def worker(thread_index):
        try:
            barrier.wait(timeout=60)
            order = list(serial)
            order = order[thread_index % len(order):] + order[:thread_index % len(order)]
            for key in order:
                results.append((key, _run_case(CASES[key[0]], key[1])))
        except Exception as error:  # pylint: disable=broad-except
            errors.append(repr(error))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    assert len(results) == 8 * len(serial)
    mismatches = [key for key, digest in results if digest != serial[key]]
    assert not mismatches, f"{len(mismatches)} concurrent results differ from serial: {mismatches[:5]}"


CHILD = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    threads = int(sys.argv[1])
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    sys.path.insert(0, sys.argv[2])
    import test_concurrency as t
    print(json.dumps({"threads": tf.config.threading.get_intra_op_parallelism_threads(),
                      "digests": [t._run_case(case, graph=False) for case in t.CASES]}))
    """
)


@pytest.mark.subprocess
def test_intra_op_thread_counts_give_bit_identical_results():
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
    outcomes = {}
    for threads in (1, 4):
        result = subprocess.run([sys.executable, "-c", CHILD, str(threads), here],
                                capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        outcome = json.loads(result.stdout.strip().splitlines()[-1])
        assert outcome["threads"] == threads
        outcomes[threads] = outcome["digests"]
    # The in-process runs use TF's default pool (one thread per core).
    in_process = [_run_case(case, graph=False) for case in CASES]
    for threads, digests in outcomes.items():
        differing = [case for case, a, b in zip(CASES, digests, in_process) if a != b]
        assert not differing, f"intra-op threads={threads} differ for {differing}"
