"""A converted model in the TF/Keras ecosystem: .keras files, SavedModel, XLA,
mixed precision, tf.distribute. Fresh-process checks run in subprocesses."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import keras

import nestad_tf
from nestad_tf._loader import OP_NAMESPACE, op_type

from conftest import tolerance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32 = tolerance(tf.float32)


def _model(seed=0):
    """Dense/Conv with activations nestad replaces (gelu, mish) and one it keeps (relu)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 2), name="image")
    h = keras.layers.Conv2D(4, 3, padding="same", activation="mish", name="conv")(inputs)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(16, name="dense")(h)
    h = keras.layers.Activation("gelu", name="gelu")(h)
    h = keras.layers.Dense(16, activation="relu", name="dense_relu")(h)
    outputs = keras.layers.Dense(3, name="logits")(h)
    return keras.Model(inputs, outputs, name="small_cnn")


def _data(n=8, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, 8, 8, 2).astype("float32"), rng.randint(0, 3, size=n)


def _run(script, tmp_path, with_repo=True):
    """Runs `script` in a fresh Python; returns (returncode, stdout, stderr)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != REPO]
    if with_repo:
        path[:0] = [REPO, os.path.join(REPO, "tests")]
    env["PYTHONPATH"] = os.pathsep.join(path)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout, result.stderr


def _nestad_ops_in_saved_model(path):
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    found = set()
    for meta in saved.meta_graphs:
        nodes = list(meta.graph_def.node)
        for function in meta.graph_def.library.function:
            nodes.extend(function.node_def)
        found.update(n.op for n in nodes if n.op.startswith(OP_NAMESPACE + ">"))
    return found


# --- saving and serving ---


def test_keras_file_round_trip_with_safe_mode(tmp_path):
    converted = nestad_tf.convert(_model())
    x, _ = _data(4)
    path = str(tmp_path / "converted.keras")
    converted.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded(x), converted(x))
    assert isinstance(loaded.get_layer("gelu"), nestad_tf.layers.Activation)
    assert isinstance(loaded.get_layer("conv").activation, nestad_tf.ActivationFunction)
    assert [e.layer for e in nestad_tf.memory_report(loaded).replaced] == ["conv", "gelu"]


@pytest.mark.subprocess
def test_export_serves_in_a_process_without_nestad(tmp_path):
    converted = nestad_tf.convert(_model())
    x, _ = _data(4)
    expected = converted.predict(x, verbose=0)
    export_dir = str(tmp_path / "served")
    converted.export(export_dir, verbose=False)
    assert _nestad_ops_in_saved_model(export_dir) == set()
    np.save(tmp_path / "x.npy", x)
    code, out, err = _run(f"""
        import sys, numpy as np, tensorflow as tf
        served = tf.saved_model.load({export_dir!r})
        y = served.serve(tf.constant(np.load("x.npy")))
        np.save("y.npy", y.numpy())
        assert "nestad_tf" not in sys.modules
        print("served")
        """, tmp_path, with_repo=False)
    assert code == 0, err[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, **F32)


class _Trainer(tf.Module):
    """A training-capable SavedModel: loss and gradients of a converted model."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.weights = model.trainable_weights

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 2], tf.float32),
                                  tf.TensorSpec([None], tf.int64)])
    def loss_and_gradients(self, x, labels):
        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True))
        return [loss] + tape.gradient(loss, self.weights)


def _save_trainer(tmp_path, backend):
    converted = nestad_tf.convert(_model(), backend=backend)
    x, labels = _data(4)
    trainer = _Trainer(converted)
    expected = [t.numpy() for t in trainer.loss_and_gradients(x, labels.astype("int64"))]
    path = str(tmp_path / f"trainer_{backend}")
    tf.saved_model.save(trainer, path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "labels.npy", labels.astype("int64"))
    return path, expected


_DIFFERENTIATE = """
    import numpy as np, tensorflow as tf
    {imports}
    trainer = tf.saved_model.load({path!r})
    results = trainer.loss_and_gradients(tf.constant(np.load("x.npy")), tf.constant(np.load("labels.npy")))
    np.savez("results.npz", *[r.numpy() for r in results])
    """


@pytest.mark.subprocess
def test_training_saved_model_needs_nestad_and_says_so(tmp_path):
    if not nestad_tf.backend_info()["kernel_available"]:
        pytest.skip("kernels not loaded: the traced graph has no nestad op")
    path, expected = _save_trainer(tmp_path, "auto")
    assert op_type("FusedActivation") in _nestad_ops_in_saved_model(path)

    code, _, err = _run(_DIFFERENTIATE.format(imports="import nestad_tf", path=path), tmp_path)
    assert code == 0, err[-3000:]
    results = np.load(tmp_path / "results.npz")
    for i, value in enumerate(expected):
        np.testing.assert_allclose(results[f"arr_{i}"], value, **F32)

    code, _, err = _run(_DIFFERENTIATE.format(imports="", path=path), tmp_path, with_repo=False)
    assert code != 0
    # No code of nestad_tf runs in that process: TensorFlow's own message carries the
    # package and the fix through the ops' namespace, "Import_nestad_tf>".
    message = err.strip().splitlines()[-1]
    assert "Op type not registered 'Import_nestad_tf>" in message, err[-3000:]


