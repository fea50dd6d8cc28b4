"""The `python -m nestad_tf.bench` command line (see `--help` of each subcommand)."""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional

from . import frameworks as _frameworks
from . import models as _models
from . import report as _report
from . import targets as _targets

ISSUE_MODELS = ("efficientnet_b0", "efficientnet_b0_mish", "convnext_tiny", "bert_like")

DESCRIPTION = """\
Benchmarks of nestad_tf against the baselines a user could pick instead: Keras'
own activations, recomputation (tf.recompute_grad) and XLA.

  model   peak memory, activation memory and step time of one training step
          (forward, backward, Adam update in a tf.function) per model and mode,
          each mode in a process of its own; --backend torch|jax: the same on
          Keras' torch and JAX backends (bytes autograd saves / XLA's buffers)
  kernel  GB/s of the fused kernels against TF ops, XLA and the copy bandwidth

Each writes a table to stdout, a JSON file with every raw figure (and the
machine, TensorFlow and nestad_tf versions) and a PNG chart.
"""

MODEL_EPILOG = f"""\
models: {', '.join(_models.MODELS)}, 'all' ({', '.join(ISSUE_MODELS)}), or any
keras.applications name (e.g. MobileNetV3Small). Defaults (batch, size):
""" + "\n".join(f"  {name:<22} batch {spec.batch}, {spec.size} {spec.size_name}: {spec.description}"
                for name, spec in _models.MODELS.items()) + f"""
  <keras.applications>   batch {_models.APPLICATION_DEFAULTS.batch}, {_models.APPLICATION_DEFAULTS.size} px

modes: keras (as Keras builds it), recompute (each activation in tf.recompute_grad),
nestad (nestad_tf.convert, kernel backend; default rule: only activations where
nestad keeps fewer bytes), nestad-tf (same, pure-TF backend), nestad-all (every
activation converted), floor (every activation replaced by the identity).

figures: peak = allocator peak over the timed steps (weights, optimizer state and
batch included); act = peak - floor peak; MiB/sample = (peak(batch) -
peak(slope batch)) / (batch - slope batch); step = median of the timed steps.

--backend torch|jax (issue 14): one process per model, with KERAS_BACKEND set, builds
every mode and interleaves their timed steps (round r runs one step of each mode, the
order rotated by r; --steps rounds), so that a change of load hits every mode alike.
Models default to {', '.join(_frameworks.ISSUE_MODELS)}; defaults batch 8,
bert_like 128 tokens and --bert-layers {_frameworks.DEFAULT_BERT_LAYERS}, efficientnet_b0_mish 96 px.
Modes there:
  keras        the model as Keras builds it
  nestad       nestad_tf.convert(model, include=<every activation of the model>,
               backend="kernel", fuse_normalization=False): every activation keeps f'
  nestad-auto  nestad_tf.convert(model, backend="kernel", fuse_normalization=False): the
               default rule, measured on that framework (torch's gelu/silu keep only x)
  nestad-tf    nestad with backend="tf": torch.func.jvp / jax.jvp of Keras' definition
  nestad-fused nestad_tf.convert(model, backend="kernel"): BatchNormalization fused where
               the library can on that backend (not run by default)
  recompute    every activation Keras' own inside torch.utils.checkpoint.checkpoint(fn, x,
               use_reentrant=False) / jax.checkpoint(fn)
  floor        every activation the identity
figures there: torch (eager model.train_on_batch, as fit runs it): saved = bytes autograd
saves in one step (saved_tensors_hooks, once per storage, weights left out). JAX
(jax.jit(model.train_step, donate_argnums=0), what fit compiles): temp = XLA's temp
buffer (compiled.memory_analysis()), total = arguments + outputs - aliased + temp,
residual = bytes of the loss VJP's residuals (weights left out). act = the figure minus
the floor's. --xla and --slope-batch do not apply (torch runs eager, JAX jitted).

example:
  python -m nestad_tf.bench model --model efficientnet_b0_mish
  python -m nestad_tf.bench model --model MobileNetV3Small --batch 8 --size 96 --xla off
  python -m nestad_tf.bench model --backend torch --model bert_like,efficientnet_b0_mish
"""

