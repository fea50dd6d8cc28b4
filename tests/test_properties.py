"""Property tests: random shapes, layouts, dtypes, parameters and values from the whole float range.

For every built-in activation, hypothesis draws parameters, a shape (scalar, empty,
up to rank 6), a memory layout (transposed, strided, reversed, a non-contiguous
NumPy array) and values from the entire range of the dtype: +-inf, NaN,
subnormals, the largest finite numbers, the activation's breakpoints and the
moderate range where the activation bends. The fused kernel and the pure-TF path
must reproduce y and dy/dx of the Keras reference (see `expected_over_float_range`).
"""

import math
import os

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nestad_tf
from activation_cases import expected_y_d
from conftest import (
    BREAKPOINT_TOLERANCE,
    BREAKPOINT_ZONE,
    DTYPES,
    EDGE_VALUES,
    dtype_id,
    tolerance as reference_tolerance,
)
from nestad_tf import registry

# NESTAD_TF_PROPERTY_EXAMPLES=1000 for a long hunt; the suite default stays fast.
PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("NESTAD_TF_PROPERTY_EXAMPLES", "40")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _float32s(low, high):
    # Parameters are float32 attributes of the kernel op; drawing float32 values
    # keeps the kernel and the float64 reference on exactly the same parameter.
    return st.floats(float(np.float32(low)), float(np.float32(high)), width=32)


# Parameter strategies, by (activation, parameter) or by parameter name. A parameter
# that appears here nowhere fails the test: new activations must say what they accept.
PARAM_STRATEGIES = {
    ("celu", "alpha"): _float32s(0.05, 5.0),
    ("elu", "alpha"): _float32s(0.0, 5.0),
    ("hard_shrink", "threshold"): _float32s(0.0, 3.0),
    ("soft_shrink", "threshold"): _float32s(0.0, 3.0),
    "threshold": _float32s(-3.0, 3.0),
    "default_value": _float32s(-5.0, 5.0),
    "negative_slope": st.one_of(st.just(0.0), _float32s(-1.0, 1.0)),
    "max_value": st.one_of(st.none(), _float32s(0.25, 10.0)),
    "b": st.one_of(st.just(0.0), _float32s(0.0, 10.0)),
    "approximate": st.booleans(),
}

KERNEL_SPECS = sorted(registry.builtin_specs(), key=lambda s: s.name)

# Sides of each dimension by rank, so that an example has at most a few hundred elements.
MAX_SIDE_BY_RANK = {0: 1, 1: 64, 2: 12, 3: 6, 4: 4, 5: 3, 6: 2}
LAYOUTS = ("contiguous", "transposed", "strided", "reversed", "numpy_non_contiguous")


@st.composite
def activation_params(draw, spec):
    params = {}
    for name, _ in spec.params:
        strategy = PARAM_STRATEGIES.get((spec.name, name), PARAM_STRATEGIES.get(name))
        assert strategy is not None, f"no strategy for parameter {spec.name}.{name}"
        params[name] = draw(strategy)
    return params


def _values(dtype, breakpoints):
    width = {tf.float16: 16, tf.float32: 32, tf.float64: 64}.get(dtype, 32)  # bfloat16: via float32
    return st.one_of(
        st.floats(width=width, allow_nan=True, allow_infinity=True, allow_subnormal=True),
        st.floats(-40.0, 40.0, width=width),
        st.sampled_from(list(EDGE_VALUES) + [float(b) for b in breakpoints]),
    )


