"""nestad under XLA (jit_compile=True): every op lowers to an XLA custom call.

The custom calls run the same CPU loops as the TF kernels, so a jit-compiled
function gives the same bits as the graph-mode one, for every activation,
dtype and derivative= form, and its optimized HLO holds the custom calls (no
silent fallback to the pure-TF path).
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import nestad_tf
from nestad_tf import _loader, registry, storage
from activation_cases import activation_cases, case_id, sample_inputs
from conftest import DTYPES, dtype_id

pytestmark = pytest.mark.skipif(not _loader.load().xla,
                                reason=f"no XLA lowering: {_loader.load().xla_reason}")

DERIVATIVES = storage.DERIVATIVE_MODES
# Every device present: on a GPU the custom calls run the CUDA handlers
# (kernels/cuda/xla_gpu_ffi.cc) against the GPU ops in graph mode.
DEVICES = ["CPU"] + (["GPU"] if tf.config.list_logical_devices("GPU") and _loader.load().gpu_xla
                     else [])
TARGET = re.compile(r'custom_call_target="(nestad_[a-z_]+)"')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _value_and_gradient(cases, derivative):
    """f(x) and dy * f'(x) of every case, one activation call each."""

    def step(xs, dys):
        ys, dxs = [], []
        for (name, params), x, dy in zip(cases, xs, dys):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = nestad_tf.activation(x, name, derivative=derivative, **params)
            ys.append(y)
            dxs.append(tape.gradient(y, x, output_gradients=dy))
        return ys, dxs

    return step


def _custom_calls(function, *args):
    hlo = function.experimental_get_compiler_ir(*args)(stage="optimized_hlo")
    return [line for line in hlo.splitlines() if "custom-call(" in line]


def _as_float64(tensors):
    return [np.asarray(tf.cast(t, tf.float64)) for t in tensors]


@pytest.mark.parametrize("derivative", DERIVATIVES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("device", DEVICES)
def test_jit_equals_graph_mode_bit_for_bit(device, dtype, derivative):
    cases = activation_cases()
    xs = [sample_inputs(name, params, dtype, seed=i) for i, (name, params) in enumerate(cases)]
    rng = np.random.default_rng(1)
    dys = [tf.cast(rng.normal(size=x.shape), dtype) for x in xs]
    step = _value_and_gradient(cases, derivative)
    backend = "kernel" if device == "GPU" else "auto"  # auto: the pure-TF path on a GPU
    with warnings.catch_warnings(), tf.device(f"/{device}:0"), nestad_tf.backend_scope(backend):
        warnings.simplefilter("error", RuntimeWarning)  # no "pure-TF path" fallback warning
        graph_y, graph_dx = tf.function(step)(xs, dys)
        jitted = tf.function(step, jit_compile=True)
        jit_y, jit_dx = jitted(xs, dys)
        calls = _custom_calls(jitted, xs, dys)
    for i, case in enumerate(cases):
        for what, graph, jit in (("y", graph_y, jit_y), ("dx", graph_dx, jit_dx)):
            np.testing.assert_array_equal(
                _as_float64([jit[i]])[0], _as_float64([graph[i]])[0],
                err_msg=f"{case_id(case)} {what}: XLA and graph mode differ")

    assert all(TARGET.search(line) for line in calls), calls
    for name, params in cases:
        kernel_name, _ = registry.get(name).kernel_attrs(registry.get(name).bind(params))
        forward = [line for line in calls if f'activation = "{kernel_name}"' in line]
        assert forward, f"no custom call for {name} {params} in the optimized HLO"


def test_storage_codes_equal_graph_mode():
    """The packed f' codes XLA keeps are the bytes graph mode keeps."""
    lib = _loader.load().module
    x = tf.random.normal([4099], seed=3)
    for derivative in ("bfloat16", "uint8", "bits4", "bits1"):
        spec = registry.get("gelu")
        plan = storage.plan(spec, spec.bind({}), derivative, x.dtype)
        attrs = dict(activation="gelu", params=[], **plan.op_attrs())

        def codes(t):
            return lib.fused_activation_quantized(t, **attrs)

        graph_y, graph_code = tf.function(codes)(x)
        jit_y, jit_code = tf.function(codes, jit_compile=True)(x)
        np.testing.assert_array_equal(jit_code, graph_code, err_msg=derivative)
        np.testing.assert_array_equal(jit_y, graph_y, err_msg=derivative)


def test_bad_input_under_xla_is_a_clear_error():
    lib = _loader.load().module
    attrs = dict(format="uniform8", bits=8, breakpoints=[], levels=[], range=[0.0, 1.0])

    @tf.function(jit_compile=True)
    def wrong_code_size(dy, code):
        return lib.activation_grad_quantized(dy, code, **attrs)

    with pytest.raises(tf.errors.InvalidArgumentError, match="code must be a vector of 16 bytes"):
        wrong_code_size(tf.ones([16]), tf.zeros([15], tf.uint8))

    @tf.function(jit_compile=True)
    def bad_params(x):
        return lib.fused_activation(x, activation="leaky_relu", params=[])

    with pytest.raises(tf.errors.InvalidArgumentError, match="takes 1 parameter"):
        bad_params(tf.ones([4]))


def _digits(n=512):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data[:n] / 16.0).astype("float32")
    y = data.target[:n].astype("int32")
    return x, y


