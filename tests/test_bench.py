"""The benchmark suite: the modes rewrite the right activations, and the CLI's JSON is complete.

The smoke tests run the real CLI (`python -m nestad_tf.bench`) on a tiny model and
a tiny tensor; they check that every field is present and every figure positive
and finite, never a timing (timings belong to BENCHMARKS.md, not to tests).
"""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import nestad_tf
from nestad_tf.bench import cli, models
from conftest import tolerance

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_mlp():
    keras.utils.set_random_seed(0)
    return models.mlp(width=16, depth=2)


def _loss_and_gradients(model, x, y):
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x))
    return loss, tape.gradient(loss, model.trainable_variables)


@pytest.mark.parametrize("mode", ["recompute", "nestad", "nestad-tf", "nestad-all"])
def test_modes_keep_keras_values_and_gradients(mode):
    model = _tiny_mlp()
    x = tf.random.normal((8, 64), seed=0)
    y = tf.constant([0, 1, 2, 3, 4, 5, 6, 7])
    rewritten = models.apply_mode(model, mode)
    assert rewritten is not model
    rewritten.set_weights(model.get_weights())
    tol = tolerance(tf.float32)
    expected_loss, expected = _loss_and_gradients(model, x, y)
    loss, gradients = _loss_and_gradients(rewritten, x, y)
    np.testing.assert_allclose(loss.numpy(), expected_loss.numpy(), **tol)
    for got, want in zip(gradients, expected):
        np.testing.assert_allclose(got.numpy(), want.numpy(), **tol)


def test_floor_replaces_every_activation_by_the_identity():
    model = _tiny_mlp()
    floor = models.apply_mode(model, "floor")
    x = tf.random.normal((4, 64), seed=1)
    h = x
    for layer in model.layers[1:]:  # the same Dense layers without their activation
        h = tf.matmul(h, layer.kernel) + layer.bias
    np.testing.assert_allclose(floor(x).numpy(), h.numpy(), **tolerance(tf.float32))


def test_recompute_wraps_keras_activation_in_recompute_grad():
    model = models.apply_mode(_tiny_mlp(), "recompute")
    wrapped = [getattr(layer, "activation", None) for layer in model.layers]
    wrapped = [a for a in wrapped if isinstance(a, models.RecomputedActivation)]
    assert [a.name for a in wrapped] == ["mish", "gelu"]


def test_efficientnet_mish_switches_every_silu():
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3))
    switched = models.switch_activation(model, "silu", "mish")
    report = nestad_tf.memory_report(switched)
    names = {entry.activation for entry in report}
    assert "silu" not in names and "mish" in names
    assert len(report) == len(nestad_tf.memory_report(model))


def test_application_names_resolve():
    assert models.application_constructor("mobilenetv3small") is keras.applications.MobileNetV3Small
    assert models.application_constructor("keras.applications.ConvNeXtTiny") is (
        keras.applications.ConvNeXtTiny)
    assert models.application_constructor("NoSuchNet") is None


def test_help_documents_both_commands():
    text = cli.build_parser().format_help()
    assert "model" in text and "kernel" in text
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["model", "--xla", "sometimes"])


