"""layers.BatchNormActivation against BatchNormalization + Activation, and convert()'s fusion."""

import numpy as np
import pytest
import tensorflow as tf
import keras

import nestad_tf
from nestad_tf.layers import BatchNormActivation

import allocator

F32 = dict(rtol=1e-5, atol=1e-5)


def _block_model(fused, activation="mish", axis=-1, policy=None, **bn_kwargs):
    keras.utils.set_random_seed(1)
    dtype = policy or "float32"
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(8, 3, use_bias=False, dtype=dtype)(inputs)
    if axis == 1:
        h = keras.layers.Permute((3, 1, 2))(h)  # channels first
    if fused:
        h = BatchNormActivation(activation, axis=axis, momentum=0.9, dtype=dtype, name="bn",
                                **bn_kwargs)(h)
    else:
        h = keras.layers.BatchNormalization(axis=axis, momentum=0.9, dtype=dtype, name="bn",
                                            **bn_kwargs)(h)
        h = keras.layers.Activation(activation, dtype=dtype, name="act")(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(4, dtype="float32")(h))


def _data(n=32, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, 6, 6, 3).astype("float32"), rng.randint(0, 4, n)


def _fit(model, epochs=3, batch_size=8):
    x, y = _data()
    model.compile(keras.optimizers.SGD(0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    return history.history["loss"]


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("activation", ["mish", "silu", "gelu", "relu", "leaky_relu"])
def test_fit_matches_batch_normalization_then_activation(activation, axis):
    """Losses, weights, moving statistics after several steps, and inference outputs."""
    keras_model = _block_model(False, activation, axis)
    fused_model = _block_model(True, activation, axis)
    np.testing.assert_allclose(_fit(fused_model), _fit(keras_model), **F32)
    for ours, theirs in zip(fused_model.get_layer("bn").weights,
                            keras_model.get_layer("bn").weights):
        assert ours.name == theirs.name
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), err_msg=ours.name, **F32)
    assert not np.allclose(keras_model.get_layer("bn").moving_mean.numpy(), 0.0)
    x, _ = _data(8, seed=1)
    np.testing.assert_allclose(fused_model.predict(x, verbose=0),
                               keras_model.predict(x, verbose=0), **F32)
    np.testing.assert_allclose(fused_model(x, training=True), keras_model(x, training=True), **F32)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_float32_statistics(policy):
    keras_model = _block_model(False, "mish", policy=policy)
    fused_model = _block_model(True, "mish", policy=policy)
    layer = fused_model.get_layer("bn")
    assert layer.compute_dtype == policy.split("_")[1] and layer.moving_mean.dtype == "float32"
    tol = dict(rtol=2e-2, atol=2e-2)  # Keras rounds x to the half type before its activation
    np.testing.assert_allclose(_fit(fused_model, epochs=2), _fit(keras_model, epochs=2), **tol)
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               keras_model.get_layer("bn").moving_variance.numpy(), **tol)


@pytest.mark.parametrize("center,scale", [(False, True), (True, False), (False, False)])
def test_center_and_scale_off(center, scale):
    keras_model = _block_model(False, "silu", center=center, scale=scale)
    fused_model = _block_model(True, "silu", center=center, scale=scale)
    assert len(fused_model.get_layer("bn").weights) == 2 + center + scale
    np.testing.assert_allclose(_fit(fused_model), _fit(keras_model), **F32)


def test_frozen_layer_uses_moving_statistics_like_keras():
    """trainable=False: BatchNormalization runs in inference mode even in fit()."""
    keras_model = _block_model(False, "mish")
    fused_model = _block_model(True, "mish")
    for model in (keras_model, fused_model):
        model.get_layer("bn").trainable = False
    before = fused_model.get_layer("bn").moving_mean.numpy().copy()
    np.testing.assert_allclose(_fit(fused_model), _fit(keras_model), **F32)
    np.testing.assert_array_equal(fused_model.get_layer("bn").moving_mean.numpy(), before)


def test_batch_of_one_dense_input():
    keras.utils.set_random_seed(0)
    x = np.random.RandomState(0).randn(1, 5).astype("float32")
    bn = keras.layers.BatchNormalization()
    fused = BatchNormActivation("gelu")
    for layer in (bn, fused):
        layer.build((1, 5))
    np.testing.assert_allclose(fused(x, training=True),
                               keras.activations.gelu(bn(x, training=True)), **F32)
    np.testing.assert_allclose(fused.moving_variance.numpy(), bn.moving_variance.numpy(), **F32)


