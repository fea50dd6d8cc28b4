"""nestad_tf.convert and memory_report: against the original Keras models."""

import numpy as np
import pytest
import tensorflow as tf
import keras

import nestad_tf
from nestad_tf import registry
from nestad_tf.convert import saved_for_backward

from conftest import tolerance

F32 = tolerance(tf.float32)


def _small_functional():
    inputs = keras.Input((8,), name="x")
    h = keras.layers.Dense(16, activation="gelu", name="dense_gelu")(inputs)
    h = keras.layers.Activation("mish", name="act_mish")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.Dense(16, activation="silu", name="dense_silu")(h)
    inner = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(8, activation="hard_silu", name="inner_dense"),
         keras.layers.LeakyReLU(negative_slope=0.1, name="inner_leaky")],
        name="inner",
    )
    h = inner(h)
    outputs = keras.layers.Dense(3, name="logits")(h)
    return keras.Model(inputs, outputs, name="small")


def _data(shape, seed=0, scale=1.0):
    return (np.random.RandomState(seed).randn(*shape) * scale).astype("float32")


def _by_path(model):
    from nestad_tf.convert import _walk  # pylint: disable=import-outside-toplevel

    return {path: layer for path, layer, _ in _walk(model)}


def _assert_same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        np.testing.assert_array_equal(x, y)


def _gradients(model, x, y):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
    return loss, tape.gradient(loss, model.trainable_weights)


# --- the derived table ---


def test_table_matches_what_keras_is_known_to_keep():
    # relu: ReluGrad reads the output; tf.nn.silu reads x; gelu keeps x and intermediates.
    assert saved_for_backward("relu").tensors == ("y",)
    assert saved_for_backward("relu").bytes_per_element == 0
    assert saved_for_backward("silu").tensors == ("x",)
    assert saved_for_backward("swish").bytes_per_element == 4
    gelu = saved_for_backward("gelu")
    assert "x" in gelu.tensors and gelu.bytes_per_element > 4
    assert saved_for_backward("gelu", dtype="float16").bytes_per_element == gelu.bytes_per_element // 2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_nestad_keeps_at_most_one_derivative_in_the_compute_dtype(dtype):
    size = tf.as_dtype(dtype).size
    for spec in registry.builtin_specs():
        if registry.REQUIRED in dict(spec.params).values():
            params = {"threshold": 0.5, "default_value": 0.0}
        else:
            params = {}
        saved = saved_for_backward(spec.name, params, dtype, implementation="nestad")
        assert set(saved.tensors) <= {"f'(x)", "y"} and len(saved.tensors) == 1, spec.name
        assert 0 <= saved.bytes_per_element <= size, spec.name
    for smooth in ("gelu", "mish", "hard_silu"):  # f' is not a function of y or of a few bits
        saved = saved_for_backward(smooth, {}, dtype, implementation="nestad")
        assert saved.tensors == ("f'(x)",) and saved.bytes_per_element == size


# --- convert on a small model ---


def test_functional_outputs_weights_gradients_and_decisions():
    model = _small_functional()
    converted = nestad_tf.convert(model)
    x, target = _data((4, 8)), _data((4, 3), seed=1)
    np.testing.assert_allclose(converted(x), model(x), **F32)
    _assert_same_weights(model, converted)
    loss, grads = _gradients(model, x, target)
    new_loss, new_grads = _gradients(converted, x, target)
    np.testing.assert_allclose(new_loss, loss, **F32)
    for g, h in zip(grads, new_grads):
        np.testing.assert_allclose(h, g, rtol=F32["rtol"] * 10, atol=F32["atol"] * 10)

    layers = _by_path(converted)
    assert isinstance(layers["dense_gelu"].activation, nestad_tf.ActivationFunction)
    assert isinstance(layers["act_mish"], nestad_tf.layers.Activation)
    assert isinstance(layers["inner/inner_dense"].activation, nestad_tf.ActivationFunction)
    assert type(layers["relu"]) is keras.layers.ReLU  # Keras keeps only y: nothing to gain
    # the others follow the table: replaced exactly where nestad keeps fewer bytes
    for path, name, params in [("dense_silu", "silu", {}),
                               ("inner/inner_leaky", "leaky_relu", {"negative_slope": 0.1})]:
        saves = (saved_for_backward(name, params, implementation="nestad").bytes_per_element
                 < saved_for_backward(name, params).bytes_per_element)
        held = layers[path] if "leaky" in path else layers[path].activation
        is_nestad = isinstance(held, (nestad_tf.layers.Activation, nestad_tf.ActivationFunction))
        assert is_nestad == saves, path


