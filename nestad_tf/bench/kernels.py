"""Throughput of the fused kernels against TF ops, XLA and the copy bandwidth.

For each activation, on one float tensor of `elements` elements:

  forward   x -> (y, f'(x)): reads 1 tensor, writes 2
      nestad      the fused op FusedActivation
      tf          forward-mode AD of Keras' definition (nestad's pure-TF path), tf.function
      xla         the same function with jit_compile=True (XLA's own fusion of it)
      xla_call    the fused op under jit_compile=True: nestad's XLA custom call
  backward  (dy, f'(x)) -> dx = dy * f'(x): reads 2 tensors, writes 1
      nestad      the fused op FusedActivationGrad
      tf          dy * d in a tf.function
      xla         the same with jit_compile=True
      xla_call    the fused op under jit_compile=True: nestad's XLA custom call

and, measured in the same run, the machine's streaming bandwidth through TF:

  copy        y = x * s (s a scalar argument, so Grappler cannot fold it): read 1, write 1
  copy_2to1   x * z: read 2, write 1 (the backward's access pattern, one op)
  copy_1to2   (x * s, x * t): two ops, so x is read twice; counted as 1 read + 2 writes,
              it is NOT an upper bound for the forward (TF has no op that reads one
              tensor and writes two), only a reference
  numpy_copy  numpy.copyto into a preallocated array (1 thread, outside TF)

GB/s counts the bytes actually read and written (e.g. forward float32: 12 bytes
per element) over the median time of `repeats` calls after `warmup` calls.
Every call is a `tf.function` returning its tensors (outputs are allocated by
TF, as in training); the clock stops after reading back one element of the
result, so no host/numpy conversion of the tensor is timed.
"""

import statistics
import time
from typing import Callable, Dict, List, Sequence


def _timed(function: Callable, args: Sequence, warmup: int, repeats: int) -> List[float]:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    def call():
        outputs = function(*args)
        first = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        tf.reshape(first, [-1])[:1].numpy()  # one element: the call has finished
        return outputs

    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        outputs = call()
        seconds.append(time.perf_counter() - started)
        del outputs
    return seconds


def _figure(seconds: List[float], nbytes: int) -> Dict[str, float]:
    median = statistics.median(seconds)
    return {"seconds": seconds, "median_seconds": median, "min_seconds": min(seconds),
            "max_seconds": max(seconds), "bytes": nbytes, "gb_per_s": nbytes / median / 1e9,
            "best_gb_per_s": nbytes / min(seconds) / 1e9}


def copy_bandwidth(elements: int, dtype: str, warmup: int, repeats: int) -> Dict[str, dict]:
    """The streaming baselines (see the module docstring), each a `_figure` dict."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    x = tf.random.normal([elements], dtype=dtype, seed=3)
    z = tf.random.normal([elements], dtype=dtype, seed=4)
    s = tf.constant(1.0, dtype)
    t = tf.constant(2.0, dtype)
    size = tf.as_dtype(dtype).size
    scale = tf.function(lambda x, s: x * s)
    scale_twice = tf.function(lambda x, s, t: (x * s, x * t))
    multiply = tf.function(lambda x, z: x * z)
    figures = {
        "copy": _figure(_timed(scale, (x, s), warmup, repeats), 2 * size * elements),
        "copy_1to2": _figure(_timed(scale_twice, (x, s, t), warmup, repeats), 3 * size * elements),
        "copy_2to1": _figure(_timed(multiply, (x, z), warmup, repeats), 3 * size * elements),
    }
    source = x.numpy()
    target = np.empty_like(source)

    def numpy_copy():
        np.copyto(target, source)
        return tf.constant(target[:1])

    figures["numpy_copy"] = _figure(_timed(numpy_copy, (), warmup, repeats), 2 * size * elements)
    return figures


def activation_throughput(activation: str, elements: int, dtype: str, warmup: int, repeats: int,
                          copy: Dict[str, dict], xla: bool = True) -> dict:
    """Forward and backward figures of nestad, TF graph and XLA for one activation."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from .. import _loader, ops, registry  # pylint: disable=g-import-not-at-top

    spec = registry.get(activation)
    params = spec.bind({})
    kernel_name, kernel_params = spec.kernel_attrs(params)
    library = _loader.load().module
    if library is None:
        raise RuntimeError(f"nestad kernels unavailable: {_loader.load().reason}")
    size = tf.as_dtype(dtype).size
    nbytes = 3 * size * elements  # forward: 1 read, 2 writes; backward: 2 reads, 1 write

    x = tf.random.normal([elements], dtype=dtype, seed=5) * 3.0
    dy = tf.random.normal([elements], dtype=dtype, seed=6)

    def reference(t):
        return spec.reference(t, **params)

    forward = {
        "nestad": tf.function(lambda x: library.fused_activation(
            x, activation=kernel_name, params=kernel_params)),
        "tf": tf.function(lambda x: ops.forward_ad(reference, x)),
    }
    backward = {
        "nestad": tf.function(library.fused_activation_grad),
        "tf": tf.function(lambda dy, d: dy * d),
    }
    if xla:
        forward["xla"] = tf.function(lambda x: ops.forward_ad(reference, x), jit_compile=True)
        backward["xla"] = tf.function(lambda dy, d: dy * d, jit_compile=True)
        if _loader.load().xla:
            forward["xla_call"] = tf.function(lambda x: library.fused_activation(
                x, activation=kernel_name, params=kernel_params), jit_compile=True)
            backward["xla_call"] = tf.function(library.fused_activation_grad, jit_compile=True)

    _, d = forward["nestad"](x)
    result = {"activation": activation, "dtype": dtype, "elements": elements,
              "forward": {}, "backward": {}}
    for name, function in forward.items():
        figure = _figure(_timed(function, (x,), warmup, repeats), nbytes)
        result["forward"][name] = figure
    for name, function in backward.items():
        figure = _figure(_timed(function, (dy, d), warmup, repeats), nbytes)
        result["backward"][name] = figure
    for direction in ("forward", "backward"):
        for figure in result[direction].values():
            figure["fraction_of_copy"] = figure["gb_per_s"] / copy["copy"]["gb_per_s"]
            figure["fraction_of_copy_2to1"] = figure["gb_per_s"] / copy["copy_2to1"]["gb_per_s"]
    return result