@st.composite
def activation_inputs(draw, dtype, breakpoints):
    """(x, layout): a tensor or NumPy array of `dtype` values, laid out as drawn."""
    rank = draw(st.integers(0, 6))
    shape = tuple(draw(st.lists(st.integers(0, MAX_SIDE_BY_RANK[rank]), min_size=rank,
                                max_size=rank)))
    layout = draw(st.sampled_from(LAYOUTS if rank else ("contiguous",)))
    stored = list(shape)
    if layout == "strided":
        stored[0] *= 2
    np_dtype = {tf.float16: np.float16, tf.float64: np.float64}.get(dtype, np.float32)
    values = draw(hnp.arrays(np_dtype, tuple(stored), elements=_values(dtype, breakpoints)))
    if layout == "numpy_non_contiguous":
        values = np.asfortranarray(values) if values.ndim > 1 else values[::-1]
        if dtype == tf.bfloat16:
            values = values.astype(tf.bfloat16.as_numpy_dtype)
        return values, layout
    x = tf.cast(tf.constant(values), dtype)
    if layout == "transposed":
        x = tf.transpose(x, draw(st.permutations(range(rank))))
    elif layout == "strided":
        x = x[::2]
    elif layout == "reversed":
        x = tf.reverse(x, axis=[rank - 1])
    return x, layout


# ----------------------------------------------------------------------------------
# Expected values over the whole float range.

# Where the float64 reference itself overflows at a finite input (float64 inputs
# past ~1e150: squareplus's x^2, gelu's x^3), its value is continued from the
# largest of these magnitudes at which it is still defined.
_ANCHORS = (1e150, 1e100, 1e50, 1e20, 1e8)