def _mlp(activation_a="mish", activation_b="gelu"):
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(64, activation=activation_a),
        keras.layers.Dense(64),
        keras.layers.Activation(activation_b),
        keras.layers.Dense(10),
    ])


@pytest.mark.slow
def test_keras_fit_under_xla_matches_graph_mode():
    x, y = _digits()
    losses = {}
    for jit in (False, True, "auto"):
        model = nestad_tf.convert(_mlp(), derivative="exact")
        model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(
            from_logits=True), jit_compile=jit)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            history = model.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0)
        losses[jit] = history.history["loss"]
    keras_model = _mlp()
    keras_model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), jit_compile=True)
    keras_losses = keras_model.fit(x, y, batch_size=64, epochs=3, shuffle=False,
                                   verbose=0).history["loss"]
    assert losses[True][-1] < losses[True][0]
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    np.testing.assert_allclose(losses["auto"], losses[False], rtol=1e-5)  # CPU: XLA stays off
    np.testing.assert_allclose(losses[True], keras_losses, rtol=1e-4)


def test_keras_fit_under_xla_runs_the_custom_call():
    """Keras' jit-compiled train step holds nestad's custom calls (backend='kernel' would
    raise if they could not be compiled)."""
    x, y = _digits(128)
    model = nestad_tf.convert(_mlp(), derivative="bits4")
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    with nestad_tf.backend_scope("kernel"):
        model.fit(x, y, batch_size=64, epochs=1, verbose=0)

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)

    targets = {TARGET.search(line).group(1) for line in _custom_calls(step, tf.constant(x[:8]))}
    assert targets == {"nestad_fused_activation_quantized", "nestad_activation_grad_quantized"}


def test_mixed_precision_under_xla():
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = nestad_tf.convert(_mlp())
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    x = tf.constant(_digits(64)[0])

    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(model(x, training=True), tf.float32))
        return loss, tape.gradient(loss, model.trainable_variables)

    graph_loss, graph_grads = tf.function(step)(x)
    jit_loss, jit_grads = tf.function(step, jit_compile=True)(x)
    assert model.layers[0].compute_dtype == "float16"
    np.testing.assert_allclose(jit_loss, graph_loss, rtol=1e-2)
    for g, j in zip(graph_grads, jit_grads):
        np.testing.assert_allclose(j, g, rtol=5e-2, atol=5e-2)


