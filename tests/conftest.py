"""Shared test helpers: dtypes, tolerances (kept here only), edge values."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Allocator peaks (get_memory_info) on every x86 CPU: TensorFlow keeps them only in its
# BFC allocator, the default only where oneDNN is on (AVX-512 CPUs; not on e.g. AMD EPYC).
# Subprocesses the tests start inherit it.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]

# Tolerances of a nestad result against a float64 reference evaluated on the
# same (already rounded) inputs. Half types compute in float32 and round once
# on output, so their tolerance is their own rounding.
TOLERANCES = {
    tf.float16: dict(rtol=2e-3, atol=2e-3),
    tf.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
    tf.float32: dict(rtol=2e-5, atol=2e-6),
    # float64: TF's own float64 references are off by ~1e-9 in places (the
    # gradient of tf.math.erfc), and nestad's parameters are float32 attributes.
    tf.float64: dict(rtol=1e-7, atol=1e-8),
}

# Values every activation is checked at (cast to each dtype; those that
# overflow a half type become +-inf, which is itself an edge value).
EDGE_VALUES = [0.0, -0.0, 1e-30, -1e-30, 1.0, -1.0, 20.0, -20.0, 1e4, -1e4,
               np.inf, -np.inf, np.nan]


def tolerance(dtype):
    return TOLERANCES[tf.as_dtype(dtype)]


def dtype_id(dtype):
    return tf.as_dtype(dtype).name


@pytest.fixture(params=DTYPES, ids=dtype_id)
def dtype(request):
    return request.param

# Near an activation's breakpoint b (|x - b| <= BREAKPOINT_ZONE * max(1, |b|)), y and f'
# may follow either side of the kink and are compared at BREAKPOINT_TOLERANCE: the
# reference does not always resolve a kink (tf.nn.selu's gradient for -1e-16 < x < 0)
# and TF's kernels read subnormal inputs as zero. Used by tests/test_properties.py.
BREAKPOINT_ZONE = 1e-7
BREAKPOINT_TOLERANCE = dict(rtol=1e-5, atol=1e-5)