def test_summary_and_idempotence():
    model = _small_functional()
    converted = nestad_tf.convert(model)
    assert [l.name for l in converted.layers] == [l.name for l in model.layers]
    assert converted.count_params() == model.count_params()
    lines = []
    converted.summary(print_fn=lambda line, **_: lines.append(line))
    text = "\n".join(lines)
    for layer in model.layers:
        assert layer.name in text
    twice = nestad_tf.convert(converted)
    assert twice.get_config() == converted.get_config()
    _assert_same_weights(converted, twice)
    x = _data((3, 8))
    np.testing.assert_array_equal(twice(x), converted(x))
    first, second = nestad_tf.memory_report(converted), nestad_tf.memory_report(twice)
    assert [(e.layer, e.replaced, e.replaced_by) for e in first] == \
        [(e.layer, e.replaced, e.replaced_by) for e in second]


def test_include_exclude_layers_and_backend():
    model = _small_functional()
    only_relu = nestad_tf.convert(model, include=["relu"])
    layers = _by_path(only_relu)
    assert isinstance(layers["relu"], nestad_tf.layers.Activation)
    assert layers["dense_gelu"].activation is keras.activations.gelu
    np.testing.assert_allclose(only_relu(_data((2, 8))), model(_data((2, 8))), **F32)

    no_gelu = _by_path(nestad_tf.convert(model, exclude=["gelu"]))
    assert no_gelu["dense_gelu"].activation is keras.activations.gelu
    assert isinstance(no_gelu["act_mish"], nestad_tf.layers.Activation)

    swish = _by_path(nestad_tf.convert(model, include=["swish"], layers=["dense_*"]))
    assert swish["dense_silu"].activation.activation == "silu"

    inner_kept = _by_path(nestad_tf.convert(model, exclude_layers=["inner/*"]))
    assert inner_kept["inner/inner_dense"].activation is keras.activations.hard_silu
    assert isinstance(inner_kept["dense_gelu"].activation, nestad_tf.ActivationFunction)

    tf_backend = _by_path(nestad_tf.convert(model, backend="tf"))
    assert tf_backend["act_mish"].backend == "tf"
    assert tf_backend["dense_gelu"].activation.backend == "tf"

    with pytest.raises(ValueError, match="softmax"):
        nestad_tf.convert(model, include=["softmax"])
    with pytest.raises(ValueError, match="backend"):
        nestad_tf.convert(model, backend="gpu")


def test_sequential_training_step_and_verbose_report(capsys):
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(12, activation="mish"),
        keras.layers.Activation("gelu"),
        keras.layers.Dense(12, activation=keras.activations.relu),
        keras.layers.Dense(2),
    ])
    converted = nestad_tf.convert(model, verbose=True)
    printed = capsys.readouterr().out
    assert "2 of 3 activations run as nestad" in printed
    assert "keeps only its output" in printed  # why relu was left alone
    x, y = _data((8, 6)), _data((8, 2), seed=3)
    np.testing.assert_allclose(converted(x), model(x), **F32)
    converted.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    before = [w.copy() for w in converted.get_weights()]
    history = converted.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert any(not np.array_equal(a, b) for a, b in zip(before, converted.get_weights()))


def test_memory_report_numbers_come_from_shapes_and_the_table():
    model = _small_functional()
    report = nestad_tf.memory_report(model)
    entries = {e.layer: e for e in report}
    gelu = entries["dense_gelu"]
    assert not gelu.replaced and "convert() replaces it" in gelu.reason
    assert gelu.elements_per_sample == 16
    assert gelu.keras_bytes_per_sample == 16 * saved_for_backward("gelu").bytes_per_element
    assert gelu.nestad_bytes_per_sample == 16 * 4
    assert "keeps only its output" in entries["relu"].reason
    assert "no saving" in entries["dense_silu"].reason
    assert entries["inner/inner_leaky"].activation == "leaky_relu(negative_slope=0.1)"

    converted_report = nestad_tf.memory_report(nestad_tf.convert(model))
    replaced = {e.layer for e in converted_report.replaced}
    assert replaced >= {"dense_gelu", "act_mish", "inner/inner_dense"} and "relu" not in replaced
    assert converted_report.bytes_per_sample < converted_report.keras_bytes_per_sample
    assert converted_report.keras_bytes_per_sample == report.keras_bytes_per_sample
    assert "nestad (" in str(converted_report)