def test_second_order_gradients_under_xla():
    x = tf.constant(np.linspace(-4, 4, 101), tf.float32)

    def hessian_diagonal(derivative, name="mish"):
        @tf.function(jit_compile=True)
        def second(x):
            with tf.GradientTape() as outer:
                outer.watch(x)
                with tf.GradientTape() as inner:
                    inner.watch(x)
                    y = nestad_tf.activation(x, name, derivative=derivative)
                d = inner.gradient(y, x)
            return outer.gradient(d, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)

        return second(x)

    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = keras.activations.mish(x)
        d = inner.gradient(y, x)
    expected = outer.gradient(d, x)
    for derivative in ("full", "exact"):  # mish's exact form is f' itself
        np.testing.assert_allclose(hessian_diagonal(derivative), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(hessian_diagonal("exact", "relu"), np.zeros(101))
    for derivative, name in (("bits4", "mish"), ("exact", "sigmoid")):  # no f' kept
        with pytest.raises(nestad_tf.SecondOrderGradientError):
            hessian_diagonal(derivative, name)


@pytest.mark.parametrize("derivative", ["exact", "uint8"])
def test_saved_model_of_a_jit_compiled_training_step(tmp_path, derivative):
    model = nestad_tf.convert(_mlp(), derivative=derivative)
    x = tf.constant(_digits(32)[0])

    class Trainer(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @tf.function(jit_compile=True, input_signature=[tf.TensorSpec([None, 64], tf.float32)])
        def gradients(self, x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(self.model(x, training=True) ** 2)
            return tape.gradient(loss, self.model.trainable_variables)

    trainer = Trainer()
    before = trainer.gradients(x)
    # Saving traces the gradient of every custom gradient; compressed f' has no
    # second derivative (SecondOrderGradientError), so those are saved without.
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=derivative == "exact")
    tf.saved_model.save(trainer, str(tmp_path), options=options)
    restored = tf.saved_model.load(str(tmp_path))
    after = restored.gradients(x)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)


def _run_python(code, env=None, timeout=300):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, timeout=timeout, cwd=ROOT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.subprocess
def test_library_loaded_after_tensorflow_ran_ops_and_compiled_xla():
    out = _run_python("""
        import tensorflow as tf
        x = tf.random.normal([64, 8])
        tf.function(lambda t: tf.nn.relu(t) * 2.0, jit_compile=True)(x)   # XLA first
        import nestad_tf                                                   # then nestad

        @tf.function(jit_compile=True)
        def step(t):
            with tf.GradientTape() as tape:
                tape.watch(t)
                y = nestad_tf.mish(t)
            return y, tape.gradient(y, t)

        y, _ = step(x)
        hlo = step.experimental_get_compiler_ir(x)(stage="optimized_hlo")
        assert 'custom_call_target="nestad_fused_activation"' in hlo, hlo
        tf.debugging.assert_near(y, x * tf.tanh(tf.nn.softplus(x)))
        print("ok")
    """)
    assert out.strip().endswith("ok")


_MEMORY_MODELS = {
    # Dense layers with activation=: nestad keeps f' (or less), Keras+XLA more.
    "dense": """keras.Sequential([keras.Input((256,))] +
                 [keras.layers.Dense(512, activation=ACTIVATION) for _ in range(4)] +
                 [keras.layers.Dense(1)])""",
    # Conv -> BatchNormalization -> Activation: after the normalization nestad keeps
    # nothing under XLA (the backward pass recomputes in fused ops).
    "conv_bn": """keras.Sequential([keras.Input((32, 32, 8))] + sum(
                 [[keras.layers.Conv2D(32, 3, padding="same", use_bias=False),
                   keras.layers.BatchNormalization(), keras.layers.Activation(ACTIVATION)]
                  for _ in range(3)], []) + [keras.layers.GlobalAveragePooling2D(),
                 keras.layers.Dense(1)])""",
}


@pytest.mark.subprocess
@pytest.mark.parametrize("activation,model", [("mish", "dense"), ("gelu", "dense"),
                                              ("mish", "conv_bn")])
def test_xla_keeps_less_than_keras_activation(activation, model, tmp_path):
    """A jit-compiled training step: XLA's own buffer assignment (exact, deterministic)
    and the allocator peak, Keras' activation vs nestad's converted model (kernels, and
    the pure-TF path), in one process."""
    out = _run_python(f"""
        import json, keras, tensorflow as tf, nestad_tf

        def peak(backend, tag):
            keras.utils.set_random_seed(0)
            ACTIVATION = "{activation}"
            model = {_MEMORY_MODELS[model]}
            if backend:
                model = nestad_tf.convert(model, include=[ACTIVATION], backend=backend)
            opt = keras.optimizers.SGD(0.01)
            x = tf.random.normal([256] + list(model.input_shape[1:]), seed=1)

            def step(x):
                with tf.GradientTape() as tape:
                    loss = tf.reduce_mean(model(x, training=True) ** 2)
                grads = tape.gradient(loss, model.trainable_variables)
                opt.apply_gradients(zip(grads, model.trainable_variables))
                return loss
            step.__name__ = tag
            step = tf.function(step, jit_compile=True)
            step(x)
            tf.config.experimental.reset_memory_stats("CPU:0")
            base = tf.config.experimental.get_memory_info("CPU:0")["current"]
            step(x)
            return tf.config.experimental.get_memory_info("CPU:0")["peak"] - base

        print(json.dumps({{"keras": peak(None, "keras_step"),
                          "nestad": peak("auto", "nestad_step"),
                          "pure_tf": peak("tf", "pure_tf_step")}}))
    """, env={"XLA_FLAGS": f"--xla_dump_to={tmp_path}"})
    peaks = json.loads(out.strip().splitlines()[-1])
    temp = {}
    for tag in ("keras", "nestad", "pure_tf"):
        files = [f for f in os.listdir(tmp_path)
                 if f"{tag}_step" in f and f.endswith("buffer-assignment.txt")]
        assert len(files) == 1, files
        with open(os.path.join(tmp_path, files[0])) as f:
            temp[tag] = int(re.search(r"allocation \d+: size (\d+), preallocated-temp",
                                      f.read()).group(1))
    assert temp["nestad"] < temp["keras"], temp
    assert peaks["nestad"] <= peaks["keras"], peaks
    # The pure-TF path (TPU, no kernels) under XLA is the reference itself: never more.
    assert temp["pure_tf"] <= temp["keras"], temp


def _conv_bn_model(activation="mish", sequential=False):
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Conv2D(8, 3, padding="same", use_bias=False),
              keras.layers.BatchNormalization(), keras.layers.Activation(activation),
              keras.layers.Conv2D(8, 3, padding="same"), keras.layers.Activation(activation),
              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]
    if sequential:
        return keras.Sequential([keras.Input((8, 8, 2))] + layers)
    inputs = keras.Input((8, 8, 2))
    h = inputs
    for layer in layers:
        h = layer(h)
    return keras.Model(inputs, h)