KERNEL_EPILOG = """\
forward: x -> (y, f'(x)), 1 read + 2 writes; backward: dx = dy * f'(x), 2 reads +
1 write. Implementations: nestad (fused op), tf (forward-mode AD of Keras'
definition in a tf.function; dy * d), xla (the same with jit_compile=True).
Baselines from the same run: copy (y = x * s), copy_1to2, copy_2to1, numpy_copy.

example:
  python -m nestad_tf.bench kernel --activations silu,gelu,mish --elements 64M --threads 2
"""


def _elements(text: str) -> int:
    multipliers = {"k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30}
    text = text.strip().lower()
    if text and text[-1] in multipliers:
        return int(float(text[:-1]) * multipliers[text[-1]])
    return int(text)


def _names(text: str) -> List[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nestad_tf.bench", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{model,kernel}")

    model = commands.add_parser(
        "model", help="memory and step time of a training step per model and mode",
        description="Memory and step time of one training step per model and mode, each "
                    "mode in its own process.",
        epilog=MODEL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    model.add_argument("--backend", choices=("tensorflow",) + _frameworks.BACKENDS,
                       default="tensorflow",
                       help="Keras backend of the runs (default: %(default)s); torch and jax: "
                            "see below")
    model.add_argument("--model", action="append", metavar="NAME",
                       help="model to run (repeat or comma-separate; 'all': the issue's four, "
                            "on torch/jax the issue-14 two). Default: all")
    model.add_argument("--modes",
                       help=f"comma-separated modes out of {', '.join(_models.MODES)} "
                            f"(default: {','.join(_models.DEFAULT_MODES)}); torch/jax: out of "
                            f"{', '.join(_frameworks.MODES)} "
                            f"(default: {','.join(_frameworks.DEFAULT_MODES)})")
    model.add_argument("--xla", choices=("off", "on", "both"), default="both",
                       help="run with jit_compile off, on, or both (default: %(default)s; "
                            "TensorFlow only)")
    model.add_argument("--batch", type=int, help="batch size (default: the model's, see below)")
    model.add_argument("--slope-batch", type=int,
                       help="second batch size for the per-sample slope (default: batch // 2; "
                            "0: no slope)")
    model.add_argument("--size", type=int,
                       help="image side in pixels, sequence length (bert_like) or width (mlp)")
    model.add_argument("--steps", type=int, default=5,
                       help="timed steps, at least 5 for the issue's figures (default: "
                            "%(default)s); torch/jax: timed rounds of interleaved steps")
    model.add_argument("--warmup", type=int, default=2,
                       help="untimed steps first, the first one traces (default: %(default)s)")
    model.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                       help="optimizer of the training step (default: %(default)s)")
    model.add_argument("--bert-layers", type=int,
                       help=f"encoder layers of bert_like (default: 4; torch/jax: "
                            f"{_frameworks.DEFAULT_BERT_LAYERS})")
    model.add_argument("--mlp-depth", type=int, default=4, help="Dense layers of mlp (default: 4)")
    model.add_argument("--classes", type=int, default=1000,
                       help="classes of image models (default: %(default)s)")
    model.add_argument("--threads", type=int, default=0,
                       help="intra-op threads (default 0: TensorFlow's choice; torch: "
                            "torch.set_num_threads; jax: not limited by this option)")
    model.add_argument("--inter-threads", type=int, default=0,
                       help="inter-op threads (default 0: TensorFlow's choice; 1 runs ops one at a "
                            "time, which did not make the peak repeatable here)")
    model.add_argument("--timeout", type=float, default=3600,
                       help="seconds allowed per run before it is recorded as failed")
    _add_outputs(model, "model")

    kernel = commands.add_parser(
        "kernel", help="GB/s of the fused kernels against TF ops, XLA and copy",
        description="Forward and backward throughput of the fused kernels against the same "
                    "computation in TF ops (graph and XLA) and the copy bandwidth.",
        epilog=KERNEL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    kernel.add_argument("--activations", default="silu,gelu,mish",
                        help="comma-separated activations with a kernel, or 'all' "
                             "(default: %(default)s)")
    kernel.add_argument("--elements", type=_elements, default=64 * 2 ** 20,
                        help="elements per tensor, e.g. 64M, 1M, 65536 (default: 64M)")
    kernel.add_argument("--dtype", default="float32",
                        choices=("float16", "bfloat16", "float32", "float64"))
    kernel.add_argument("--threads", type=int, default=2,
                        help="intra-op threads (default: %(default)s)")
    kernel.add_argument("--repeats", type=int, default=10,
                        help="timed calls per figure (default: %(default)s)")
    kernel.add_argument("--warmup", type=int, default=2, help="untimed calls first (default: 2)")
    kernel.add_argument("--no-xla", action="store_true", help="skip the XLA implementation")
    _add_outputs(kernel, "kernel")
    return parser


def _add_outputs(parser, kind):
    parser.add_argument("--json", metavar="PATH",
                        help=f"JSON output (default: bench_results/{kind}-<date>.json)")
    parser.add_argument("--png", metavar="PATH",
                        help="PNG chart (default: the JSON path with .png)")
    parser.add_argument("--no-png", action="store_true", help="write no chart")


def _output_paths(args, kind):
    json_path = args.json or os.path.join(
        "bench_results", f"{kind}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
    png_path = None if args.no_png else (args.png or os.path.splitext(json_path)[0] + ".png")
    for path in (json_path, png_path):
        if path and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    return json_path, png_path


def _write_json(path, document):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(document, f, indent=1)
    os.replace(tmp, path)


def _log(message):
    print(message, file=sys.stderr, flush=True)


# --- model ----------------------------------------------------------------------


def _model_names(values: Optional[List[str]], every=ISSUE_MODELS) -> List[str]:
    names = []
    for value in values or ["all"]:
        for name in _names(value):
            names.extend(every if name == "all" else [name])
    for name in names:
        if not _models.known_model(name):
            raise SystemExit(f"unknown model {name!r}: use one of {', '.join(_models.MODELS)}, "
                             "'all', or a keras.applications name")
    return names


def _worker_env(backend="tensorflow"):
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["KERAS_BACKEND"] = backend  # read by Keras at its first import, in the worker
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_worker(spec: dict, timeout: float) -> dict:
    """Runs one measurement in a fresh Python process; returns its result (or the failure).

    The process runs Keras on spec["backend"] (default tensorflow).
    """
    with tempfile.TemporaryDirectory(prefix="nestad_bench_") as tmp:
        spec_path, result_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "result.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        command = [sys.executable, "-m", "nestad_tf.bench.worker", spec_path, result_path]
        process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   text=True, env=_worker_env(spec.get("backend", "tensorflow")))
        tail: List[str] = []

        def follow():  # progress lines as they come; the last lines kept for failures
            for line in process.stderr:
                if line.startswith("[bench]"):
                    _log("      " + line[len("[bench] "):].rstrip())
                tail.append(line.rstrip())
                del tail[:-30]

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        timed_out = False
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            timed_out = True
        reader.join(timeout=10)
        if process.returncode == 0 and os.path.exists(result_path):
            with open(result_path) as f:
                return json.load(f)
    reason = "timed out" if timed_out else f"exit status {process.returncode}"
    return {"status": "failed", "reason": reason, "stderr_tail": tail}


def run_models(args) -> dict:
    if args.backend != "tensorflow":
        return run_framework_models(args)
    if args.bert_layers is None:
        args.bert_layers = 4
    names = _model_names(args.model)
    modes = _names(args.modes or ",".join(_models.DEFAULT_MODES))
    for mode in modes:
        if mode not in _models.MODES:
            raise SystemExit(f"unknown mode {mode!r}; modes: {', '.join(_models.MODES)}")
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.xla]
    json_path, png_path = _output_paths(args, "model")
    document = {"kind": "model", "command": " ".join(["python -m nestad_tf.bench"] + sys.argv[1:]),
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": _report.machine_info(), "settings": {}, "runs": []}
    plan = []
    for name in names:
        spec = _models.model_spec(name)
        batch = args.batch or spec.batch
        slope_batch = batch // 2 if args.slope_batch is None else args.slope_batch
        size = args.size or spec.size
        document["settings"][name] = {"batch": batch, "slope_batch": slope_batch, "size": size,
                                      "size_unit": spec.size_name, "steps": args.steps,
                                      "warmup": args.warmup, "optimizer": args.optimizer,
                                      "description": spec.description}
        for xla in settings:
            for mode in modes:
                plan.append({"model": name, "mode": mode, "xla": xla, "batch": batch,
                             "slope_batch": slope_batch or None, "size": size,
                             "steps": args.steps, "warmup": args.warmup,
                             "optimizer": args.optimizer, "intra_threads": args.threads,
                             "inter_threads": args.inter_threads,
                             "options": {"bert_layers": args.bert_layers,
                                         "mlp_depth": args.mlp_depth, "classes": args.classes}})
    started = time.monotonic()
    for index, spec in enumerate(plan, 1):
        label = f"[{index}/{len(plan)}] {spec['model']} {spec['mode']} XLA {'on' if spec['xla'] else 'off'}"
        skip = _models.runs_under_xla(spec["mode"]) if spec["xla"] else None
        if skip:
            _log(f"{label}: skipped ({skip})")
            result = {"status": "skipped", "reason": skip}
        else:
            _log(f"{label} (elapsed {time.monotonic() - started:.0f} s)")
            load_before = _report.machine_info()["load_average"]
            run_started = time.monotonic()
            result = run_worker(spec, args.timeout)
            result["wall_seconds"] = time.monotonic() - run_started
            result["load_average_before"] = load_before
            result["load_average_after"] = _report.machine_info()["load_average"]
            if result["status"] == "ok":
                _log(f"      peak {result['peak_bytes'] / _report.MIB:.1f} MiB, steps "
                     f"{min(result['step_seconds']):.3f}-{max(result['step_seconds']):.3f} s "
                     f"({result['wall_seconds']:.0f} s)")
            else:
                _log(f"      FAILED ({result['reason']}):\n        " +
                     "\n        ".join(result.get("stderr_tail", [])[-8:]))
        record = {key: spec[key] for key in ("model", "mode", "xla", "batch", "slope_batch", "size")}
        record.update(result)
        document["runs"].append(record)
        _write_json(json_path, document)  # partial results survive an interrupted run

    versions = next((run["versions"] for run in document["runs"] if run.get("versions")), None)
    document["versions"] = versions
    document["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    table = _report.derive(document["runs"])
    comparisons = _report.model_comparisons(table)
    document["comparisons"] = comparisons
    document["targets"] = _targets.evaluate({m: c.get("graph", {}) for m, c in comparisons.items()})
    _write_json(json_path, document)
    print(_report.model_table(table, comparisons))
    print(_report.targets_table(document["targets"]))
    if png_path:
        _report.model_chart(table, png_path)
    print(f"\nJSON: {json_path}" + (f"\nPNG:  {png_path}" if png_path else ""))
    return document


def run_framework_models(args) -> dict:
    """`model --backend torch|jax` (issue 14): see frameworks.py for what is measured."""
    backend = args.backend
    if args.bert_layers is None:
        args.bert_layers = _frameworks.DEFAULT_BERT_LAYERS
    names = _model_names(args.model, _frameworks.ISSUE_MODELS)
    modes = _names(args.modes or ",".join(_frameworks.DEFAULT_MODES))
    for mode in modes:
        if mode not in _frameworks.MODES:
            raise SystemExit(f"unknown mode {mode!r} on {backend}; modes: "
                             f"{', '.join(_frameworks.MODES)}")
    json_path, png_path = _output_paths(args, f"model-{backend}")
    document = {"kind": "model", "backend": backend,
                "command": " ".join(["python -m nestad_tf.bench"] + sys.argv[1:]),
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": _report.machine_info(), "settings": {}, "runs": []}
    plan = []
    for name in names:
        spec = _models.model_spec(name)
        default_batch, default_size = _frameworks.defaults(name, spec)
        batch, size = args.batch or default_batch, args.size or default_size
        document["settings"][name] = {
            "backend": backend, "batch": batch, "size": size, "size_unit": spec.size_name,
            "steps": args.steps, "warmup": args.warmup, "optimizer": args.optimizer,
            "bert_layers": args.bert_layers if name == "bert_like" else None,
            "threads": args.threads, "description": spec.description,
            "step": _frameworks.STEP_DESCRIPTION[backend]}
        plan.append({"backend": backend, "model": name, "modes": modes, "batch": batch,
                     "size": size, "steps": args.steps, "warmup": args.warmup,
                     "optimizer": args.optimizer, "intra_threads": args.threads,
                     "options": {"bert_layers": args.bert_layers, "mlp_depth": args.mlp_depth,
                                 "classes": args.classes}})
    started = time.monotonic()
    primary = _frameworks.PRIMARY[backend]
    primary_key = dict((m, k) for m, k, _ in _frameworks.METRICS[backend])[primary]
    for index, spec in enumerate(plan, 1):  # one process per model, its modes interleaved
        _log(f"[{index}/{len(plan)}] {spec['model']} on {backend}: {', '.join(modes)} "
             f"(elapsed {time.monotonic() - started:.0f} s)")
        load_before = _report.machine_info()["load_average"]
        run_started = time.monotonic()
        result = run_worker(spec, args.timeout)
        wall = time.monotonic() - run_started
        load_after = _report.machine_info()["load_average"]
        runs = result.get("runs") if result["status"] == "ok" else [
            dict(result, mode=mode) for mode in modes]
        for run in runs:
            if run["status"] == "ok":
                _log(f"      {run['mode']:<12} {primary} {run[primary_key] / _report.MIB:.1f} MiB, "
                     f"steps {min(run['step_seconds']):.3f}-{max(run['step_seconds']):.3f} s")
            else:
                _log(f"      {run['mode']:<12} FAILED ({run['reason']}):\n        " +
                     "\n        ".join(run.get("stderr_tail", [])[-8:]))
            record = {"backend": backend, "model": spec["model"], "mode": run["mode"],
                      "xla": backend == "jax", "batch": spec["batch"], "slope_batch": None,
                      "size": spec["size"]}
            record.update(run)
            record.update({"wall_seconds": wall, "load_average_before": load_before,
                           "load_average_after": load_after})
            document["runs"].append(record)
        _log(f"      ({wall:.0f} s)")
        _write_json(json_path, document)  # partial results survive an interrupted run

    document["versions"] = next((run["versions"] for run in document["runs"]
                                 if run.get("versions")), None)
    document["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    table = _report.derive_frameworks(document["runs"], backend)
    comparisons = _report.framework_comparisons(table, backend)
    document["comparisons"] = comparisons
    document["targets"] = _targets.evaluate(comparisons, backend=backend)
    _write_json(json_path, document)
    print(_report.framework_table(table, comparisons, backend, document["settings"]))
    print(_report.targets_table(document["targets"],
                                f"issue-14 targets (KERAS_BACKEND={backend}):", digits=4))
    if png_path:
        _report.framework_chart(table, backend, png_path)
    print(f"\nJSON: {json_path}" + (f"\nPNG:  {png_path}" if png_path else ""))
    return document


# --- kernel ---------------------------------------------------------------------


def run_kernels(args) -> dict:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from .. import registry  # pylint: disable=g-import-not-at-top
    from . import kernels as _kernels  # pylint: disable=g-import-not-at-top
    from .worker import versions  # pylint: disable=g-import-not-at-top

    if args.activations == "all":
        activations = [spec.name for spec in registry.builtin_specs()
                       if spec.name != "threshold"]  # threshold has no default parameters
    else:
        activations = [registry.get(name).name for name in _names(args.activations)]
    json_path, png_path = _output_paths(args, "kernel")
    document = {"kind": "kernel", "command": " ".join(["python -m nestad_tf.bench"] + sys.argv[1:]),
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": _report.machine_info(), "versions": versions(),
                "settings": {"elements": args.elements, "dtype": args.dtype,
                             "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                             "repeats": args.repeats, "warmup": args.warmup}}
    _log(f"copy bandwidth: {args.elements:,} {args.dtype} elements, {args.threads} threads")
    copy = _kernels.copy_bandwidth(args.elements, args.dtype, args.warmup, args.repeats)
    document["copy"] = copy
    results = []
    for index, activation in enumerate(activations, 1):
        _log(f"[{index}/{len(activations)}] {activation}")
        results.append(_kernels.activation_throughput(
            activation, args.elements, args.dtype, args.warmup, args.repeats, copy,
            xla=not args.no_xla))
    document["results"] = results
    document["targets"] = _targets.evaluate_kernels(results)
    document["machine"]["load_average_after"] = _report.machine_info()["load_average"]
    _write_json(json_path, document)
    print(_report.kernel_table(copy, results))
    print(_report.targets_table(document["targets"]))
    if png_path:
        _report.kernel_chart(copy, results, png_path)
    print(f"\nJSON: {json_path}" + (f"\nPNG:  {png_path}" if png_path else ""))
    return document


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "model":
        run_models(args)
    else:
        run_kernels(args)
    return 0