class _Subclassed(keras.Model):
    def __init__(self, units=8, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = keras.layers.Dense(units, activation="gelu")
        self.act = keras.layers.Activation("mish")
        self.head = keras.layers.Dense(2)

    def call(self, inputs):
        return self.head(keras.activations.hard_silu(self.act(self.hidden(inputs))))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_subclassed_model_converts_held_activations_and_says_what_it_cannot(capsys):
    model = _Subclassed()
    x = _data((4, 5))
    reference = model(x)
    converted = nestad_tf.convert(model, verbose=True)
    printed = capsys.readouterr().out
    assert isinstance(converted.hidden.activation, nestad_tf.ActivationFunction)
    assert isinstance(converted.act.activation, nestad_tf.ActivationFunction)
    np.testing.assert_allclose(converted(x), reference, **F32)
    assert "subclassed" in printed and "call()" in printed
    assert any("call()" in note for note in nestad_tf.memory_report(converted).notes)


def test_unknown_and_non_elementwise_activations_are_reported():
    def my_activation(x):
        return x * tf.sin(x)

    inputs = keras.Input((4,))
    h = keras.layers.Dense(4, activation=my_activation, name="custom")(inputs)
    h = keras.layers.PReLU(name="prelu")(h)
    outputs = keras.layers.Dense(3, activation="softmax", name="probs")(h)
    report = {e.layer: e for e in nestad_tf.memory_report(keras.Model(inputs, outputs))}
    assert "forward_ad" in report["custom"].reason
    assert "PReLU" in report["prelu"].reason
    assert "not element-wise" in report["probs"].reason


# --- keras.applications (weights=None, small inputs) ---


def _switch_activations(model, name):
    """The same architecture with every silu/swish replaced by `name` (Keras' own)."""

    def clone(layer):
        config = layer.get_config()
        if config.get("activation") in ("swish", "silu"):
            config["activation"] = name
        return layer.__class__.from_config(config)

    switched = keras.models.clone_model(model, clone_function=clone)
    switched.set_weights(model.get_weights())
    return switched


def _check_application(model, converted, expect_replaced, image_size):
    x = _data((2, image_size, image_size, 3), seed=5, scale=50.0) + 120.0
    np.testing.assert_allclose(converted(x, training=False), model(x, training=False),
                               rtol=1e-4, atol=1e-4)  # many layers of float32 rounding
    report = nestad_tf.memory_report(converted)
    assert {e.activation for e in report.replaced} == expect_replaced
    assert [l.name for l in converted.layers] == [l.name for l in model.layers]
    assert converted.count_params() == model.count_params()
    converted.compile(optimizer=keras.optimizers.SGD(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = converted.train_on_batch(x, np.array([0, 1]))
    assert np.isfinite(loss)
    again = nestad_tf.convert(converted)
    assert again.get_config() == converted.get_config()
    return report


@pytest.fixture(scope="module")
def efficientnet():
    return keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=4,
                                             classifier_activation=None)


@pytest.mark.slow
def test_efficientnet_b0_silu(efficientnet):
    unfused = nestad_tf.memory_report(nestad_tf.convert(efficientnet, fuse_normalization=False))
    assert not unfused.replaced  # silu keeps x only, sigmoid its output: nothing to gain
    fusable = [e for e in unfused if "convert() fuses it with" in e.reason]
    assert len(fusable) == 33
    assert all(("no saving" in e.reason) or ("only its output" in e.reason)
               for e in unfused if e not in fusable)
    default = nestad_tf.memory_report(nestad_tf.convert(efficientnet))
    # the 33 silu after a BatchNormalization are fused with it and keep nothing
    assert len(default.replaced) == 33
    assert all(e.layer_class == "BatchNormActivation" and e.nestad_bytes_per_sample == 0
               for e in default.replaced)
    assert all(("no saving" in e.reason) or ("only its output" in e.reason)
               for e in default.left_alone)
    converted = nestad_tf.convert(efficientnet, include=["silu"])
    report = _check_application(efficientnet, converted, {"silu"}, 32)
    assert len(report.replaced) == 49


@pytest.mark.slow
def test_efficientnet_b0_switched_to_mish(efficientnet):
    mish_model = _switch_activations(efficientnet, "mish")
    converted = nestad_tf.convert(mish_model)
    report = _check_application(mish_model, converted, {"mish"}, 32)
    assert report.bytes_per_sample < report.keras_bytes_per_sample


@pytest.mark.slow
def test_convnext_tiny_gelu():
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=4,
                                            classifier_activation=None)
    converted = nestad_tf.convert(model)
    report = _check_application(model, converted, {"gelu"}, 32)
    assert len(report.replaced) == 18
    assert report.bytes_per_sample < report.keras_bytes_per_sample / 2
