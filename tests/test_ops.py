"""The Python API: errors, backend choice, higher-order gradients, graph mode."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import nestad_tf
from nestad_tf import ops
from nestad_tf._loader import op_type
from conftest import tolerance


@pytest.mark.parametrize("dtype", [tf.int32, tf.int64, tf.complex64, tf.bool])
def test_non_float_dtypes_are_rejected(dtype):
    x = tf.zeros([3], dtype)
    with pytest.raises(TypeError, match="floating-point tensor"):
        nestad_tf.mish(x)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown activation 'mishh'.*mish"):
        nestad_tf.activation(tf.zeros([2]), "mishh")


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "glu", "sparsemax"])
def test_non_elementwise_names_are_rejected_with_the_reason(name):
    with pytest.raises(ValueError, match="element-wise"):
        nestad_tf.activation(tf.zeros([2, 4]), name)


def test_parameter_errors():
    with pytest.raises(TypeError, match="unexpected parameter"):
        nestad_tf.activation(tf.zeros([2]), "elu", beta=1.0)
    with pytest.raises(TypeError, match="needs the parameter 'threshold'"):
        nestad_tf.activation(tf.zeros([2]), "threshold", default_value=0.0)
    with pytest.raises(ValueError, match="NaN"):
        nestad_tf.activation(tf.zeros([2]), "elu", alpha=float("nan"))


def test_invalid_parameter_values_are_rejected_by_the_kernel():
    # The pure-TF path follows Keras, which does not validate these.
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="b must be"):
        nestad_tf.activation(tf.zeros([2]), "squareplus", b=-1.0, backend="kernel")


def test_raw_backward_op_rejects_mismatched_shapes():
    lib = nestad_tf._loader.load().module
    with pytest.raises(tf.errors.InvalidArgumentError, match="same shape"):
        lib.fused_activation_grad(tf.ones([4]), tf.ones([3]))

    @tf.function
    def graph(dy, d):
        return lib.fused_activation_grad(dy, d)

    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="same shape"):
        graph(tf.ones([2, 2]), tf.ones([4]))


def test_raw_ops_reject_dtype_mismatch_and_bad_attrs():
    lib = nestad_tf._loader.load().module
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError)):
        lib.fused_activation_grad(tf.ones([2]), tf.ones([2], tf.float64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="takes 1 parameter"):
        lib.fused_activation(tf.ones([2]), activation="elu", params=[])
    with pytest.raises(tf.errors.InvalidArgumentError, match="unknown activation"):
        lib.fused_activation(tf.ones([2]), activation="softmax")
    with pytest.raises(tf.errors.InvalidArgumentError, match="alpha must be non-zero"):
        lib.fused_activation(tf.ones([2]), activation="celu", params=[0.0])
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError)):
        lib.fused_activation(tf.ones([2], tf.int32), activation="mish")


def test_backend_names_and_scopes():
    with pytest.raises(ValueError, match="backend must be one of"):
        nestad_tf.mish(tf.zeros([2]), backend="cuda")
    info = nestad_tf.backend_info()
    assert info["kernel_available"], info["reason"]
    assert info["built_against"] == tf.__version__
    with nestad_tf.backend_scope("tf"):
        assert nestad_tf.backend_info()["default_backend"] == "tf"
        assert ops.resolve_backend(None) == "tf"
    assert ops.resolve_backend(None) == "kernel"


def _jit_mish_and_gradient(backend):
    """A jit-compiled function returning mish(x) and its gradient with `backend`."""

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = nestad_tf.mish(x, backend=backend)
        return y, tape.gradient(y, x)

    return step


def test_under_xla_both_backends_run_the_kernel_as_a_custom_call():
    x = tf.linspace(-3.0, 3.0, 7)
    for backend in ("auto", "kernel"):
        step = _jit_mish_and_gradient(backend)
        np.testing.assert_array_equal(step(x)[0], nestad_tf.mish(x, backend="kernel"))
        hlo = step.experimental_get_compiler_ir(x)(stage="optimized_hlo")
        assert 'custom_call_target="nestad_fused_activation"' in hlo, backend


def test_without_the_xla_lowering_kernel_is_a_clear_error_and_auto_falls_back(monkeypatch):
    import dataclasses  # pylint: disable=import-outside-toplevel

    from nestad_tf import _loader  # pylint: disable=import-outside-toplevel

    without = dataclasses.replace(_loader.load(), xla_reason="built without XLA's headers")
    monkeypatch.setattr(_loader, "load", lambda: without)
    monkeypatch.setattr(ops, "_xla_warned", False)
    x = tf.linspace(-3.0, 3.0, 7)
    with pytest.warns(RuntimeWarning, match="under XLA the pure-TF path runs"):
        y, _ = _jit_mish_and_gradient("auto")(x)
    np.testing.assert_allclose(y, nestad_tf.mish(x), **tolerance(tf.float32))
    with pytest.raises(ValueError, match="cannot run under XLA.*built without XLA"):
        _jit_mish_and_gradient("kernel")(x)


@tf.function
def gradient_and_its_gradient(fn, x):
    """(d fn(x)/dx, d/dx of that), by nested tapes in a tf.function (fn element-wise)."""
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = fn(x)
        g = inner.gradient(y, x)
    return g, outer.gradient(g, x)


@pytest.mark.parametrize("backend", ["kernel", "tf"])
@pytest.mark.parametrize("name", ["gelu", "mish", "tanh", "softplus"])
def test_second_order_in_tf_function_is_correct(name, backend):
    x = tf.linspace(-4.0, 4.0, 33)
    reference = nestad_tf.registry.get(name).reference

    _, expected = gradient_and_its_gradient(reference, x)
    _, actual = gradient_and_its_gradient(
        lambda t: nestad_tf.activation(t, name, backend=backend, derivative="full"), x)
    assert np.abs(expected).max() > 0.1  # the check is not vacuous
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,derivative", [("tanh", "exact"), ("gelu", "bits4"),
                                             ("mish", "bfloat16")])
def test_second_order_through_compressed_or_output_storage_is_a_clear_error(name, derivative):
    x = tf.linspace(-2.0, 2.0, 9)

    with pytest.raises(nestad_tf.SecondOrderGradientError, match="derivative='full'"):
        gradient_and_its_gradient(
            lambda t: nestad_tf.activation(t, name, backend="kernel", derivative=derivative), x)


@pytest.mark.parametrize("name,params", [("relu", {}), ("relu6", {}), ("hard_tanh", {}),
                                         ("relu", {"negative_slope": 0.1, "max_value": 4.0}),
                                         ("threshold", {"threshold": 0.5, "default_value": -1.0})])
def test_second_order_of_piecewise_linear_activations_is_zero_not_an_error(name, params):
    x = tf.constant([-2.5, -0.7, 0.3, 2.2, 5.1])

    # g = f'(x) x + f(x), whose derivative is 2 f'(x) + x f''(x) = 2 f'(x) here.
    g, h = gradient_and_its_gradient(
        lambda t: nestad_tf.activation(t, name, backend="kernel", **params) * t, x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = nestad_tf.registry.get(name).reference(x, **params)
    d = tape.gradient(y, x)
    np.testing.assert_allclose(h, 2 * d, rtol=1e-6)


def test_gradient_penalty_style_second_order_matches_reference():
    """d/dw of ||d loss / d x||^2 through a nestad activation, in a tf.function."""
    w = tf.Variable([[0.5, -1.0], [1.5, 0.25]])
    x = tf.constant([[0.3, -0.7], [1.2, 0.1]])

    def penalty_grad(act):
        @tf.function
        def run():
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    inner.watch(x)
                    out = tf.reduce_sum(act(tf.matmul(x, w)) ** 2)
                gx = inner.gradient(out, x)
                penalty = tf.reduce_sum(gx ** 2)
            return outer.gradient(penalty, w)

        return run()

    np.testing.assert_allclose(penalty_grad(nestad_tf.get("mish", derivative="full")),
                               penalty_grad(nestad_tf.registry.get("mish").reference),
                               rtol=1e-4, atol=1e-5)


def test_second_order_in_eager_mode_raises_instead_of_returning_zero():
    x = tf.constant([0.5, -1.0])
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = nestad_tf.gelu(x)
        g = inner.gradient(y, x)
    np.testing.assert_allclose(g, [0.8674, -0.0833], atol=1e-3)  # first order still works
    with pytest.raises(nestad_tf.SecondOrderGradientError, match="tf.function"):
        outer.gradient(g, x)


def test_graph_mode_gradient_keeps_no_input_copy_of_x():
    """In a tf.function the backward pass reads only f'(x): no op of the gradient reads x."""
    lib = nestad_tf._loader.load().module
    x = tf.random.normal([8, 8])

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = nestad_tf.mish(x, backend="kernel")
        return tape.gradient(y, x)

    graph = step.get_concrete_function(x).graph
    types = [op.type for op in graph.get_operations()]
    assert types.count(op_type("FusedActivation")) == 1
    assert types.count(op_type("FusedActivationGrad")) == 1
    assert not {"Tanh", "Softplus", "TanhGrad", "SoftplusGrad"} & set(types)
    np.testing.assert_allclose(step(x), nestad_y(x), **tolerance(tf.float32))
    assert lib is not None


