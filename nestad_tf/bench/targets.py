"""The targets of issues 7, 13 and 14, and how each is read off a benchmark run.

Each target is a ratio computed from figures measured side by side in the same
run (graph mode, XLA off, unless said otherwise; issue 14's on Keras' torch and
JAX backends, `backend=`). `evaluate` returns one record per target whose
figures are present: value, threshold, met.
"""

import dataclasses
from typing import Dict, List, Optional

EVERY_MODEL = "*"


@dataclasses.dataclass(frozen=True)
class Target:
    """`ratio(metric) >= threshold` (or <= for step-time ratios), for `model`.

    strict: > / < instead of >= / <=. backend: the Keras backend of the runs it reads.
    """

    model: str  # a model name, or EVERY_MODEL
    metric: str  # a key of the comparison table, e.g. "peak keras/nestad"
    threshold: float
    at_least: bool = True
    strict: bool = False
    backend: str = "tensorflow"

    def describe(self) -> str:
        sign = (">" if self.at_least else "<") + ("" if self.strict else "=")
        return f"{self.metric} {sign} {self.threshold:g}"

    def met(self, value: float) -> bool:
        if self.at_least:
            return value > self.threshold if self.strict else value >= self.threshold
        return value < self.threshold if self.strict else value <= self.threshold


TARGETS: List[Target] = [
    Target("efficientnet_b0_mish", "peak keras/nestad", 1.5),
    Target("bert_like", "peak keras/nestad", 1.25),
    Target("convnext_tiny", "peak keras/nestad", 1.15),
    Target("efficientnet_b0_mish", "activation keras/nestad", 2.5),
    Target("bert_like", "activation keras/nestad", 2.0),
    Target(EVERY_MODEL, "peak nestad/keras", 1.0, at_least=False),
    Target(EVERY_MODEL, "peak nestad/recompute", 1.0, at_least=False),
    Target(EVERY_MODEL, "time nestad/keras", 1.0, at_least=False),
    Target("efficientnet_b0_mish", "time nestad/keras", 0.9, at_least=False),
    Target("convnext_tiny", "time nestad/keras", 0.9, at_least=False),
    Target("efficientnet_b0_mish", "time recompute/nestad", 1.2),
    Target("convnext_tiny", "time recompute/nestad", 1.2),
    # issue 13: BatchNormalization + activation fused (the nestad-fused mode)
    Target("efficientnet_b0", "peak keras/nestad-fused", 1.3),
    Target("efficientnet_b0_mish", "peak keras/nestad-fused", 1.9),
    Target("efficientnet_b0", "time nestad-fused/keras", 1.0, at_least=False),
    Target("efficientnet_b0_mish", "time nestad-fused/keras", 1.0, at_least=False),
    Target("efficientnet_b0", "peak nestad-fused/floor", 1.05, at_least=False),
    Target("efficientnet_b0_mish", "peak nestad-fused/floor", 1.05, at_least=False),
    # issue 14, on Keras' torch and JAX backends (`model --backend torch|jax`): nestad
    # (every activation converted) keeps less than Keras and than recompute's inputs, and
    # steps no slower than Keras. torch: bytes autograd saves; JAX: XLA's temp buffer and
    # the VJP's residuals (see frameworks.py).
    Target(EVERY_MODEL, "saved nestad/keras", 1.0, at_least=False, strict=True, backend="torch"),
    Target(EVERY_MODEL, "saved nestad/recompute", 1.0, at_least=False, strict=True,
           backend="torch"),
    Target(EVERY_MODEL, "time nestad/keras", 1.0, at_least=False, backend="torch"),
    Target(EVERY_MODEL, "temp nestad/keras", 1.0, at_least=False, strict=True, backend="jax"),
    Target(EVERY_MODEL, "temp nestad/recompute", 1.0, at_least=False, strict=True, backend="jax"),
    Target(EVERY_MODEL, "residual nestad/keras", 1.0, at_least=False, strict=True, backend="jax"),
    Target(EVERY_MODEL, "residual nestad/recompute", 1.0, at_least=False, strict=True,
           backend="jax"),
    Target(EVERY_MODEL, "time nestad/keras", 1.0, at_least=False, backend="jax"),
]

KERNEL_TARGET = 0.9  # fused forward and backward >= 90% of the copy bandwidth
KERNEL_TARGET_ACTIVATIONS = ("silu", "gelu", "mish")


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    """numerator / denominator, or None when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


PAIRS = (("keras", "nestad"), ("nestad", "keras"), ("nestad", "recompute"),
         ("keras", "recompute"), ("keras", "nestad-tf"), ("nestad-tf", "keras"),
         ("keras", "floor"), ("recompute", "nestad"), ("keras", "nestad-all"),
         ("nestad-all", "keras"), ("keras", "nestad-fused"), ("nestad-fused", "keras"),
         ("nestad-fused", "floor"), ("nestad-fused", "recompute"), ("nestad", "nestad-fused"))


def comparisons(figures: Dict[str, Dict[str, float]], pairs=PAIRS,
                metrics=("peak", "activation", "time")) -> Dict[str, float]:
    """Ratios between the modes of one model (one XLA setting).

    Args:
      figures: mode -> {"peak", "activation", "time"} (bytes, bytes, seconds), or the
        `metrics` given.
      pairs: the (numerator mode, denominator mode) pairs.
      metrics: the figures to take ratios of.

    Returns:
      "peak keras/nestad", "activation keras/nestad", "peak nestad/keras", ... for
      every pair of modes present (None-valued ones left out).
    """
    out = {}
    for metric in metrics:
        for a, b in pairs:
            if a in figures and b in figures:
                value = ratio(figures[a].get(metric), figures[b].get(metric))
                if value is not None:
                    out[f"{metric} {a}/{b}"] = value
    return out


def evaluate(model_comparisons: Dict[str, Dict[str, float]],
             backend: str = "tensorflow") -> List[dict]:
    """Every target whose ratio was measured: {model, target, value, threshold, met}.

    Args:
      model_comparisons: model -> `comparisons(...)` for XLA off (TensorFlow), or of the
        torch/JAX runs.
      backend: the Keras backend the figures come from; only its targets are read.
    """
    records = []
    for target in TARGETS:
        if target.backend != backend:
            continue
        models = [target.model] if target.model != EVERY_MODEL else sorted(model_comparisons)
        for model in models:
            value = model_comparisons.get(model, {}).get(target.metric)
            if value is None:
                continue
            records.append({"model": model, "target": target.describe(), "metric": target.metric,
                            "value": value, "threshold": target.threshold,
                            "met": bool(target.met(value))})
            if target.backend != "tensorflow":
                records[-1]["backend"] = target.backend
    return records


def evaluate_kernels(results: List[dict]) -> List[dict]:
    """Kernel target: nestad forward and backward GB/s >= 90% of the copy GB/s (float32)."""
    records = []
    for result in results:
        if result["activation"] not in KERNEL_TARGET_ACTIVATIONS or result["dtype"] != "float32":
            continue
        for direction in ("forward", "backward"):
            value = result[direction]["nestad"]["fraction_of_copy"]
            records.append({"activation": result["activation"], "direction": direction,
                            "target": f"nestad GB/s / copy GB/s >= {KERNEL_TARGET:g}",
                            "value": value, "threshold": KERNEL_TARGET,
                            "met": bool(value >= KERNEL_TARGET)})
    return records