@pytest.mark.parametrize("sequential", [False, True], ids=["functional", "sequential"])
def test_convert_marks_activations_after_a_normalization(sequential, tmp_path):
    converted = nestad_tf.convert(_conv_bn_model(sequential=sequential), fuse_normalization=False)
    marked = [layer.after_normalization for layer in converted.layers
              if isinstance(layer, nestad_tf.layers.Activation)]
    assert marked == [True, False]
    report = str(nestad_tf.memory_report(converted))
    assert report.count("under XLA keeps nothing") == 1, report
    path = str(tmp_path / "m.keras")
    converted.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert [getattr(layer, "after_normalization", None) for layer in loaded.layers
            if isinstance(layer, nestad_tf.layers.Activation)] == [True, False]


def test_after_a_normalization_xla_recomputes_f_prime_in_fused_ops():
    """Under XLA the activation after BatchNormalization keeps no f' (its backward pass is
    XLA's fusion of the reference's gradient); graph mode keeps f' as everywhere else."""
    model = nestad_tf.convert(_conv_bn_model(), fuse_normalization=False)
    x = tf.random.normal([4, 8, 8, 2], seed=2)

    def gradients(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True) ** 2)
        return tape.gradient(loss, model.trainable_variables)

    jitted = tf.function(gradients, jit_compile=True)
    for graph, jit in zip(tf.function(gradients)(x), jitted(x)):
        np.testing.assert_allclose(jit, graph, rtol=1e-4, atol=1e-5)
    targets = [TARGET.search(line).group(1) for line in _custom_calls(jitted, x)]
    # First activation: y from the kernel, no f' kept or applied by a custom call;
    # second (after a Conv2D): the fused pair as everywhere else.
    assert sorted(targets) == ["nestad_activation_forward", "nestad_fused_activation",
                               "nestad_fused_activation_grad"], targets
