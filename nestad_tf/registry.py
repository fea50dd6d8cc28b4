"""The one table of activations nestad_tf knows.

Each entry (an `ActivationSpec`) names an activation, its parameters with the
Keras defaults, its pure-TensorFlow reference (the function whose value and
derivative nestad must reproduce), and how its parameters map onto the C++
kernel (`kernels/activations.def`). Layers, the converter, the tests and the
benchmarks all read this table; nothing else lists activations.
"""

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

REQUIRED = object()
"""Marks a parameter without a default (Keras' `threshold` activation has two)."""

NOT_ELEMENTWISE = {
    "softmax": "it normalises over an axis, so every output depends on every input of that axis",
    "log_softmax": "it normalises over an axis, so every output depends on every input of that axis",
    "sparsemax": "it projects onto the simplex along an axis, mixing the elements of that axis",
    "glu": "it splits its input in two halves along an axis and multiplies them",
}


@dataclasses.dataclass(frozen=True)
class ActivationSpec:
    """One activation: f, its parameters and where its fused kernel lives.

    Attributes:
      name: canonical name (the Keras name where Keras has the activation).
      formula: y = f(x) in words, for docstrings.
      reference: `reference(x, **params)`, pure TF, differentiable; the
        derivative nestad keeps is checked against TF autodiff of it.
      params: parameter names with their defaults (or `REQUIRED`), in order.
      kernel: `kernel(**params) -> (kernel_name, [float, ...])`, the attributes
        of the fused C++ op; `None` for activations that only have the
        forward-mode AD path (user-defined ones).
      aliases: other names that resolve to this entry.
      breakpoints: `breakpoints(**params)` -> x where f' jumps (f' there is
        one of the one-sided derivatives; the tests allow either).
      storage: `storage(**params)` -> the cheapest exact form of f' for the
        backward pass: "output" (f' is a function of y: the kernel recomputes
        it from y), ("levels", values) (f' takes only these values: a 1-2 bit
        code), or "full" (f' in the compute dtype). ("output", values): from y
        in float32/float64, but a levels code in half types, where rounding y
        onto a clipping bound (1 for hard_sigmoid, 6 for relu6) would pick the
        wrong piece. See nestad_tf/storage.py.
      apply: `apply(x, params, backend) -> y`, replacing the generic path of
        `ops.apply_spec`; set by `nestad_tf.register_activation` (forward-mode
        AD with the element-wise check and differentiable tensor parameters).
      tensor_reference: the same function as `reference`, written for tensor
        parameters (a tf.Variable, one value per channel); None where
        `reference` already takes them. Keras' elu, leaky_relu and relu branch
        on their parameters in Python, so they need one. Used when parameters
        are tensors (`ParametricActivation`, `activation(x, "elu", alpha=v)`).
    """

    name: str
    formula: str
    reference: Callable[..., Any]
    params: Tuple[Tuple[str, Any], ...] = ()
    kernel: Optional[Callable[..., Tuple[str, List[float]]]] = None
    aliases: Tuple[str, ...] = ()
    breakpoints: Callable[..., Tuple[float, ...]] = lambda **_: ()
    storage: Callable[..., Any] = lambda **_: "full"
    apply: Optional[Callable[..., Any]] = None
    tensor_reference: Optional[Callable[..., Any]] = None

    @property
    def param_names(self) -> Tuple[str, ...]:
        return tuple(p for p, _ in self.params)

    @property
    def switch_params(self) -> Tuple[str, ...]:
        """Parameters that choose a formula (bool defaults, e.g. gelu's `approximate`):
        never tensors, never trainable."""
        return tuple(p for p, default in self.params if isinstance(default, bool))

    def bind(self, given: Dict[str, Any]) -> Dict[str, Any]:
        """Returns all parameters with defaults filled in; TypeError on unknown or missing ones."""
        bound = self.bind_partial(given)
        for param, value in bound.items():
            if value is REQUIRED:
                raise TypeError(f"activation '{self.name}' needs the parameter '{param}'")
        return bound

    def bind_partial(self, given: Dict[str, Any]) -> Dict[str, Any]:
        """`bind`, leaving parameters without a value as REQUIRED; TypeError on unknown ones."""
        unknown = sorted(set(given) - set(self.param_names))
        if unknown:
            known = ", ".join(self.param_names) or "none"
            raise TypeError(
                f"activation '{self.name}' got unexpected parameter(s) {unknown}; "
                f"its parameters are: {known}"
            )
        return {param: given.get(param, default) for param, default in self.params}

    def kernel_attrs(self, params: Dict[str, Any]) -> Tuple[str, List[float]]:
        """The (activation, params) attributes of the fused op; ValueError on bad values."""
        kernel_name, values = self.kernel(**params)
        values = [float(v) for v in values]
        if any(math.isnan(v) for v in values):
            raise ValueError(f"activation '{self.name}': parameters must not be NaN, got {params}")
        return kernel_name, values