def _run_cli(args, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    completed = subprocess.run([sys.executable, "-m", "nestad_tf.bench"] + args, cwd=tmp_path,
                               capture_output=True, text=True, env=env, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def _positive_finite(value, name):
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (name, value)


@pytest.mark.subprocess
def test_model_cli_smoke(tmp_path):
    out = tmp_path / "model.json"
    # small, but big enough that TF's CPU allocator counts its tensors (a width-16 MLP reads 0 B)
    completed = _run_cli(["model", "--model", "mlp", "--batch", "32", "--size", "256",
                          "--mlp-depth", "2", "--modes", "keras,recompute,nestad,floor", "--xla", "both",
                          "--steps", "2", "--warmup", "1", "--json", str(out)], tmp_path)
    document = json.loads(out.read_text())
    assert (tmp_path / "model.png").stat().st_size > 0
    for key in ("kind", "command", "machine", "versions", "settings", "runs", "comparisons",
                "targets"):
        assert key in document, key
    assert document["versions"]["tensorflow"] == tf.__version__
    assert document["versions"]["nestad_tf"] == nestad_tf.__version__
    runs = {(run["mode"], run["xla"]): run for run in document["runs"]}
    assert set(runs) == {(m, x) for m in ("keras", "recompute", "nestad", "floor")
                         for x in (False, True)}
    for (mode, xla), run in runs.items():  # nestad under XLA too: its custom calls
        assert run["status"] == "ok", run
        for field in ("peak_bytes", "resident_bytes", "slope_peak_bytes", "step_median_seconds",
                      "step_min_seconds", "step_max_seconds", "first_step_seconds",
                      "parameters"):
            _positive_finite(run[field], f"{mode} {field}")
        assert len(run["step_seconds"]) == 2
        assert all(math.isfinite(loss) for loss in run["losses"])
        assert run["peak_bytes"] >= run["resident_bytes"]
        for field in ("activation_bytes", "peak_bytes_per_sample", "activation_bytes_per_sample"):
            assert field in run and run[field] is not None and math.isfinite(run[field])
    assert runs[("nestad", False)]["activations"]["replaced"] == 2  # mish and gelu
    assert runs[("keras", False)]["activations"]["replaced"] == 0
    assert runs[("floor", False)]["activation_bytes"] == 0
    ratios = document["comparisons"]["mlp"]["graph"]
    for name in ("peak keras/nestad", "time nestad/keras", "peak nestad/recompute"):
        _positive_finite(ratios[name], name)
    assert "mlp" in completed.stdout and "peak MiB" in completed.stdout


@pytest.mark.subprocess
def test_kernel_cli_smoke(tmp_path):
    out = tmp_path / "kernel.json"
    completed = _run_cli(["kernel", "--activations", "mish,gelu", "--elements", "64k",
                          "--repeats", "2", "--warmup", "1", "--json", str(out)], tmp_path)
    document = json.loads(out.read_text())
    assert (tmp_path / "kernel.png").stat().st_size > 0
    for key in ("kind", "command", "machine", "versions", "settings", "copy", "results",
                "targets"):
        assert key in document, key
    assert document["settings"]["elements"] == 65536
    assert document["settings"]["intra_op_threads"] == 2
    for name in ("copy", "copy_1to2", "copy_2to1", "numpy_copy"):
        _positive_finite(document["copy"][name]["gb_per_s"], name)
    assert [r["activation"] for r in document["results"]] == ["mish", "gelu"]
    for result in document["results"]:
        for direction in ("forward", "backward"):
            assert set(result[direction]) == {"nestad", "tf", "xla", "xla_call"}
            for name, figure in result[direction].items():
                assert figure["bytes"] == 12 * 65536
                for field in ("gb_per_s", "median_seconds", "min_seconds", "max_seconds",
                              "fraction_of_copy", "fraction_of_copy_2to1"):
                    _positive_finite(figure[field], f"{direction} {name} {field}")
    assert {(t["activation"], t["direction"]) for t in document["targets"]} == {
        (a, d) for a in ("mish", "gelu") for d in ("forward", "backward")}
    assert "GB/s" in completed.stdout


# --- Keras' torch and JAX backends (issue 14): `model --backend torch|jax` ---

FRAMEWORK_MODES = ("keras", "recompute", "nestad", "nestad-bfloat16", "floor")


def _installed(name):
    import importlib.util  # pylint: disable=g-import-not-at-top

    return importlib.util.find_spec(name) is not None


@pytest.fixture(scope="module")
def framework_documents(tmp_path_factory):
    """The CLI on a tiny MLP (mish, gelu), 1 timed step, torch and JAX started together."""
    tmp = tmp_path_factory.mktemp("framework_bench")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    processes = {}
    for backend in ("torch", "jax"):
        if not _installed(backend):
            continue
        command = [sys.executable, "-m", "nestad_tf.bench", "model", "--backend", backend,
                   "--model", "mlp", "--batch", "8", "--size", "32", "--mlp-depth", "2",
                   "--modes", ",".join(FRAMEWORK_MODES), "--steps", "1", "--warmup", "1",
                   "--json", str(tmp / f"{backend}.json")]
        processes[backend] = subprocess.Popen(command, cwd=tmp, env=env, text=True,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    documents = {}
    for backend, process in processes.items():
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        documents[backend] = (json.loads((tmp / f"{backend}.json").read_text()), stdout)
    return documents


def _framework_document(documents, backend):
    if backend not in documents:
        pytest.skip(f"{backend} is not installed")
    return documents[backend]


@pytest.mark.subprocess
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_framework_model_cli_smoke(framework_documents, backend):
    document, stdout = _framework_document(framework_documents, backend)
    assert document["backend"] == backend
    assert document["versions"]["keras_backend"] == backend
    assert document["versions"][backend]
    runs = {run["mode"]: run for run in document["runs"]}
    assert set(runs) == set(FRAMEWORK_MODES)
    memory = {"torch": ("saved_bytes",), "jax": ("temp_bytes", "total_bytes", "residual_bytes")}
    for mode, run in runs.items():
        assert run["status"] == "ok", run
        assert run["backend"] == backend and run["model"] == "mlp"
        for field in memory[backend] + ("step_median_seconds", "first_step_seconds",
                                        "parameters"):
            _positive_finite(run[field], f"{mode} {field}")
        assert len(run["step_seconds"]) == 1
        assert all(math.isfinite(loss) for loss in run["losses"])
        assert run["activation_bytes"] is not None
    # the same weights and batch in every mode: Keras, nestad and recompute start from one loss
    first = runs["keras"]["losses"][0]
    for mode in ("nestad", "recompute"):
        assert runs[mode]["losses"][0] == pytest.approx(first, rel=1e-5)
    assert runs["keras"]["activations"]["replaced"] == 0
    assert runs["nestad"]["activations"]["replaced"] == 2  # mish and gelu, include= both
    assert runs["nestad"]["activations"]["replaced_activations"] == ["gelu", "mish"]
    assert runs["floor"]["activation_bytes"] == 0
    # Keras' mish keeps more than f' on both frameworks (torch: x and tanh(softplus(x)))
    primary = "saved_bytes" if backend == "torch" else "residual_bytes"
    assert runs["nestad"][primary] < runs["keras"][primary]
    assert runs["nestad"][primary] <= runs["recompute"][primary]
    # bfloat16 f' (the same codes as on TensorFlow): below nestad's float32 f' and recompute's x
    assert runs["nestad-bfloat16"][primary] < runs["nestad"][primary]
    assert runs["nestad-bfloat16"]["losses"][0] == pytest.approx(first, rel=1e-5)
    ratios = document["comparisons"]["mlp"]
    key = "saved" if backend == "torch" else "temp"
    for name in (f"{key} keras/nestad", f"{key} nestad/recompute", "time nestad/keras",
                 "time recompute/nestad", f"{key} nestad-bfloat16/recompute"):
        _positive_finite(ratios[name], name)
    assert {t["metric"] for t in document["targets"]} >= {f"{key} nestad/keras",
                                                          "time nestad/keras"}
    assert all(t["backend"] == backend for t in document["targets"])
    assert f"KERAS_BACKEND={backend}" in stdout and "issue-14 targets" in stdout


def test_framework_targets_read_only_their_backend():
    from nestad_tf.bench import targets  # pylint: disable=g-import-not-at-top

    figures = {"keras": {"saved": 200, "time": 1.0}, "nestad": {"saved": 200, "time": 0.9},
               "recompute": {"saved": 250, "time": 1.2}}
    ratios = targets.comparisons(figures, metrics=("saved", "time"))
    records = {r["metric"]: r for r in targets.evaluate({"m": ratios}, backend="torch")}
    assert records["saved nestad/keras"]["met"] is False  # equal is not "keeps less"
    assert records["saved nestad/recompute"]["met"] is True
    assert records["time nestad/keras"]["met"] is True
    tensorflow = targets.evaluate({"m": ratios})  # the TensorFlow targets: only time is shared
    assert [r["metric"] for r in tensorflow] == ["time nestad/keras"]
    assert all("backend" not in r for r in tensorflow)


def test_recompute_mode_names_the_backend_wrapper():
    (activation,) = [a for a in (getattr(layer, "activation", None) for layer in
                                 models.apply_mode(_tiny_mlp(), "recompute").layers)
                     if isinstance(a, models.RecomputedActivation)][:1]
    assert repr(activation).startswith("tf.recompute_grad(")
