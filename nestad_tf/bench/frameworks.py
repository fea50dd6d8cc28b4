"""The `model` benchmark on Keras' torch and JAX backends (issue 14), worker side.

    python -m nestad_tf.bench model --backend torch
    python -m nestad_tf.bench model --backend jax

The parent starts one process per model with `KERAS_BACKEND` set (cli.py);
`run(spec)` here builds the model (the same Keras builders as the TensorFlow
bench), rewrites its activations once per mode, and measures one training step
of each the way `model.fit` runs it on that backend, the timed steps of the
modes interleaved (see `run`):

torch   `model.train_on_batch` after `compile(jit_compile=False)`: Keras' TorchTrainer
        step (forward, `loss.backward()`, the Keras optimizer under `torch.no_grad`),
        eager, as `fit` runs it (Keras' "auto" never picks torch.compile).
          saved_bytes   bytes autograd saved for the backward pass during one step:
                        every tensor given to `torch.autograd.graph.saved_tensors_hooks`,
                        counted once per underlying storage (views and tensors saved by
                        several ops count once), storages of the model's variables
                        left out (they are resident anyway; `saved_weight_bytes`). The
                        batch is in it (the first layer saves it), the same in every mode.
                        All of them are alive together from the end of the forward pass
                        until the backward pass frees them: the activation memory a step
                        holds at its peak (no CPU allocator peak is read on torch).
          step_seconds  wall time of each timed `train_on_batch`.
jax     Keras' JAXTrainer step (`model.train_step`: `stateless_call` under
        `jax.value_and_grad`, then `optimizer.stateless_apply`) in `jax.jit(...,
        donate_argnums=0)`, exactly the function `fit` compiles, lowered and compiled once:
          temp_bytes      `compiled.memory_analysis().temp_size_in_bytes`: XLA's buffer for
                          every intermediate of the step (residuals kept from the forward
                          for the backward among them) after buffer sharing
          total_bytes     argument + output - alias + temp (weights, optimizer state and
                          batch in; the donated state aliased)
          residual_bytes  the residuals of the loss's VJP (jax's `saved_residuals`, before
                          XLA), weights and literals left out: what AD asks to keep
          step_seconds    wall time of each timed compiled step (`block_until_ready`).

Modes (`MODES`; each activation on its own, `fuse_normalization=False`, as the
TensorFlow bench's `nestad`):
  keras        the model as Keras builds it
  nestad       `convert(model, include=<every activation the model has>, backend="kernel")`
               (every activation keeps f', computed by the C++ kernels)
  nestad-auto  `convert(model, backend="kernel")`: the default memory rule, which on these
               backends compares with what that framework's Keras activation keeps
  nestad-tf    as nestad with `backend="tf"`: torch.func.jvp / jax.jvp of Keras' definition
  nestad-fused `convert(model, backend="kernel")` with its default BatchNormalization
               fusion, where the library has fused kernels for the backend (not a default mode)
  nestad-<derivative>  as nestad with `derivative=` (full, bfloat16, uint8, bits4 ... bits1):
               f' kept compressed, the same codes as on TensorFlow (not default modes)
  recompute    every activation, via `convert(..., replace_with=...)`, Keras' own inside
               `torch.utils.checkpoint.checkpoint(fn, x, use_reentrant=False)` /
               `jax.checkpoint(fn)`
  floor        every activation the identity
"""

import gc
import statistics
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from .models import STORAGE_MODES

BACKENDS = ("torch", "jax")
MODES = (("keras", "recompute", "nestad", "nestad-auto", "nestad-tf", "nestad-fused", "floor")
         + STORAGE_MODES)
DEFAULT_MODES = ("keras", "recompute", "nestad", "nestad-auto", "nestad-tf", "floor")
ISSUE_MODELS = ("bert_like", "efficientnet_b0_mish")

# (batch, size) of the issue-14 runs: small enough for 2 CPU cores
DEFAULTS = {"bert_like": (8, 128), "efficientnet_b0_mish": (8, 96)}
DEFAULT_BERT_LAYERS = 2

# what each backend measures: (metric name in the ratios, key in the run, description)
METRICS = {
    "torch": (("saved", "saved_bytes", "autograd-saved MiB (weights out)"),),
    "jax": (("temp", "temp_bytes", "XLA temp MiB"),
            ("residual", "residual_bytes", "VJP residual MiB (weights out)"),
            ("total", "total_bytes", "XLA total MiB")),
}
PRIMARY = {"torch": "saved", "jax": "temp"}
STEP_DESCRIPTION = {
    "torch": "eager model.train_on_batch (Keras' TorchTrainer step, as fit runs it)",
    "jax": "jax.jit(model.train_step, donate_argnums=0) (Keras' JAXTrainer step, as fit "
           "compiles it)",
}