def test_mask_falls_back_to_the_unfused_computation():
    x = tf.random.normal([4, 3, 5], seed=0)
    mask = tf.constant([[True, True, False]] * 4)
    bn, fused = keras.layers.BatchNormalization(), BatchNormActivation("mish")
    for layer in (bn, fused):
        layer.build(x.shape)
    np.testing.assert_allclose(fused(x, training=True, mask=mask),
                               keras.activations.mish(bn(x, training=True, mask=mask)), **F32)


def test_config_round_trip_and_errors():
    layer = BatchNormActivation("leaky_relu", activation_params={"negative_slope": 0.1},
                                epsilon=1e-5, momentum=0.8, name="block")
    config = layer.get_config()
    assert config["activation"] == "leaky_relu" and config["epsilon"] == 1e-5
    assert config["activation_params"] == {"negative_slope": 0.1}
    clone = BatchNormActivation.from_config(config)
    assert clone.activation_params == layer.activation_params and clone.momentum == 0.8
    with pytest.raises(TypeError, match="unexpected parameter"):
        BatchNormActivation("mish", activation_params={"alpha": 1.0})
    with pytest.raises(ValueError, match="backend must be one of"):
        BatchNormActivation("mish", backend="gpu")
    with pytest.raises(TypeError, match="must be a number"):
        BatchNormActivation.from_config(dict(config, activation_params={
            "negative_slope": {"class_name": "function"}}))


def test_keras_file_round_trip_with_safe_mode(tmp_path):
    model = _block_model(True, "mish")
    _fit(model, epochs=1)
    path = str(tmp_path / "fused.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("bn"), BatchNormActivation)
    x, _ = _data(8, seed=2)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_allclose(_fit(loaded, epochs=1), _fit(model, epochs=1), **F32)


def test_exported_saved_model_serves_with_core_ops_only(tmp_path):
    model = _block_model(True, "mish")
    _fit(model, epochs=1)
    path = str(tmp_path / "exported")
    model.export(path, verbose=False)
    served = tf.saved_model.load(path)
    x, _ = _data(8, seed=3)
    np.testing.assert_allclose(served.serve(x), model.predict(x, verbose=0), **F32)
    from test_ecosystem import _nestad_ops_in_saved_model  # pylint: disable=import-outside-toplevel
    assert not _nestad_ops_in_saved_model(path)


def test_under_xla_matches_graph_mode():
    keras_model = _block_model(False, "mish")
    fused_model = _block_model(True, "mish")
    x, y = _data()
    for model in (keras_model, fused_model):
        model.compile(keras.optimizers.SGD(0.05),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=True)
    losses = [m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history["loss"]
              for m in (keras_model, fused_model)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4, atol=1e-5)


# --- convert ----------------------------------------------------------------


def _conv_bn(inputs, activation, name, filters=8):
    h = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(inputs)
    h = keras.layers.BatchNormalization(name=f"{name}_bn")(h)
    return keras.layers.Activation(activation, name=f"{name}_act")(h)


def _functional(activation="silu"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = _conv_bn(inputs, activation, "a")
    h = _conv_bn(h, "relu", "b")
    branch = keras.layers.BatchNormalization(name="shared_bn")(h)  # read by two layers
    h = keras.layers.Add()([keras.layers.Activation("mish", name="c_act")(branch), branch])
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _fused_names(model):
    return sorted(layer.name for layer in _all_layers(model)
                  if isinstance(layer, BatchNormActivation))


def test_convert_fuses_where_the_activation_keeps_more_than_its_output():
    model = _functional()
    converted = nestad_tf.convert(model)
    assert _fused_names(converted) == ["a_bn"]  # relu keeps only y; shared_bn has two readers
    assert isinstance(converted.get_layer("a_act"), keras.layers.Identity)
    assert converted.get_layer("a_bn").activation == "silu"
    assert isinstance(converted.get_layer("c_act"), nestad_tf.layers.Activation)
    x = np.random.RandomState(0).randn(4, 8, 8, 3).astype("float32")
    np.testing.assert_allclose(converted(x, training=True), model(x, training=True), **F32)
    np.testing.assert_allclose(converted.predict(x, verbose=0), model.predict(x, verbose=0), **F32)
    assert _fused_names(nestad_tf.convert(model, include=["silu", "relu"])) == ["a_bn", "b_bn"]
    assert _fused_names(nestad_tf.convert(model, exclude=["silu"])) == []
    assert _fused_names(nestad_tf.convert(model, exclude_layers=["a_act"])) == []
    assert _fused_names(nestad_tf.convert(model, fuse_normalization=False)) == []
    assert _fused_names(nestad_tf.convert(converted)) == ["a_bn"]  # idempotent


def test_convert_fuses_in_sequential_and_nested_models():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="conv"),
                              keras.layers.BatchNormalization(name="bn"),
                              keras.layers.Activation("gelu", name="gelu"),
                              keras.layers.BatchNormalization(name="last_bn")], name="inner")
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Activation("mish", name="outer_act")(inner(inputs))  # across models: not fused
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    converted = nestad_tf.convert(model)
    assert _fused_names(converted) == ["bn"]
    x = np.random.RandomState(0).randn(2, 8, 8, 3).astype("float32")
    np.testing.assert_allclose(converted(x, training=True), model(x, training=True), **F32)
    report = nestad_tf.memory_report(converted)
    fused = [e for e in report if e.layer_class == "BatchNormActivation"]
    assert len(fused) == 1 and fused[0].nestad_bytes_per_sample == 0 and fused[0].replaced


