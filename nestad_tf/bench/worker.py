"""One model x mode x XLA measurement, in a process of its own.

    python -m nestad_tf.bench.worker SPEC.json RESULT.json

The parent (`python -m nestad_tf.bench model`) starts one such process per
run, so that the allocations of one mode never count in another's peak. The
worker builds the model, rewrites its activations for the mode, traces one
training step (forward, backward, optimizer update) in a `tf.function` and
measures:

  peak_bytes        allocator peak (`tf.config.experimental.get_memory_info`) over the
                    timed steps at `batch`, after `reset_memory_stats`; it includes the
                    weights, optimizer state and batch resident at the reset
  resident_bytes    what was allocated at the reset (weights, optimizer slots, batch)
  slope_peak_bytes  the same peak at `slope_batch` (the per-sample slope comes from both)
  step_seconds      every timed step (the parent reports the median, min and max)

On Keras' torch and JAX backends (spec["backend"], issue 14) one process measures
every mode of one model instead, their steps interleaved: `nestad_tf.bench.frameworks.run`.

Progress goes to stderr as lines starting with "[bench]".
"""

import gc
import json
import os
import platform
import sys
import time


def _progress(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run(spec):
    """Runs one measurement described by `spec` (a dict, see cli.py) and returns a dict."""
    if spec.get("backend", "tensorflow") != "tensorflow":  # Keras on torch / JAX (issue 14)
        from . import frameworks  # pylint: disable=g-import-not-at-top

        return frameworks.run(spec)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    if spec.get("intra_threads"):
        tf.config.threading.set_intra_op_parallelism_threads(spec["intra_threads"])
    if spec.get("inter_threads"):
        tf.config.threading.set_inter_op_parallelism_threads(spec["inter_threads"])
    import keras  # pylint: disable=g-import-not-at-top

    import nestad_tf  # pylint: disable=g-import-not-at-top
    from . import models  # pylint: disable=g-import-not-at-top

    keras.utils.set_random_seed(spec.get("seed", 0))
    started = time.perf_counter()
    _progress(f"building {spec['model']} ({spec['size']})")
    model, make_batch = models.build(spec["model"], spec["size"], spec.get("options", {}))
    keras_report = nestad_tf.memory_report(model, backend="kernel")
    model_mode = models.apply_mode(model, spec["mode"])
    if model_mode is not model:
        del model
    model = model_mode
    report = nestad_tf.memory_report(model, backend="kernel")
    build_seconds = time.perf_counter() - started

    optimizer = _optimizer(keras, spec.get("optimizer", "adam"))
    optimizer.build(model.trainable_variables)
    loss_function = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def train_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_function(y, logits)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    step = tf.function(train_step, jit_compile=bool(spec["xla"]))
    x, y = make_batch(spec["batch"])

    _progress(f"tracing{' and XLA-compiling' if spec['xla'] else ''} the training step")
    started = time.perf_counter()
    losses = [float(step(x, y))]
    first_step_seconds = time.perf_counter() - started
    for i in range(spec["warmup"] - 1):
        losses.append(float(step(x, y)))

    gc.collect()
    tf.config.experimental.reset_memory_stats("CPU:0")
    resident = tf.config.experimental.get_memory_info("CPU:0")["current"]
    seconds = []
    for i in range(spec["steps"]):
        _progress(f"timed step {i + 1}/{spec['steps']}")
        started = time.perf_counter()
        losses.append(float(step(x, y)))
        seconds.append(time.perf_counter() - started)
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]

    slope_peak = slope_resident = None
    if spec.get("slope_batch"):
        _progress(f"peak at batch {spec['slope_batch']} (for the per-sample slope)")
        del x, y
        x, y = make_batch(spec["slope_batch"])
        losses.append(float(step(x, y)))  # traces (and compiles) for the new shape
        gc.collect()
        tf.config.experimental.reset_memory_stats("CPU:0")
        slope_resident = tf.config.experimental.get_memory_info("CPU:0")["current"]
        losses.append(float(step(x, y)))
        slope_peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]

    return {
        "model": spec["model"],
        "mode": spec["mode"],
        "xla": bool(spec["xla"]),
        "status": "ok",
        "batch": spec["batch"],
        "slope_batch": spec.get("slope_batch"),
        "size": spec["size"],
        "parameters": int(sum(int(tf.size(v)) for v in model.trainable_variables)),
        "peak_bytes": int(peak),
        "resident_bytes": int(resident),
        "slope_peak_bytes": None if slope_peak is None else int(slope_peak),
        "slope_resident_bytes": None if slope_resident is None else int(slope_resident),
        "step_seconds": seconds,
        "first_step_seconds": first_step_seconds,
        "build_seconds": build_seconds,
        "losses": losses,
        "activations": _summary(report),
        "keras_activations": _summary(keras_report),
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
        "versions": versions(),
    }


def _optimizer(keras, name):
    if name == "adam":
        return keras.optimizers.Adam(1e-4)
    if name == "sgd":
        return keras.optimizers.SGD(1e-3)
    raise ValueError(f"unknown optimizer {name!r} (adam or sgd)")


def _summary(report):
    """What memory_report says: how many activations were rewritten, and the bytes kept.

    For nestad modes "replaced" counts the activations nestad computes; for recompute and
    floor it counts the activations the bench rewrote (memory_report lists them as
    nestad_tf objects, and its byte figures are nestad's, so only the counts apply).
    """
    return {
        "total": len(report),
        "replaced": len(report.replaced),
        "replaced_activations": sorted({entry.activation for entry in report.replaced}),
        "left_alone": sorted({f"{entry.activation}: {entry.reason}" for entry in report.left_alone}),
        "keras_bytes_per_sample": report.keras_bytes_per_sample,
        "bytes_per_sample": report.bytes_per_sample,
    }


def versions():
    """Versions of Python, TensorFlow, Keras, numpy and nestad_tf, and where the kernels come from."""
    import keras  # pylint: disable=g-import-not-at-top
    import numpy  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    import nestad_tf  # pylint: disable=g-import-not-at-top

    info = nestad_tf.backend_info()
    found = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "numpy": numpy.__version__,
        "nestad_tf": nestad_tf.__version__,
        "nestad_kernels": info["reason"],
        "nestad_kernel_library": _file_stamp(info["library"]),
        "nestad_commit": _git_commit(),
    }
    for framework in ("torch", "jax", "jaxlib"):  # only the ones this run imported
        module = sys.modules.get(framework)
        if module is not None:
            found[framework] = getattr(module, "__version__", None)
    return found


def _file_stamp(path):
    """Path, size and modification time of the kernel library (rebuilds show up here)."""
    try:
        stat = os.stat(path)
    except (OSError, TypeError):
        return None
    return {"path": path, "bytes": stat.st_size,
            "modified": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(stat.st_mtime))}


def _git_commit():
    import subprocess  # pylint: disable=g-import-not-at-top

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+uncommitted" if dirty else "")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        sys.exit("usage: python -m nestad_tf.bench.worker SPEC.json RESULT.json")
    with open(argv[0]) as f:
        spec = json.load(f)
    result = run(spec)
    with open(argv[1], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # as in __main__.py
    main()