def _progress(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def defaults(name: str, spec) -> tuple:
    """(batch, size) of `name` on torch/JAX: the issue-14 sizes, else the TF bench's."""
    return DEFAULTS.get(name, (spec.batch, spec.size))


def model_activations(model) -> List[str]:
    """The registered names of every Keras activation in `model` (what nestad/recompute cover)."""
    import nestad_tf  # pylint: disable=g-import-not-at-top

    return sorted({entry.activation for entry in nestad_tf.memory_report(model)})


class _TorchRecompute:
    def __init__(self, function):
        self.function = function

    def __call__(self, x):
        import torch  # pylint: disable=g-import-not-at-top
        import torch.utils.checkpoint  # pylint: disable=g-import-not-at-top

        # Keras' symbolic passes and inference need no gradient: no checkpoint (and no warning)
        if isinstance(x, torch.Tensor) and torch.is_grad_enabled() and x.requires_grad:
            return torch.utils.checkpoint.checkpoint(self.function, x, use_reentrant=False)
        return self.function(x)


def recompute_wrapper(function, backend: str):
    """`function` recomputed in the backward pass by `backend`'s own checkpointing."""
    if backend == "torch":
        return _TorchRecompute(function)
    if backend == "jax":
        import jax  # pylint: disable=g-import-not-at-top

        return jax.checkpoint(function)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    return tf.recompute_grad(function)


def apply_mode(model, mode: str):
    """The model as run in `mode` on the torch/JAX backend (see the module docstring)."""
    import nestad_tf  # pylint: disable=g-import-not-at-top

    from . import models  # pylint: disable=g-import-not-at-top

    if mode == "keras":
        return model
    present = model_activations(model)
    if mode == "nestad":
        return nestad_tf.convert(model, include=present, backend="kernel",
                                 fuse_normalization=False)
    if mode == "nestad-auto":
        return nestad_tf.convert(model, backend="kernel", fuse_normalization=False)
    if mode == "nestad-fused":
        return nestad_tf.convert(model, backend="kernel")
    if mode in STORAGE_MODES:
        return nestad_tf.convert(model, include=present, backend="kernel",
                                 derivative=mode[len("nestad-"):], fuse_normalization=False)
    if mode == "nestad-tf":
        return nestad_tf.convert(model, include=present, backend="tf", fuse_normalization=False)
    if mode == "recompute":
        return nestad_tf.convert(model, include=present, replace_with=models.RecomputedActivation)
    if mode == "floor":
        return nestad_tf.convert(model, include=present,
                                 replace_with=lambda _name, _params: models.IdentityActivation())
    raise ValueError(f"unknown mode {mode!r} on torch/JAX; modes: {', '.join(MODES)}")


def _loss(keras):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def run(spec: Dict) -> Dict:
    """Every mode of spec["modes"] for one model on the active Keras backend (torch or jax).

    All modes live in this one process (none of the figures is a process peak: bytes
    saved per step, XLA's static buffer sizes), so that their timed steps can be
    interleaved: round r runs one step of every mode, in an order rotated by r, and
    a change of the machine's load falls on every mode alike. Returns {"status": "ok",
    "runs": [one result per mode, failed ones with status "failed"]}.
    """
    import keras  # pylint: disable=g-import-not-at-top

    backend = keras.backend.backend()
    if backend != spec["backend"]:
        raise RuntimeError(f"the worker runs Keras on {backend!r}, the spec asks for "
                           f"{spec['backend']!r} (KERAS_BACKEND is read at the first import)")
    if backend == "torch" and spec.get("intra_threads"):
        import torch  # pylint: disable=g-import-not-at-top

        torch.set_num_threads(spec["intra_threads"])
    import nestad_tf  # pylint: disable=g-import-not-at-top

    from . import models, worker  # pylint: disable=g-import-not-at-top

    keras.utils.set_random_seed(spec.get("seed", 0))
    started = time.perf_counter()
    _progress(f"building {spec['model']} ({spec['size']}) on {backend}")
    base, make_batch = models.build(spec["model"], spec["size"], spec.get("options", {}))
    keras_report = nestad_tf.memory_report(base)
    base_seconds = time.perf_counter() - started
    x, y = make_batch(spec["batch"])
    x, y = np.asarray(x), np.asarray(y)
    runner_class = _TorchRunner if backend == "torch" else _JaxRunner

    runners, results = {}, {}
    for mode in spec["modes"]:  # every rewrite before any training changes base's weights
        started = time.perf_counter()
        try:
            model = apply_mode(base, mode)
            report = nestad_tf.memory_report(model)
            optimizer = worker._optimizer(keras, spec.get("optimizer", "adam"))  # pylint: disable=protected-access
            model.compile(optimizer=optimizer, loss=_loss(keras), jit_compile=backend == "jax")
        except Exception as error:  # pylint: disable=broad-except
            results[mode] = _failure(mode, error)
            continue
        runners[mode] = runner_class(model, x, y)
        results[mode] = {
            "backend": backend, "model": spec["model"], "mode": mode, "xla": backend == "jax",
            "status": "ok", "batch": spec["batch"], "slope_batch": None, "size": spec["size"],
            "parameters": int(sum(int(np.prod(v.shape)) for v in model.trainable_variables)),
            "build_seconds": base_seconds + time.perf_counter() - started,
            "activations": worker._summary(report),  # pylint: disable=protected-access
            "keras_activations": worker._summary(keras_report),  # pylint: disable=protected-access
            "step": STEP_DESCRIPTION[backend], "step_seconds": [], "losses": [],
        }

    for mode, runner in list(runners.items()):
        _progress(f"{mode}: first step{' (lowering and compiling)' if backend == 'jax' else ''}, "
                  "memory figures, warm-up")
        try:
            results[mode].update(runner.prepare(spec["warmup"]))
        except Exception as error:  # pylint: disable=broad-except
            results[mode] = _failure(mode, error)
            del runners[mode]
    order = list(runners)
    for round_index in range(spec["steps"]):
        _progress(f"timed round {round_index + 1}/{spec['steps']} ({len(order)} modes interleaved)")
        shift = round_index % max(len(order), 1)
        for mode in order[shift:] + order[:shift]:
            try:
                seconds, loss = runners[mode].timed_step()
            except Exception as error:  # pylint: disable=broad-except
                results[mode] = _failure(mode, error)
                order.remove(mode)
                continue
            results[mode]["step_seconds"].append(seconds)
            results[mode]["losses"].append(loss)
    versions = worker.versions()
    for mode in order:
        results[mode]["threads"] = runners[mode].threads()
        results[mode]["versions"] = versions
        results[mode]["losses"] = runners[mode].losses + results[mode]["losses"]
    return {"status": "ok", "runs": [results[mode] for mode in spec["modes"]]}


def _failure(mode, error) -> Dict:
    import traceback  # pylint: disable=g-import-not-at-top

    lines = traceback.format_exception(type(error), error, error.__traceback__)
    _progress(f"{mode} FAILED: {type(error).__name__}: {error}")
    return {"mode": mode, "status": "failed", "reason": f"{type(error).__name__}: {error}"[:500],
            "stderr_tail": "".join(lines).splitlines()[-30:]}


# --- torch ------------------------------------------------------------------------


def _storage_key(tensor):
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def saved_storages(step, exclude_pointers=()):
    """Runs step() under saved_tensors_hooks; (its result, the saved-bytes figures).

    Every tensor autograd saves is counted once per storage (its base memory):
    saved_bytes and saved_tensors; those whose storage starts at one of
    `exclude_pointers` (the variables) go to saved_weight_bytes instead;
    saved_calls counts every save. Saved tensors live until the backward pass
    that reads them, so no two storages saved in one forward pass share an address.
    """
    import torch  # pylint: disable=g-import-not-at-top

    excluded = set(exclude_pointers)
    seen: Dict[int, int] = {}
    weights: Dict[int, int] = {}
    calls = [0]

    def pack(tensor):
        calls[0] += 1
        pointer, nbytes = _storage_key(tensor)
        if nbytes:
            (weights if pointer in excluded else seen)[pointer] = nbytes
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = step()
    return out, {"saved_bytes": int(sum(seen.values())), "saved_tensors": len(seen),
                 "saved_weight_bytes": int(sum(weights.values())), "saved_calls": calls[0]}


class _Runner:
    """What both runners share: a timed training step (`_step` returns the loss)."""

    def _step(self) -> float:
        raise NotImplementedError

    def timed_step(self):
        started = time.perf_counter()
        loss = self._step()
        return time.perf_counter() - started, loss


class _TorchRunner(_Runner):
    """`model.train_on_batch` on torch tensors (eager, Keras' TorchTrainer step)."""

    def __init__(self, model, x_np, y_np):
        import keras  # pylint: disable=g-import-not-at-top

        self.model = model
        self.x = keras.ops.convert_to_tensor(x_np)
        self.y = keras.ops.convert_to_tensor(y_np)
        self.losses: List[float] = []

    def _step(self):
        return float(self.model.train_on_batch(self.x, self.y))

    def prepare(self, warmup: int) -> Dict:
        started = time.perf_counter()
        self.losses.append(self._step())
        first = time.perf_counter() - started
        pointers = [_storage_key(v.value)[0] for v in self.model.variables]
        gc.collect()
        loss, saved = saved_storages(self._step, pointers)
        self.losses.append(loss)
        for _ in range(max(warmup - 1, 0)):
            self.losses.append(self._step())
        saved["first_step_seconds"] = first
        return saved

    def threads(self):
        import torch  # pylint: disable=g-import-not-at-top

        return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}


