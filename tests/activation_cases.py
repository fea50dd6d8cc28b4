"""Activation cases and the independent expected values every activation test uses.

Expected y and f'(x) never come from nestad: y is the Keras reference evaluated
in float64 on the same (already rounded) inputs, and f'(x) is TF autodiff of
that reference in float64. Two documented exceptions, both about where the
reference itself is undefined:
  * at an activation's breakpoints (registry `breakpoints`), f' may be either
    one-sided derivative (TF autodiff picks one by its own tie rules);
  * at x = +-inf, where a composite reference gives NaN (inf * 0), the expected
    value is the reference's limit, evaluated at +-1e300 (then +-1e30).
"""

import numpy as np
import tensorflow as tf

from conftest import EDGE_VALUES
from nestad_tf import registry


def _extra_cases():
    return [
        ("relu", dict(negative_slope=0.1)),
        ("relu", dict(max_value=6.0)),
        ("relu", dict(negative_slope=0.1, max_value=4.0, threshold=0.5)),
        ("relu", dict(threshold=-1.0)),
        ("relu", dict(negative_slope=0.3, threshold=1.5)),
        ("leaky_relu", dict(negative_slope=0.05)),
        ("elu", dict(alpha=0.5)),
        ("celu", dict(alpha=2.0)),
        ("gelu", dict(approximate=True)),
        ("hard_shrink", dict(threshold=1.0)),
        ("soft_shrink", dict(threshold=1.0)),
        ("squareplus", dict(b=1.0)),
        ("threshold", dict(threshold=0.5, default_value=-1.0)),
    ]


def activation_cases():
    """(name, params) for every built-in activation with its defaults, plus non-default cases."""
    cases = []
    for spec in registry.builtin_specs():
        if registry.REQUIRED in (default for _, default in spec.params):
            continue
        cases.append((spec.name, {}))
    return cases + _extra_cases()


def case_id(case):
    name, params = case
    return name + "".join(f"-{k}={v}" for k, v in sorted(params.items()))


def sample_inputs(name, params, dtype, seed=0, size=512):
    """Random values over the interesting range, edge values and the breakpoints, in `dtype`."""
    spec = registry.get(name)
    bound = spec.bind(params)
    rng = np.random.default_rng(seed)
    values = np.concatenate([
        rng.normal(0.0, 3.0, size),
        rng.uniform(-30.0, 30.0, size // 4),
        np.array(EDGE_VALUES),
        np.array(spec.breakpoints(**bound), dtype=np.float64),
    ])
    return tf.cast(tf.constant(values, tf.float64), dtype)


def _reference_y_d(spec, params, x64):
    with tf.GradientTape() as tape:
        tape.watch(x64)
        y = spec.reference(x64, **params)
    d = tape.gradient(y, x64, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return np.asarray(y, np.float64), np.asarray(d, np.float64)


def expected_y_d(name, params, x, reference_dtype=tf.float64, y_and_d=None):
    """(y, d, d_alternatives) as float64 arrays for the rounded inputs `x` (see module docstring).

    reference_dtype: the dtype the Keras reference runs in (float64: the truth;
    float32: Keras' own numerics, what the pure-TF path reproduces).
    y_and_d: `y_and_d(spec, params, values) -> (y, d)`, the reference and its
    autodiff on the float64 numpy `values` (default: TF in reference_dtype; the
    torch and JAX tests pass their framework's, tests/frameworks/).
    d_alternatives is a list of arrays: at breakpoints f' may match any of them.
    """
    spec = registry.get(name)
    bound = spec.bind(params)
    if y_and_d is None:
        def y_and_d(spec, params, values):
            return _reference_y_d(spec, params, tf.constant(values, reference_dtype))
    xs = np.asarray(tf.cast(tf.cast(x, reference_dtype), tf.float64))
    y, d = y_and_d(spec, bound, xs)

    # Limits at +-inf where the composite reference is NaN.
    for limit in (1e30, 1e300):
        bad = np.isinf(xs) & (np.isnan(y) | np.isnan(d))
        if not bad.any():
            break
        with np.errstate(over="ignore"):  # 1e300 is inf in a float32 reference: no matter
            y_lim, d_lim = y_and_d(spec, bound, np.sign(xs) * limit)
        y = np.where(bad & np.isnan(y), y_lim, y)
        d = np.where(bad & np.isnan(d), d_lim, d)

    y = np.where(np.isnan(xs), np.nan, y)
    d = np.where(np.isnan(xs), np.nan, d)

    # One-sided derivatives at breakpoints.
    alternatives = [d]
    points = np.array(spec.breakpoints(**bound), dtype=np.float64)
    if points.size:
        at_break = near_breakpoints(name, params, x)
        step = 1e-7 * np.maximum(1.0, np.abs(xs))
        for sign in (-1.0, 1.0):
            with np.errstate(invalid="ignore", over="ignore"):  # float64 max + step: inf
                shifted = xs + sign * step
            _, d_side = y_and_d(spec, bound, shifted)
            alternatives.append(np.where(at_break, d_side, d))
    return y, d, alternatives


def near_breakpoints(name, params, x):
    """Mask of inputs within 1e-20 of a breakpoint (where one-sided derivatives are allowed)."""
    spec = registry.get(name)
    points = np.array(spec.breakpoints(**spec.bind(params)), dtype=np.float64)
    xs = np.asarray(tf.cast(x, tf.float64))
    if not points.size:
        return np.zeros(xs.shape, bool)
    with np.errstate(invalid="ignore"):
        return (np.abs(xs[:, None] - points[None, :]) <= 1e-20).any(axis=1)
