"""What a training step keeps on Keras' torch and JAX backends, nestad against Keras.

torch: the bytes autograd saves for the backward pass (every tensor passed to
torch.autograd.graph.saved_tensors_hooks' pack hook, each storage counted once)
in one forward pass of a Dense stack. JAX: XLA's compiled memory analysis
(temp_size_in_bytes) of a jitted value_and_grad step of the same stack.

torch's own gelu and silu (F.gelu, F.silu) already keep only x, as many bytes as
nestad's f'(x): there nestad keeps as much with derivative="exact" and less only
with a compressed derivative. Keras' torch mish keeps x and one more tensor.
"""

import pytest

from framework_helpers import FRAMEWORK, SKIP_REASON

if FRAMEWORK is None:
    pytest.skip(SKIP_REASON, allow_module_level=True)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import nestad_tf  # noqa: E402

_BATCH, _FEATURES, _WIDTH, _DEPTH = 128, 64, 256, 3
_ACTIVATION_ELEMENTS = _BATCH * _WIDTH * _DEPTH  # elements of all hidden activations


def _mlp(activation, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((_FEATURES,))
    h = inputs
    for _ in range(_DEPTH):
        h = keras.layers.Dense(_WIDTH, activation=activation)(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def _data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(_BATCH, _FEATURES)).astype("float32"),
            rng.integers(0, 10, _BATCH).astype("int32"))


def torch_saved_bytes(activation) -> int:
    """Bytes autograd keeps for the backward pass of one training forward pass."""
    import torch  # pylint: disable=g-import-not-at-top

    model = _mlp(activation)
    x, labels = _data()
    saved = {}

    def pack(t):
        saved[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(torch.as_tensor(x), training=True)
        loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels).long())
    loss.backward()  # the graph is complete and runs
    return sum(saved.values())


def jax_temp_bytes(activation) -> int:
    """temp_size_in_bytes of the compiled value_and_grad training step."""
    import jax  # pylint: disable=g-import-not-at-top

    model = _mlp(activation)
    x, labels = _data()
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss_fn(weights, x, labels):
        logits, _ = model.stateless_call(weights, non_trainable, x, training=True)
        return jax.numpy.mean(keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True))

    step = jax.jit(jax.value_and_grad(loss_fn))
    compiled = step.lower(trainable, x, labels).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def step_bytes(activation) -> int:
    return torch_saved_bytes(activation) if FRAMEWORK == "torch" else jax_temp_bytes(activation)


def test_mish_keeps_less_than_keras():
    keras_bytes = step_bytes(keras.activations.mish)
    nestad_bytes = step_bytes(nestad_tf.mish)
    assert nestad_bytes < keras_bytes, (nestad_bytes, keras_bytes)


@pytest.mark.skipif(FRAMEWORK != "torch", reason="torch's saved tensors: exact byte counts")
@pytest.mark.parametrize("name", ["gelu", "silu", "mish"])
def test_torch_saved_bytes_per_derivative_form(name):
    """nestad keeps f' in 4, 2 or 1 bytes per element: the totals differ by exactly that;
    against torch's own gelu and silu (which keep x) exact is a tie, compressed forms win."""
    keras_bytes = step_bytes(getattr(keras.activations, name))
    exact = step_bytes(getattr(nestad_tf, name))
    bf16 = step_bytes(nestad_tf.get(name, derivative="bfloat16"))
    uint8 = step_bytes(nestad_tf.get(name, derivative="uint8"))
    assert exact - bf16 == 2 * _ACTIVATION_ELEMENTS
    assert exact - uint8 == 3 * _ACTIVATION_ELEMENTS
    assert exact <= keras_bytes and bf16 < keras_bytes and uint8 < keras_bytes
    if name == "mish":
        assert exact < keras_bytes


@pytest.mark.skipif(FRAMEWORK != "jax", reason="XLA's compiled memory analysis")
@pytest.mark.parametrize("name", ["gelu", "silu"])
def test_jax_compiled_step_keeps_less_than_keras(name):
    keras_bytes = step_bytes(getattr(keras.activations, name))
    exact = step_bytes(getattr(nestad_tf, name))
    compressed = step_bytes(nestad_tf.get(name, derivative="uint8"))
    assert compressed < exact < keras_bytes, (compressed, exact, keras_bytes)


@pytest.mark.parametrize("name", ["mish", "gelu", "silu", "relu"])
def test_saved_for_backward_is_measured_on_this_framework(name):
    """The table convert() decides by. torch: the saved tensors (nestad: f', 4 B/element,
    or only y for relu). JAX: what XLA keeps in a compiled probe step (its choice)."""
    from nestad_tf.convert import saved_for_backward  # pylint: disable=g-import-not-at-top

    keras_saved = saved_for_backward(name)
    nestad_saved = saved_for_backward(name, implementation="nestad")
    uint8 = saved_for_backward(name, implementation="nestad", derivative="uint8")
    if name == "relu":
        assert nestad_saved.tensors == ("y",) and nestad_saved.bytes_per_element == 0
    else:
        assert nestad_saved.tensors == ("f'(x)",)
        if FRAMEWORK == "torch":
            assert nestad_saved.bytes_per_element == 4 and uint8.bytes_per_element == 1
        else:
            assert uint8.bytes_per_element < nestad_saved.bytes_per_element
    if name == "mish" or (FRAMEWORK == "jax" and name != "relu"):
        assert nestad_saved.bytes_per_element < keras_saved.bytes_per_element, keras_saved
    if FRAMEWORK == "torch" and name in ("gelu", "silu"):
        assert keras_saved.tensors == ("x",) and keras_saved.bytes_per_element == 4


@pytest.mark.skipif(FRAMEWORK != "jax", reason="XLA's compiled memory analysis")
def test_jax_convert_leaves_what_xla_keeps_less_of():
    """hard_silu: XLA keeps less for Keras' (it recomputes the cheap chain) than nestad's f'."""
    from nestad_tf.convert import saved_for_backward  # pylint: disable=g-import-not-at-top

    assert (saved_for_backward("hard_silu").bytes_per_element
            < saved_for_backward("hard_silu", implementation="nestad").bytes_per_element)
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(4, activation="hard_silu")(keras.layers.Dense(8, activation="mish")(inputs))
    converted = nestad_tf.convert(keras.Model(inputs, outputs))
    kinds = [type(layer.activation).__name__ for layer in converted.layers[1:]]
    assert kinds == ["ActivationFunction", "function"], kinds


@pytest.mark.skipif(FRAMEWORK != "jax", reason="jax's VJP residuals")
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu", "hard_tanh"])
def test_jax_output_form_keeps_the_output_itself(name, capsys):
    """Activations whose f' comes from y keep y as their only residual: the output the
    next op keeps anyway, not a second array beside it (the higher-order wrapper once
    made the kept y a separate output of its custom_jvp: one residual more per call)."""
    import jax  # pylint: disable=g-import-not-at-top

    x = jax.numpy.linspace(-3.0, 3.0, 64 * 64).reshape(64, 64)

    def loss(t):
        y = nestad_tf.activation(t, name, backend="kernel")
        return jax.numpy.sum(y * y)  # the multiply keeps y as well

    jax.ad_checkpoint.print_saved_residuals(loss, x)
    residuals = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(residuals) == 1, residuals