# Kernel activations whose f' is piecewise constant (f'' = 0 almost everywhere):
# their second-order gradients need no f''(x), whatever form f' is kept in.
PIECEWISE_LINEAR_KERNELS = frozenset({
    "hard_shrink", "hard_sigmoid", "hard_tanh", "leaky_relu", "linear", "relu", "relu6",
    "soft_shrink", "sparse_sigmoid", "threshold",
})

_REGISTRY: Dict[str, ActivationSpec] = {}
_ALIASES: Dict[str, str] = {}


def register(spec: ActivationSpec, *, overwrite: bool = False) -> ActivationSpec:
    """Adds `spec` to the table (and its aliases). ValueError if the name is taken."""
    for key in (spec.name,) + spec.aliases:
        if key in NOT_ELEMENTWISE:
            raise ValueError(f"'{key}' is reserved: {key} is not element-wise")
        taken = key in _REGISTRY or key in _ALIASES
        if taken and not overwrite:
            raise ValueError(f"an activation named '{key}' is already registered")
    _REGISTRY[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


def unregister(name: str) -> None:
    """Removes the activation `name` (and its aliases); KeyError if it is not registered."""
    spec = _REGISTRY.pop(name)
    for alias in spec.aliases:
        _ALIASES.pop(alias, None)


def get(name: str) -> ActivationSpec:
    """Looks an activation up by name or alias, with a clear error when it cannot be used."""
    if not isinstance(name, str):
        raise TypeError(f"activation name must be a string, got {type(name).__name__}")
    key = name.lower()
    if key in NOT_ELEMENTWISE:
        raise ValueError(
            f"'{name}' cannot be a nestad activation: {NOT_ELEMENTWISE[key]}. nestad keeps "
            "f'(x) per element, which needs an element-wise function (its Jacobian must be "
            "diagonal). Keep keras.activations." + key + " for it."
        )
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(
            f"unknown activation '{name}'; available: {', '.join(available_activations())}"
        )
    return _REGISTRY[key]


def check_saved_params(spec: ActivationSpec, config: Dict[str, Any], owner: str) -> None:
    """Refuses a saved config whose activation parameters are not plain numbers.

    A `.keras` file is untrusted input: Keras hands a registered class its config
    as parsed JSON, so a crafted file can put a nested object (e.g. a serialized
    function) where a number belongs. Every built-in parameter is a number, a bool
    or None; anything else is refused here, at load time.
    """
    for name in spec.param_names:
        value = config.get(name)
        if value is not None and not isinstance(value, (bool, int, float)):
            raise TypeError(
                f"{owner} config: parameter '{name}' of activation '{spec.name}' must be a "
                f"number, a bool or None, got {type(value).__name__} {str(value)[:80]!r}"
            )


def available_activations(*, include_aliases: bool = False) -> List[str]:
    """Names of all registered activations (sorted)."""
    names = list(_REGISTRY)
    if include_aliases:
        names += list(_ALIASES)
    return sorted(names)


def builtin_specs() -> List[ActivationSpec]:
    """The specs that have a fused C++ kernel."""
    return [s for s in _REGISTRY.values() if s.kernel is not None]


# --- the built-in activations: every element-wise function of keras.activations ---

_A = keras.activations
_K = keras.ops


def _no_params(kernel_name):
    return lambda: (kernel_name, [])


def _builtin(name, formula, *, params=(), kernel=None, aliases=(), breakpoints=None,
             storage="full", tensor_reference=None):
    reference = getattr(_A, name)
    register(
        ActivationSpec(
            name=name,
            formula=formula,
            reference=reference,
            params=tuple(params),
            kernel=kernel or _no_params(name),
            aliases=tuple(aliases),
            breakpoints=breakpoints or (lambda **_: ()),
            storage=storage if callable(storage) else (lambda **_: storage),
            tensor_reference=tensor_reference,
        )
    )


def is_tensor_param(value) -> bool:
    """Whether a parameter value is a tensor (or variable, or array) rather than a number.

    Tensors of the Keras backend count too (torch and JAX: `nestad_tf.frameworks`).
    """
    return (tf.is_tensor(value) or keras.ops.is_tensor(value)
            or isinstance(value, (tf.Variable, keras.Variable, np.ndarray)))


# Tensor-parameter forms of the Keras references that branch on parameter values in
# Python (keras.activations.elu/leaky_relu/relu). Same values and derivatives
# (one-sided ones at the kinks, as Keras picks them): tests/test_tensor_params.py.
# Written with keras.ops, so that they run on every Keras backend.
def _minimum(a, b):
    """min(a, b) whose gradient at a tie goes to a, as tf.minimum's does on every backend
    (torch's and JAX's minimum split it in half: neither one-sided derivative)."""
    return _K.where(a > b, b, a)


def _elu_tensor_reference(x, alpha=1.0):
    return _K.where(x > 0, x, alpha * _K.expm1(_minimum(x, 0)))


def _leaky_relu_tensor_reference(x, negative_slope=0.2):
    return _K.where(x > 0, x, negative_slope * x)


def _relu_tensor_reference(x, negative_slope=0.0, max_value=None, threshold=0.0):
    y = _K.where(x > threshold, x, _K.zeros_like(x))
    if max_value is not None:
        y = _minimum(y, max_value)
    below = _minimum(x - threshold, 0)
    # 0 * -inf would be NaN where Keras gives 0 (slope 0 at x = -inf).
    zero_times_inf = _K.logical_and(_K.equal(negative_slope, 0), _K.isinf(x))
    keep = _K.logical_and(x <= threshold, _K.logical_not(zero_times_inf))
    y = y + _K.where(keep, negative_slope * below, _K.zeros_like(x))
    return _K.where(_K.isnan(x), x, y)


# Parameter checks mirror the kernels' Check() (kernels/activations/*.h) so that both
# backends refuse the same values with the same ValueError (NaN: `kernel_attrs`).
def _relu_kernel(negative_slope, max_value, threshold):
    if math.isinf(negative_slope) or math.isinf(threshold):
        raise ValueError("relu: negative_slope and threshold must be finite, got "
                         f"negative_slope={negative_slope}, threshold={threshold}")
    max_value = math.inf if max_value is None else max_value
    return "relu", [negative_slope, max_value, threshold]


def _celu_kernel(alpha):
    if abs(alpha) < 2.0 ** -126:  # zero, or subnormal: zero to kernels that flush subnormals
        raise ValueError("celu: alpha must be non-zero and at least 1.2e-38 in magnitude "
                         f"(celu divides x by alpha), got alpha={alpha}")
    return "celu", [alpha]


def _squareplus_kernel(b):
    if b < 0 or math.isinf(b):
        raise ValueError(f"squareplus: b must be finite and >= 0, got b={b}")
    return "squareplus", [b]


def _positive(value) -> bool:
    """value > 0 as the kernels see it: they run with subnormals flushed to zero."""
    return value >= 2.0 ** -126  # the smallest normal float32


def _relu_storage(negative_slope, max_value, threshold):
    if negative_slope == 0 and threshold >= 0:
        # f' = 1 exactly where 0 < y (< max_value)
        return "output" if max_value is None else ("output", (0.0, 1.0))
    return "levels", (0.0, 1.0, negative_slope)


def _relu_breakpoints(negative_slope, max_value, threshold):
    points = [threshold, 0.0]
    if max_value is not None:
        points.append(max_value)
    return tuple(points)


_builtin("celu", "x if x > 0 else alpha * (exp(x / alpha) - 1)",
         params=[("alpha", 1.0)], kernel=_celu_kernel,
         breakpoints=lambda **_: (0.0,),
         storage=lambda alpha: "output" if _positive(alpha) else "full")
_builtin("elu", "x if x > 0 else alpha * (exp(x) - 1)",
         params=[("alpha", 1.0)], kernel=lambda alpha: ("elu", [alpha]),
         breakpoints=lambda **_: (0.0,), tensor_reference=_elu_tensor_reference,
         storage=lambda alpha: "output" if _positive(alpha) else "full")
_builtin("exponential", "exp(x)",
         storage="output")
_builtin("gelu", "x * Phi(x) (Phi: standard normal CDF); tanh approximation if approximate",
         params=[("approximate", False)],
         kernel=lambda approximate: ("gelu_approximate" if approximate else "gelu", []))
_builtin("hard_shrink", "x if |x| > threshold else 0",
         params=[("threshold", 0.5)], kernel=lambda threshold: ("hard_shrink", [threshold]),
         breakpoints=lambda threshold: (-threshold, threshold),
         storage=lambda threshold: "output" if threshold >= 0 else ("levels", (1.0,)))
_builtin("hard_sigmoid", "relu6(x + 3) / 6", breakpoints=lambda: (-3.0, 3.0),
         storage=("output", (0.0, 1.0 / 6.0)))
_builtin("hard_silu", "x * relu6(x + 3) / 6", aliases=("hard_swish",),
         breakpoints=lambda: (-3.0, 3.0))
_builtin("hard_tanh", "clip(x, -1, 1)", breakpoints=lambda: (-1.0, 1.0),
         storage=("output", (0.0, 1.0)))
_builtin("leaky_relu", "x if x > 0 else negative_slope * x",
         params=[("negative_slope", 0.2)],
         kernel=lambda negative_slope: ("leaky_relu", [negative_slope]),
         breakpoints=lambda **_: (0.0,), tensor_reference=_leaky_relu_tensor_reference,
         storage=lambda negative_slope: (
             "output" if _positive(negative_slope) else ("levels", (1.0, negative_slope))))
_builtin("linear", "x",
         storage="output")
_builtin("log_sigmoid", "log(sigmoid(x))",
         storage="output")
_builtin("mish", "x * tanh(softplus(x))")
_builtin("relu", "clip(x if x > threshold else 0, 0, max_value) + negative_slope * min(x - threshold, 0)",
         params=[("negative_slope", 0.0), ("max_value", None), ("threshold", 0.0)],
         kernel=_relu_kernel, breakpoints=_relu_breakpoints,
         storage=_relu_storage, tensor_reference=_relu_tensor_reference)
_builtin("relu6", "min(max(x, 0), 6)", breakpoints=lambda: (0.0, 6.0),
         storage=("output", (0.0, 1.0)))
_builtin("selu", "scale * (x if x > 0 else alpha * (exp(x) - 1))", breakpoints=lambda: (0.0,),
         storage="output")
_builtin("sigmoid", "1 / (1 + exp(-x))",
         storage="output")
_builtin("silu", "x * sigmoid(x)", aliases=("swish",))
_builtin("soft_shrink", "x - threshold if x > threshold, x + threshold if x < -threshold, else 0",
         params=[("threshold", 0.5)], kernel=lambda threshold: ("soft_shrink", [threshold]),
         breakpoints=lambda threshold: (-threshold, threshold),
         storage=lambda threshold: "output" if threshold >= 0 else ("levels", (1.0,)))
_builtin("softplus", "log(1 + exp(x))",
         storage="output")
_builtin("softsign", "x / (1 + |x|)",
         storage="output")
_builtin("sparse_plus", "0 if x <= -1, (x + 1)^2 / 4 if -1 < x < 1, x if x >= 1",
         breakpoints=lambda: (-1.0, 1.0),
         storage="output")
_builtin("sparse_sigmoid", "0 if x <= -1, (x + 1) / 2 if -1 < x < 1, 1 if x >= 1",
         breakpoints=lambda: (-1.0, 1.0),
         storage=("output", (0.0, 0.5)))
_builtin("squareplus", "(x + sqrt(x^2 + b)) / 2",
         params=[("b", 4.0)], kernel=_squareplus_kernel,
         breakpoints=lambda b: (0.0,) if b == 0 else (),
         storage=lambda b: "output" if _positive(b) else "full")  # b = 0: relu
_builtin("tanh", "tanh(x)",
         storage="output")
_builtin("tanh_shrink", "x - tanh(x)")
_builtin("threshold", "x if x > threshold else default_value",
         params=[("threshold", REQUIRED), ("default_value", REQUIRED)],
         kernel=lambda threshold, default_value: ("threshold", [threshold, default_value]),
         breakpoints=lambda threshold, default_value: (threshold,),
         storage=lambda threshold, default_value: ("levels", (0.0, 1.0)))
