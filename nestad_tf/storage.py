"""How f'(x) is kept between the forward and the backward pass (`derivative=`).

    nestad_tf.activation(x, "gelu", derivative="bits4")
    nestad_tf.layers.Activation("mish", derivative="uint8")

Modes:
  "exact" (default): the cheapest exact form for the activation —
      * nothing beyond y, when f' is a function of y (sigmoid, tanh, elu, selu,
        celu, softplus, log_sigmoid, exponential, relu6, hard_tanh,
        hard_sigmoid, sparse_plus, sparse_sigmoid, softsign, squareplus,
        soft/hard_shrink, leaky_relu with a positive slope, plain relu);
        the next layer keeps y anyway. In float16/bfloat16 the clipped ones
        (relu6, hard_tanh, hard_sigmoid, sparse_sigmoid, relu with max_value)
        keep a 1-bit code instead: y rounded onto the bound would pick the
        wrong piece;
      * a 1- or 2-bit code when f' takes a few values (relu with a negative
        slope / threshold / max_value, threshold, leaky_relu with slope <= 0);
      * f'(x) in the compute dtype otherwise (silu, gelu, mish, hard_silu,
        tanh_shrink).
  "full": f'(x) in the tensor's dtype for every activation (needed for
      second-order gradients).
  "bfloat16": f' rounded to bfloat16 (2 bytes per element).
  "uint8": f' quantized with 254 uniform steps over the activation's known
      range of f' (no per-tensor scale, no reduction pass); max error
      (hi - lo) / 508, e.g. 0.0024 for gelu.
  "bits4" ... "bits1": a piecewise-constant approximation of f' with 2^K
      levels over x, optimal for the expected squared error under a standard
      normal input (the FewBit idea); tables from tools/fewbit_tables.py.

Lossy modes apply to the activations whose exact form keeps f'; for the others
the exact form is already cheaper and is used. Only the fused kernels compress
(graph mode, and XLA through their custom calls, with the same codes): the
pure-TF path (backend="tf", forward_ad activations, tensor parameters) keeps f'
in the compute dtype. Values of
y never change; only the gradient is approximated.
"""

import dataclasses
import functools
import json
import os
from typing import Any, Dict, Optional, Tuple

import tensorflow as tf

from . import registry

DERIVATIVE_MODES = ("exact", "full", "bfloat16", "uint8", "bits4", "bits3", "bits2", "bits1")
_TABLES_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fewbit_tables.json")


@dataclasses.dataclass(frozen=True)
class StoragePlan:
    """What the backward pass of one activation call keeps besides y.

    form: "output" (nothing beyond y), "full" (f' in the dtype of x) or
    "quantized" (packed codes, `bits` per element, kernels/storage.h `format`).
    """

    form: str
    format: str = ""
    bits: int = 0
    breakpoints: Tuple[float, ...] = ()
    levels: Tuple[float, ...] = ()
    range: Tuple[float, ...] = ()

    def bytes_per_element(self, dtype) -> float:
        """Bytes kept per element of x, not counting y."""
        if self.form == "output":
            return 0.0
        if self.form == "full":
            return float(tf.as_dtype(dtype).size)
        return self.bits / 8.0

    def op_attrs(self) -> Dict[str, Any]:
        return dict(format=self.format, bits=self.bits, breakpoints=list(self.breakpoints),
                    levels=list(self.levels), range=list(self.range))

    def second_order(self, kernel_name: str) -> Optional[str]:
        """What a higher-order gradient through a kernel call keeping this form gets.

        "exact": f'(x) itself is kept, f'' comes from the reference (TF: in a
        tf.function; JAX: by forward-mode AD). "zero": what is kept is piecewise
        constant in x (y of a piecewise-linear activation, exact few-bit levels), so
        f'' = 0 wherever it is defined. None: f'' cannot be formed from what is kept;
        the gradient raises SecondOrderGradientError (`second_order_refusal`).
        """
        if self.form == "full":
            return "exact"
        if self.form == "output":
            return "zero" if kernel_name in registry.PIECEWISE_LINEAR_KERNELS else None
        return "zero" if self.format == "levels" else None


FULL = StoragePlan("full")


def second_order_refusal(through: str, kept: str, where: str = "") -> str:
    """The SecondOrderGradientError message where f'(x) itself was not kept (TF and JAX)."""
    return (f"a second-order gradient through {through} needs f''(x), but {kept}; pass "
            f"derivative='full' to keep f'(x) itself (second-order gradients are then exact"
            f"{where}), or use the Keras activation")


STORED = "its derivative was stored compressed or recovered from its output"
OUTPUT = StoragePlan("output")


def check_mode(derivative: str) -> str:
    if derivative not in DERIVATIVE_MODES:
        raise ValueError(f"derivative must be one of {DERIVATIVE_MODES}, got {derivative!r}")
    return derivative


@functools.lru_cache(maxsize=None)
def _tables() -> Dict[str, Any]:
    if not os.path.exists(_TABLES_PATH):
        return {"tables": [], "ranges": []}
    with open(_TABLES_PATH) as f:
        return json.load(f)


def quantization_table(kernel_name: str, bits: int) -> Optional[Dict[str, Any]]:
    """The FewBit table (breakpoints, levels, errors) of a kernel activation, or None."""
    for table in _tables()["tables"]:
        if table["activation"] == kernel_name and table["bits"] == bits:
            return table
    return None


def derivative_range(kernel_name: str) -> Optional[Tuple[float, float]]:
    """[min, max] of f' over the real line, for the uint8 mode, or None."""
    for entry in _tables()["ranges"]:
        if entry["activation"] == kernel_name:
            return float(entry["lo"]), float(entry["hi"])
    return None


def _exact(spec: registry.ActivationSpec, params: Dict[str, Any], dtype) -> StoragePlan:
    form = spec.storage(**params)
    if form in ("output", "full"):
        return OUTPUT if form == "output" else FULL
    kind, values = form
    if kind == "output" and tf.as_dtype(dtype).size > 2:
        return OUTPUT
    values = tuple(dict.fromkeys(float(v) for v in values))  # unique, in order
    bits = 1 if len(values) <= 1 else 2  # one code is kept for NaN
    return StoragePlan("quantized", "levels", bits, levels=values)


def plan(spec: registry.ActivationSpec, params: Dict[str, Any], derivative: str,
         dtype) -> StoragePlan:
    """The storage a kernel call of `spec` uses for `derivative` and input `dtype`."""
    check_mode(derivative)
    if derivative == "full":
        return FULL
    exact = _exact(spec, params, dtype)
    if derivative == "exact" or exact.form != "full":
        return exact
    kernel_name, _ = spec.kernel_attrs(params)
    if derivative == "bfloat16":
        if tf.as_dtype(dtype).size <= 2:
            return FULL  # already 2 bytes: rounding to bfloat16 would only lose precision
        return StoragePlan("quantized", "bfloat16", 16)
    if derivative == "uint8":
        bounds = derivative_range(kernel_name)
        if bounds is None:
            raise ValueError(f"no f' range for '{kernel_name}' in {_TABLES_PATH}; "
                             "run tools/fewbit_tables.py")
        return StoragePlan("quantized", "uniform8", 8, range=bounds)
    bits = int(derivative[len("bits"):])
    table = quantization_table(kernel_name, bits)
    if table is None:
        raise ValueError(f"no {derivative} table for '{kernel_name}' in {_TABLES_PATH}; "
                         "run tools/fewbit_tables.py")
    return StoragePlan("quantized", "buckets", bits,
                       breakpoints=tuple(table["breakpoints"]), levels=tuple(table["levels"]))