@pytest.mark.subprocess
def test_training_saved_model_of_core_ops_with_backend_tf(tmp_path):
    path, expected = _save_trainer(tmp_path, "tf")
    assert _nestad_ops_in_saved_model(path) == set()
    code, _, err = _run(_DIFFERENTIATE.format(imports="", path=path), tmp_path, with_repo=False)
    assert code == 0, err[-3000:]
    results = np.load(tmp_path / "results.npz")
    for i, value in enumerate(expected):
        np.testing.assert_allclose(results[f"arr_{i}"], value, **F32)


def test_inference_graphs_hold_no_nestad_op_training_graphs_do():
    converted = nestad_tf.convert(_model())
    x, labels = _data(4)

    @tf.function
    def infer(x):
        return converted(x)

    @tf.function
    def gradients(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(converted(x, training=True))
        return tape.gradient(loss, converted.trainable_weights)

    def op_types(function):
        graph = function.get_concrete_function(tf.TensorSpec([None, 8, 8, 2])).graph
        return {op.type for op in graph.get_operations()}

    assert not any(t.startswith(OP_NAMESPACE) for t in op_types(infer))
    if nestad_tf.backend_info()["kernel_available"]:
        assert op_type("FusedActivation") in op_types(gradients)
    np.testing.assert_allclose(infer(x), converted(x), **F32)


# --- training with the usual compile settings ---


def _fit_losses(model, steps=3, **compile_args):
    x, labels = _data(8)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **compile_args)
    history = model.fit(x, labels, batch_size=4, epochs=steps, shuffle=False, verbose=0)
    return np.array(history.history["loss"])


@pytest.mark.parametrize("jit_compile", [True, "auto"])
def test_xla_trains_with_the_same_losses(jit_compile):
    reference = _fit_losses(nestad_tf.convert(_model()), jit_compile=False)
    with_xla = _fit_losses(nestad_tf.convert(_model()), jit_compile=jit_compile)
    keras_only = _fit_losses(_model(), jit_compile=False)
    np.testing.assert_allclose(with_xla, reference, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(reference, keras_only, rtol=1e-4, atol=1e-5)
    assert reference[-1] < reference[0]


@pytest.fixture
def policy():
    previous = keras.mixed_precision.global_policy()
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("policy_name,compute", [("mixed_float16", tf.float16),
                                                 ("mixed_bfloat16", tf.bfloat16)])
def test_mixed_precision(policy, policy_name, compute):
    policy(policy_name)
    model = _model()
    converted = nestad_tf.convert(model)
    gelu = converted.get_layer("gelu")
    assert gelu.compute_dtype == compute.name and gelu.variable_dtype == "float32"
    assert {e.dtype for e in nestad_tf.memory_report(converted)} == {compute.name}

    # the activation runs in the compute dtype with float32 math: one rounding at the end
    x = tf.random.stateless_normal([64], seed=[1, 2], dtype=compute) * 3
    y = nestad_tf.layers.Activation("gelu", dtype=policy_name)(x)
    assert y.dtype == compute
    exact = tf.cast(keras.activations.gelu(tf.cast(x, tf.float32)), compute)
    np.testing.assert_allclose(tf.cast(y, tf.float32), tf.cast(exact, tf.float32),
                               **tolerance(compute))

    data, _ = _data(4)
    np.testing.assert_allclose(tf.cast(converted(data), tf.float32), tf.cast(model(data), tf.float32),
                               rtol=0.05, atol=0.05)  # half-precision models, composite vs fused
    losses = _fit_losses(converted)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    if policy_name == "mixed_float16":
        assert isinstance(converted.optimizer, keras.optimizers.LossScaleOptimizer)
    keras_losses = _fit_losses(model)
    np.testing.assert_allclose(losses, keras_losses, rtol=0.05, atol=0.02)


# --- tf.distribute ---


@pytest.mark.subprocess
def test_mirrored_strategy_over_two_cpus_matches_one_device(tmp_path):
    code, out, err = _run("""
        import json, numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
        import keras, nestad_tf
        from test_ecosystem import _model, _data

        x, labels = _data(16)

        def losses(strategy, weights):
            with strategy.scope():
                model = nestad_tf.convert(_model())
                model.set_weights(weights)
                model.compile(optimizer=keras.optimizers.SGD(0.1),
                              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            history = model.fit(x, labels, batch_size=8, epochs=4, shuffle=False, verbose=0)
            return history.history["loss"]

        weights = _model().get_weights()
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        print(json.dumps({"replicas": mirrored.num_replicas_in_sync,
                          "one": losses(tf.distribute.get_strategy(), weights),
                          "two": losses(mirrored, weights)}))
        """, tmp_path)
    assert code == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["replicas"] == 2
    np.testing.assert_allclose(result["two"], result["one"], rtol=1e-5, atol=1e-6)
    assert result["one"][-1] < result["one"][0]
