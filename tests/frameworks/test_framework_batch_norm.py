"""BatchNormalization fused with its activation on Keras' torch and JAX backends.

`nestad_tf.layers.BatchNormActivation` runs the fused C++ loops there too (a
torch.autograd.Function through kernels/c_api.cc; a jax.custom_vjp over the XLA
FFI handlers). Checked against keras.layers.BatchNormalization followed by the
Keras activation on the same backend: outputs, gradients to the input, gamma and
beta, the moving statistics after fit, inference; and what a training step keeps.
"""

import pytest

from framework_helpers import FRAMEWORK, SKIP_REASON

if FRAMEWORK is None:
    pytest.skip(SKIP_REASON, allow_module_level=True)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import nestad_tf  # noqa: E402
from framework_helpers import tensor, to_float64  # noqa: E402

# float64: the kernels take epsilon and the activation parameters as float32
# attributes, as the TF op does (leaky_relu's 0.2 is 1.5e-8 off in float32).
_TOLERANCE = {"float32": (2e-5, 2e-5), "float64": (5e-8, 1e-9), "float16": (2e-2, 2e-2),
              "bfloat16": (8e-2, 8e-2)}


def _build(layer, shape, gamma, beta):
    layer.build(shape)
    if layer.scale:
        layer.gamma.assign(gamma)
    if layer.center:
        layer.beta.assign(beta)


def _grads(layer, post, x, cotangent):
    """post(layer(x)) and its gradients to x and the layer's trainable weights (gamma,
    beta) by the framework's autodiff, as float64 numpy arrays."""
    if FRAMEWORK == "torch":
        import torch  # pylint: disable=g-import-not-at-top

        x = x.detach().clone().requires_grad_(True)
        y = post(layer(x, training=True))
        sources = [x] + [v.value for v in layer.trainable_variables]
        grads = torch.autograd.grad(y, sources, torch.as_tensor(cotangent).to(y.dtype))
        return [to_float64(t) for t in [y] + list(grads)]
    import jax  # pylint: disable=g-import-not-at-top

    non_trainable = [v.value for v in layer.non_trainable_variables]

    def pure(x, trainable):
        y, _ = layer.stateless_call(trainable, non_trainable, x, training=True)
        return post(y)

    y, vjp = jax.vjp(pure, x, [v.value for v in layer.trainable_variables])
    dx, dweights = vjp(jax.numpy.asarray(cotangent).astype(y.dtype))
    return [to_float64(t) for t in [y, dx] + list(dweights)]


def _reference_grads(activation, axis, x, gamma, beta, cotangent, epsilon=1e-3):
    """BN (batch statistics, biased variance) then the Keras activation, in float64
    keras.ops, and its gradients to x, gamma, beta by the framework's autodiff.
    (keras.layers.BatchNormalization is not float64-exact: it uses keras.ops.mean.)"""
    rank = len(x.shape)
    axes = [a for a in range(rank) if a != axis % rank]
    shape = [1] * rank
    shape[axis] = -1

    count = float(np.prod([x.shape[a] for a in axes]))

    def block(z, g, b):
        # sum / count: keras.ops.mean of float64 rounds like float32 (Keras 3.15, torch and JAX).
        z64 = keras.ops.cast(z, "float64")
        mean = keras.ops.sum(z64, axis=axes, keepdims=True) / count
        variance = keras.ops.sum(keras.ops.square(z64 - mean), axis=axes, keepdims=True) / count
        normalized = (z64 - mean) / keras.ops.sqrt(variance + epsilon)
        return keras.activations.get(activation)(
            normalized * keras.ops.reshape(g, shape) + keras.ops.reshape(b, shape))

    g, b = tensor(gamma, "float64"), tensor(beta, "float64")
    if FRAMEWORK == "torch":
        import torch  # pylint: disable=g-import-not-at-top

        sources = [t.detach().clone().requires_grad_(True) for t in (x, g, b)]
        y = block(*sources)
        grads = torch.autograd.grad(y, sources, torch.as_tensor(cotangent))
        return [to_float64(t) for t in [y] + list(grads)]
    import jax  # pylint: disable=g-import-not-at-top

    y, vjp = jax.vjp(block, x, g, b)
    return [to_float64(t) for t in [y] + list(vjp(jax.numpy.asarray(cotangent)))]


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("activation,axis,shape", [
    ("mish", -1, (6, 5, 8)), ("silu", 1, (4, 3, 5, 2)), ("gelu", -1, (16, 4)),
    ("hard_silu", 0, (3, 7)), ("leaky_relu", -1, (5, 6)),
])
def test_training_forward_and_gradients_match_float64_reference(activation, axis, shape, dtype):
    rng = np.random.default_rng(0)
    x = tensor(rng.normal(1.0, 2.0, shape), dtype)
    channels = shape[axis]
    # framework_helpers.tensor goes through Keras' float32 conversion of numpy values:
    # the same (float32-exact) gamma and beta on both sides.
    gamma = to_float64(tensor(rng.uniform(0.5, 1.5, channels), "float64"))
    beta = to_float64(tensor(rng.normal(0, 0.5, channels), "float64"))
    cotangent = rng.normal(size=shape)
    keras.utils.set_random_seed(1)
    fused = nestad_tf.layers.BatchNormActivation(activation, axis=axis, dtype=dtype)
    _build(fused, shape, gamma, beta)
    got = _grads(fused, lambda t: t, x, cotangent)
    want = _reference_grads(activation, axis, x, gamma, beta, cotangent)
    rtol, atol = _TOLERANCE[dtype]
    for what, a, b in zip(("y", "dx", "dgamma", "dbeta"), got, want):
        scale = max(1.0, float(np.max(np.abs(b))))
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * scale, err_msg=what)