# --- JAX --------------------------------------------------------------------------


def _nbytes(aval) -> int:
    return int(np.prod(aval.shape, dtype=np.int64)) * np.dtype(aval.dtype).itemsize


def residual_bytes(model, state, data) -> Optional[Dict]:
    """Bytes of the residuals of the loss's VJP w.r.t. the trainable variables.

    jax's `saved_residuals` (the function behind `jax.ad_checkpoint.print_saved_residuals`)
    lists each residual once with where it comes from; the trainable variables
    ("from the argument") and literals are left out. None if this jax has no such function.
    """
    try:
        from jax._src.ad_checkpoint import saved_residuals  # pylint: disable=g-import-not-at-top
    except ImportError:
        return None
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    x, y, sample_weight = data

    def loss(variables):
        return model.compute_loss_and_updates(
            variables, non_trainable, metrics_variables, x, y, sample_weight, training=True,
            optimizer_variables=optimizer_variables)[0]

    kept = weights = count = 0
    for aval, source in saved_residuals(loss, trainable):
        if source.startswith("from the argument"):
            weights += _nbytes(aval)
        elif not source.startswith("from a literal"):
            kept += _nbytes(aval)
            count += 1
    return {"residual_bytes": int(kept), "residual_tensors": count,
            "residual_weight_bytes": int(weights)}