def _reference(spec, params, values):
    x64 = tf.constant(np.asarray(values, np.float64))
    with tf.GradientTape() as tape:
        tape.watch(x64)
        y = spec.reference(x64, **params)
    d = tape.gradient(y, x64, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return np.asarray(y, np.float64), np.asarray(d, np.float64)


def _continue_overflowed_reference(spec, params, xs, y, d):
    """Replaces reference values broken by float64 overflow at finite |x| > 1e8."""
    broken = np.isfinite(xs) & ~(np.isfinite(y) & np.isfinite(d))
    for anchor in _ANCHORS:
        todo = broken & (np.abs(xs) > anchor)
        if not todo.any():
            continue
        at = np.sign(xs) * anchor
        y_at, d_at = _reference(spec, params, at)
        usable = todo & ~np.isnan(y_at) & ~np.isnan(d_at)
        with np.errstate(invalid="ignore", over="ignore"):
            # y has a finite limit where f' decays faster than 1/x; else it grows like f' x.
            linear = np.where(d_at == 0, y_at, y_at + d_at * (xs - at))
            continued = np.where(np.abs(d_at) * anchor <= 1.0, y_at, linear)
        y = np.where(usable, continued, y)
        d = np.where(usable, d_at, d)
        broken &= ~usable
    return y, d


def _as_dtype(values, dtype):
    return np.asarray(tf.cast(tf.cast(np.asarray(values, np.float64), dtype), tf.float64))


def expected_over_float_range(name, params, x, dtype):
    """Candidates for (y, f'(x)) of `name` at the values of x, over the whole float range.

    Builds on `activation_cases.expected_y_d` (float64 Keras reference, limits at
    +-inf, either one-sided derivative exactly at a breakpoint) and adds:
      * finite inputs at which the float64 reference overflows (see `_ANCHORS`);
      * the neighbourhood of a breakpoint b (|x - b| <= BREAKPOINT_ZONE * max(1, |b|)):
        there y and f' may follow either side, compared at BREAKPOINT_TOLERANCE. This
        covers a kink that the reference does not resolve (tf.nn.selu's exp(x) - 1
        is exactly 0 for |x| < 1e-16, so its gradient takes the x > 0 branch) and
        subnormal inputs, which TensorFlow's kernels read as zero.

    Returns:
      (xs, [(y, d, tolerance, where)]): xs in float64 and candidate triples, each rounded
      to `dtype`; an element passes if it matches one candidate where `where` is True.
    """
    spec = registry.get(name)
    bound = spec.bind(params)
    xs = np.asarray(tf.cast(x, tf.float64)).reshape(-1)
    y, d, d_alternatives = expected_y_d(name, bound, tf.constant(xs))
    y, d = _continue_overflowed_reference(spec, bound, xs, y, d)
    d_alternatives = [d] + [
        _continue_overflowed_reference(spec, bound, xs, y, alt)[1] for alt in d_alternatives[1:]]
    tol = reference_tolerance(dtype)
    everywhere = np.ones(xs.shape, bool)
    candidates = [(_as_dtype(y, dtype), _as_dtype(alt, dtype), tol, everywhere)
                  for alt in d_alternatives]
    loose = {k: max(BREAKPOINT_TOLERANCE[k], tol[k]) for k in tol}
    for point in spec.breakpoints(**bound):
        width = BREAKPOINT_ZONE * max(1.0, abs(point))
        with np.errstate(invalid="ignore"):
            zone = np.abs(xs - point) <= width
        if not zone.any():
            continue
        candidates.append((_as_dtype(y, dtype), _as_dtype(d, dtype), loose, zone))
        for side in (-2.0, 2.0):
            y_side, d_side = _reference(spec, bound, np.full(xs.shape, point + side * width))
            candidates.append((_as_dtype(y_side, dtype), _as_dtype(d_side, dtype), loose, zone))
    return xs, candidates


def assert_matches_expected(name, params, x, y, d, dtype, check=None, what=""):
    """Every element of (y, d) must match one candidate of `expected_over_float_range`."""
    xs, candidates = expected_over_float_range(name, params, x, dtype)
    y = np.asarray(tf.cast(y, tf.float64)).reshape(-1)
    d = np.asarray(tf.cast(d, tf.float64)).reshape(-1)
    ok = np.zeros(xs.shape, bool)
    for y_exp, d_exp, tol, where in candidates:
        with np.errstate(invalid="ignore", over="ignore"):
            ok |= where & np.isclose(y, y_exp, equal_nan=True, **tol) & np.isclose(
                d, d_exp, equal_nan=True, **tol)
    if check is not None:
        ok |= ~np.asarray(check).reshape(-1)
    if not ok.all():
        bad = np.flatnonzero(~ok)[:6]
        rows = "\n".join(
            f"  x={xs[i]!r}: got y={y[i]!r} d={d[i]!r}; expected y={candidates[0][0][i]!r} "
            f"d={candidates[0][1][i]!r}" for i in bad)
        raise AssertionError(
            f"{what} {name}{params} {tf.as_dtype(dtype).name}: {np.count_nonzero(~ok)} of "
            f"{xs.size} elements differ from the Keras reference:\n{rows}")


def nestad_value_and_gradient(x, name, params, backend):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = nestad_tf.activation(x, name, backend=backend, **params)
    return x, y, tape.gradient(y, x)


def _tf_path_is_defined(name, params, x, dtype):
    """Where the Keras formula, evaluated in the TF path's compute type, is finite.

    The TF path is forward-mode AD of that formula, so it shares its overflow (x^2, x^3
    terms past cbrt(max)), its underflow (squareplus with b = 0: x^2 = 0 for tiny x, so
    f' = x / 0) and its inf * 0 at +-inf. Elsewhere it must match the reference.
    """
    spec = registry.get(name)
    compute = tf.float64 if dtype == tf.float64 else tf.float32
    xc = tf.cast(tf.reshape(x, [-1]), compute)
    with tf.GradientTape() as tape:
        tape.watch(xc)
        y = spec.reference(xc, **spec.bind(params))
    d = tape.gradient(y, xc, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    xs = np.asarray(tf.cast(xc, tf.float64))
    limit = np.cbrt(np.finfo(compute.as_numpy_dtype).max)
    with np.errstate(invalid="ignore"):
        return (np.isfinite(xs) & (np.abs(xs) < limit) & np.isfinite(np.asarray(y))
                & np.isfinite(np.asarray(d)))


# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_kernel_and_tf_path_match_keras_everywhere(dtype, data):
    spec = data.draw(st.sampled_from(KERNEL_SPECS), label="activation")
    params = data.draw(activation_params(spec), label="params")
    breakpoints = spec.breakpoints(**spec.bind(params))
    x, layout = data.draw(activation_inputs(dtype, breakpoints), label="x")

    x, y, d = nestad_value_and_gradient(x, spec.name, params, "kernel")
    assert x.dtype == dtype and y.dtype == dtype and d.dtype == dtype
    assert y.shape == x.shape and d.shape == x.shape
    assert_matches_expected(spec.name, params, x, y, d, dtype, what=f"kernel ({layout})")

    _, y_tf, d_tf = nestad_value_and_gradient(x, spec.name, params, "tf")
    assert y_tf.dtype == dtype and y_tf.shape == x.shape and d_tf.shape == x.shape
    defined = _tf_path_is_defined(spec.name, params, x, dtype)
    assert_matches_expected(spec.name, params, x, y_tf, d_tf, dtype, check=defined,
                            what=f"TF path ({layout})")


# Parameters at the edge of their range, where tails and kinks change (slope 0: no
# -inf * slope; b = 0: squareplus is relu), swept in addition to the defaults.
EDGE_PARAMS = [
    ("leaky_relu", {"negative_slope": 0.0}),
    ("leaky_relu", {"negative_slope": -0.5}),
    ("relu", {"negative_slope": 0.25, "max_value": 6.0, "threshold": 1.0}),
    ("relu", {"max_value": 0.5, "threshold": -1.0}),
    ("elu", {"alpha": 0.0}),
    ("celu", {"alpha": 0.1}),
    ("hard_shrink", {"threshold": 0.0}),
    ("soft_shrink", {"threshold": 0.0}),
    ("squareplus", {"b": 0.0}),
    ("gelu", {"approximate": True}),
]
SWEEP_CASES = [(spec.name, {}) for spec in KERNEL_SPECS if spec.name != "threshold"]
SWEEP_CASES += [("threshold", {"threshold": 0.5, "default_value": -1.0})] + EDGE_PARAMS


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name,params", SWEEP_CASES,
                         ids=[n + "".join(f"-{k}={v}" for k, v in p.items()) for n, p in SWEEP_CASES])
def test_extreme_values_every_activation(name, params, dtype):
    """Deterministic sweep: every activation at +-inf, NaN, the largest finite and the
    smallest subnormal numbers of the dtype, and a log grid across the whole range."""
    spec = registry.get(name)
    info = np.finfo(np.float64 if dtype == tf.float64 else
                    np.float16 if dtype == tf.float16 else np.float32)
    if dtype == tf.bfloat16:
        largest, tiny = float(tf.bfloat16.max), 9.18e-41
    else:
        largest, tiny = float(info.max), float(info.smallest_subnormal)
    with np.errstate(over="ignore"):  # geomspace's last step may round past the largest
        grid = np.geomspace(tiny, largest, 200)
    magnitudes = np.concatenate([grid[np.isfinite(grid)], [largest, tiny, np.inf]])
    values = np.concatenate([-magnitudes, [0.0, -0.0, np.nan], magnitudes])
    params = spec.bind(params)
    x = tf.cast(tf.constant(values), dtype)
    x, y, d = nestad_value_and_gradient(x, spec.name, params, "kernel")
    assert_matches_expected(spec.name, params, x, y, d, dtype, what="kernel")


def test_parameter_float32_rounding_is_documented_behaviour():
    """Kernel parameters are float32 attributes (like tf.nn.leaky_relu's alpha): a float64
    tensor sees negative_slope=0.1 as float32(0.1). Pinned here so a change is noticed."""
    x = tf.constant([-1.0], tf.float64)
    y = nestad_tf.activation(x, "leaky_relu", backend="kernel", negative_slope=0.1)
    assert float(y[0]) == -float(np.float32(0.1))
    assert math.isclose(float(y[0]), -0.1, rel_tol=1e-7)