@pytest.mark.skipif(FRAMEWORK != "torch", reason="torch tensors have strides")
def test_permuted_view_is_normalized_in_its_memory_order():
    """A NHWC view of NCHW memory (Keras' torch Conv2D output) goes to the kernels as the
    NCHW array it is, channel axis 1, with no copy: the same values as its contiguous
    copy (to rounding: the per-channel sums run in another order)."""
    import torch  # pylint: disable=g-import-not-at-top

    rng = np.random.default_rng(6)
    memory = torch.as_tensor(rng.normal(1.0, 2.0, (4, 5, 3, 6)).astype(np.float32))
    view = memory.permute(0, 2, 3, 1)  # (4, 3, 6, 5), channels last
    cotangent = rng.normal(size=view.shape)
    channels = view.shape[-1]
    gamma = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    beta = rng.normal(0, 0.5, channels).astype(np.float32)
    results = []
    for z in (view, view.contiguous()):
        layer = nestad_tf.layers.BatchNormActivation("mish")
        _build(layer, tuple(view.shape), gamma, beta)
        results.append(_grads(layer, lambda t: t, z, cotangent))
        if z is view:
            assert layer(z, training=True).stride() == view.stride()
    for what, a, b in zip(("y", "dx", "dgamma", "dbeta"), *results):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-6, err_msg=what)


def _model(fused: bool, size: int = 6):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((size, size, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    if fused:
        h = nestad_tf.layers.BatchNormActivation("mish", momentum=0.9)(h)
    else:
        h = keras.layers.BatchNormalization(momentum=0.9)(h)
        h = keras.layers.Activation("mish")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(1)(h))


def test_fit_moving_statistics_and_predict_match_keras():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 6, 6, 3)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    results = []
    for fused in (False, True):
        model = _model(fused)
        model.compile(keras.optimizers.SGD(0.05), "mse")
        history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        bn = [layer for layer in model.layers
              if isinstance(layer, keras.layers.BatchNormalization)][0]
        results.append((history.history["loss"], to_float64(bn.moving_mean),
                        to_float64(bn.moving_variance), model.predict(x, verbose=0)))
    (loss_k, mean_k, var_k, pred_k), (loss_n, mean_n, var_n, pred_n) = results
    np.testing.assert_allclose(loss_n, loss_k, rtol=1e-5)
    np.testing.assert_allclose(mean_n, mean_k, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var_n, var_k, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred_n, pred_k, rtol=1e-4, atol=1e-5)


def test_convert_fuses_and_reports():
    model = nestad_tf.convert(_model(False))
    fused = [layer for layer in model.layers
             if isinstance(layer, nestad_tf.layers.BatchNormActivation)]
    assert [layer.activation for layer in fused] == ["mish"]
    report = nestad_tf.memory_report(model)
    entry = [e for e in report if e.activation == "mish"][0]
    assert entry.bytes_per_sample == 0, str(report)


def test_backend_tf_runs_unfused_and_matches():
    rng = np.random.default_rng(4)
    x = tensor(rng.normal(size=(8, 4)), "float32")
    reference = keras.layers.BatchNormalization()
    unfused = nestad_tf.layers.BatchNormActivation("silu", backend="tf")
    for layer in (reference, unfused):
        _build(layer, (8, 4), np.ones(4), np.zeros(4))
    want = to_float64(keras.activations.silu(reference(x, training=True)))
    np.testing.assert_allclose(to_float64(unfused(x, training=True)), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="epsilon must be finite"):
        nestad_tf.frameworks.batch_norm_activation(
            x, None, None, np.zeros(4, "float32"), np.ones(4, "float32"),
            nestad_tf.registry.get("silu"), {}, epsilon=float("nan"), axis=-1, training=True)


def _kept_bytes(model, x) -> int:
    """Bytes a training step keeps for its backward pass (torch: autograd's saved
    tensors, each storage once, weights excluded; JAX: XLA's temp buffers)."""
    if FRAMEWORK == "torch":
        import torch  # pylint: disable=g-import-not-at-top

        saved = {}

        def pack(t):
            if not (t.requires_grad and t.grad_fn is None):
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.as_tensor(x), training=True)
        return sum(saved.values())
    import jax  # pylint: disable=g-import-not-at-top

    def loss(trainable, non_trainable, x):
        out, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        return jax.numpy.sum(out ** 2)

    args = ([v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables], x)
    compiled = jax.jit(jax.grad(loss)).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_fused_block_keeps_less_than_unfused_and_keras():
    x = np.random.default_rng(5).normal(size=(16, 16, 16, 3)).astype("float32")
    keras_model = _model(False, 16)
    unfused = nestad_tf.convert(_model(False, 16), fuse_normalization=False, include=["mish"])
    fused = nestad_tf.convert(_model(False, 16))
    kept = {name: _kept_bytes(model, x) for name, model in
            (("keras", keras_model), ("unfused", unfused), ("fused", fused))}
    assert kept["fused"] < min(kept["unfused"], kept["keras"]), kept
    if FRAMEWORK == "torch":
        # torch's mish keeps x and tanh(softplus(x)), nestad's unfused activation f'(x).
        # (Under XLA the unfused custom call keeps about what XLA keeps for Keras' BN +
        # mish, which it fuses: only the fused block is below it there.)
        assert kept["unfused"] < kept["keras"], kept