def nestad_y(x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = nestad_tf.registry.get("mish").reference(x)
    return tape.gradient(y, x)


def test_fallback_warns_once_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("NESTAD_TF_LIBRARY", str(tmp_path / "missing.so"))
    nestad_tf._loader._reset_for_tests()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y1 = nestad_tf.mish(tf.constant([1.0, -2.0]))
            y2 = nestad_tf.gelu(tf.constant([1.0, -2.0]))
        messages = [str(w.message) for w in caught if "nestad_tf" in str(w.message)]
        assert len(messages) == 1 and "does not exist" in messages[0]
        assert not nestad_tf.backend_info()["kernel_available"]
        np.testing.assert_allclose(y1, [0.865098, -0.252501], atol=1e-5)
        np.testing.assert_allclose(y2, [0.841345, -0.045500], atol=1e-5)
        with pytest.raises(RuntimeError, match="does not exist"):
            nestad_tf.mish(tf.constant([1.0]), backend="kernel")
    finally:
        monkeypatch.delenv("NESTAD_TF_LIBRARY")
        nestad_tf._loader._reset_for_tests()


def _raw_gradient_in_dy(name, params, derivative):
    """d(dx)/d(dy) through the raw backward op of `name` (what a graph that differentiates
    the raw ops directly gets): f'(x), where the stored form allows it."""
    from nestad_tf import registry, storage  # pylint: disable=g-import-not-at-top

    lib = nestad_tf._loader.load().module
    spec = registry.get(name)
    bound = spec.bind(params)
    kernel, kernel_params = spec.kernel_attrs(bound)
    plan = storage.plan(spec, bound, derivative, tf.float32)
    x = tf.linspace(-2.95, 2.95, 12)  # off the breakpoints (0, +-1)
    dy = tf.ones_like(x)
    with tf.GradientTape() as tape:
        tape.watch(dy)
        if plan.form == "output":
            y = lib.activation_forward(x, activation=kernel, params=kernel_params)
            dx = lib.activation_grad_from_output(dy, y, activation=kernel, params=kernel_params)
        else:
            _, code = lib.fused_activation_quantized(x, activation=kernel, params=kernel_params,
                                                     **plan.op_attrs())
            dx = lib.activation_grad_quantized(dy, code, **plan.op_attrs())
    return plan, x, tape.gradient(dx, dy)


@pytest.mark.parametrize("name,params,derivative", [
    ("relu", {}, "exact"), ("hard_tanh", {}, "exact"),
    ("relu", {"negative_slope": 0.1, "max_value": 6.0}, "exact")])
def test_raw_backward_ops_differentiate_where_what_they_keep_is_exact(name, params, derivative):
    _, x, gradient = _raw_gradient_in_dy(name, params, derivative)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = nestad_tf.registry.get(name).reference(x, **params)
    np.testing.assert_allclose(gradient, tape.gradient(y, x), atol=1e-6)


@pytest.mark.parametrize("name,derivative", [("sigmoid", "exact"), ("gelu", "uint8"),
                                             ("gelu", "bits2")])
def test_raw_backward_ops_refuse_where_f_double_prime_is_lost(name, derivative):
    with pytest.raises(nestad_tf.SecondOrderGradientError, match="derivative='full'"):
        _raw_gradient_in_dy(name, {}, derivative)