class _JaxRunner(_Runner):
    """Keras' JAXTrainer.train_step in jax.jit(donate_argnums=0), the state carried along
    as `fit` carries it (and written back to the variables at no point: only the
    figures matter here)."""

    def __init__(self, model, x_np, y_np):
        import jax  # pylint: disable=g-import-not-at-top

        self.model = model
        self.data = (jax.numpy.asarray(x_np), jax.numpy.asarray(y_np), None)
        self.losses: List[float] = []
        self.compiled = self.state = None

    def _step(self):
        import jax  # pylint: disable=g-import-not-at-top

        logs, self.state = self.compiled(self.state, self.data)
        return float(jax.block_until_ready(logs["loss"]))

    def prepare(self, warmup: int) -> Dict:
        import jax  # pylint: disable=g-import-not-at-top

        model = self.model
        build = getattr(model, "_symbolic_build", None)  # what train_on_batch calls first
        if build is not None:
            build(data_batch=self.data)
        else:  # builds the loss, metrics and optimizer (and compiles Keras' own step once)
            model.train_on_batch(self.data[0], self.data[1])
        model.optimizer.build(model.trainable_variables)
        self.state = tuple([v.value for v in variables] for variables in (
            model.trainable_variables, model.non_trainable_variables, model.optimizer.variables,
            model.metrics_variables))
        result = residual_bytes(model, self.state, self.data) or {}
        started = time.perf_counter()
        self.compiled = jax.jit(model.train_step, donate_argnums=0).lower(
            self.state, self.data).compile()
        result["compile_seconds"] = time.perf_counter() - started
        analysis = self.compiled.memory_analysis()
        memory = {}
        for field in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
                      "alias_size_in_bytes", "generated_code_size_in_bytes"):
            value = getattr(analysis, field, None)
            if value is not None:
                memory[field] = int(value)
        result["memory_analysis"] = memory
        result["temp_bytes"] = memory["temp_size_in_bytes"]
        result["total_bytes"] = (memory["argument_size_in_bytes"] + memory["output_size_in_bytes"]
                                 - memory["alias_size_in_bytes"] + memory["temp_size_in_bytes"])
        started = time.perf_counter()
        self.losses.append(self._step())
        result["first_step_seconds"] = time.perf_counter() - started
        for _ in range(max(warmup - 1, 0)):
            self.losses.append(self._step())
        return result

    def threads(self):
        import jax  # pylint: disable=g-import-not-at-top

        return {"jax_devices": [str(d) for d in jax.devices()]}


# --- derived figures (parent side) --------------------------------------------------


def figures(run: Dict, backend: str) -> Dict[str, float]:
    """metric -> value of one ok run: the backend's memory metrics, "act", "time" (the median
    step) and "time-min" (the fastest step: on a loaded machine the least disturbed one)."""
    out = {"time": statistics.median(run["step_seconds"]), "time-min": min(run["step_seconds"])}
    for metric, key, _ in METRICS[backend]:
        if run.get(key) is not None:
            out[metric] = run[key]
    if run.get("activation_bytes") is not None:
        out["act"] = run["activation_bytes"]
    return out