def test_memory_report_says_which_blocks_convert_fuses():
    model = _functional()
    before = {e.layer: e for e in nestad_tf.memory_report(model)}
    assert "fuses it with a_bn" in before["a_act"].reason
    converted_report = nestad_tf.memory_report(nestad_tf.convert(model))
    entry = next(e for e in converted_report if e.layer == "a_bn")
    assert entry.replaced and entry.nestad_bytes_per_sample == 0 and entry.keras_bytes_per_sample > 0
    assert "BatchNormActivation('silu')" in str(converted_report)


@pytest.mark.slow
@pytest.mark.parametrize("application", ["EfficientNetB0", "MobileNetV3Small"])
def test_converted_application_trains_like_the_original(application, tmp_path):
    keras.utils.set_random_seed(0)
    constructor = getattr(keras.applications, application)
    model = constructor(weights=None, input_shape=(64, 64, 3), classes=5,
                        classifier_activation=None)
    for layer in model.layers:  # dropout draws differ between the two models' graphs
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    converted = nestad_tf.convert(model)
    fused = _fused_names(converted)
    assert len(fused) >= (33 if application == "EfficientNetB0" else 10), fused
    rng = np.random.RandomState(0)
    x = rng.uniform(0, 255, (16, 64, 64, 3)).astype("float32")
    y = rng.randint(0, 5, 16)
    np.testing.assert_allclose(converted.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-4)
    losses = []
    for m in (model, converted):
        m.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        losses.append(history.history["loss"] + [m.evaluate(x, y, verbose=0)])
    # A few SGD steps of an untrained deep network amplify float rounding: measured
    # differences are ~1e-3 relative on the second epoch (silu: ~1e-6 on the first).
    np.testing.assert_allclose(losses[1], losses[0], rtol=5e-3, atol=1e-3)
    path = str(tmp_path / "converted.keras")
    converted.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), converted.predict(x, verbose=0))


# --- memory -----------------------------------------------------------------

BATCH, SIDE, CHANNELS, DEPTH = 16, 32, 32, 4
ACTIVATION_BYTES = BATCH * SIDE * SIDE * CHANNELS * 4


def _conv_bn_silu_stack():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIDE, SIDE, CHANNELS))
    h = inputs
    for i in range(DEPTH):
        h = _conv_bn(h, "silu", f"block{i}", CHANNELS)
    outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(inputs, outputs)


def _step_peak(model) -> allocator.Measurement:
    optimizer = keras.optimizers.SGD(1e-3)
    optimizer.build(model.trainable_variables)
    x = tf.random.normal((BATCH, SIDE, SIDE, CHANNELS), seed=1)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    step()

    def finite_step():
        assert np.isfinite(step().numpy())

    return allocator.repeat(lambda: allocator.peak_above_current(finite_step))


def test_conv_bn_silu_stack_keeps_less_than_keras_and_than_unfused_nestad():
    model = _conv_bn_silu_stack()
    keras_peak = _step_peak(model)
    unfused_peak = _step_peak(nestad_tf.convert(model, include=["silu"], fuse_normalization=False))
    fused_peak = _step_peak(nestad_tf.convert(model))
    allocator.record("fused/conv-bn-silu", keras=keras_peak, nestad_unfused=unfused_peak,
                     nestad_fused=fused_peak, activation_mib=ACTIVATION_BYTES / allocator.MiB)
    # Keras' silu and unfused nestad each keep one activation-sized tensor per block
    # (x, or f'(x)) that the fused block does not.
    allocator.assert_lower(fused_peak, keras_peak, DEPTH * ACTIVATION_BYTES / 2,
                           "Conv-BN-silu: fused vs Keras")
    allocator.assert_lower(fused_peak, unfused_peak, DEPTH * ACTIVATION_BYTES / 2,
                           "Conv-BN-silu: fused vs unfused nestad")
