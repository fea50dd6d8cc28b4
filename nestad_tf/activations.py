"""Activation functions as serializable callables: `nestad_tf.mish`, `nestad_tf.gelu`, ...

Each is an `ActivationFunction`, usable wherever Keras takes an activation:

    keras.layers.Dense(64, activation=nestad_tf.mish)
    keras.layers.Dense(64, activation=nestad_tf.get("leaky_relu", negative_slope=0.1))
    y = nestad_tf.gelu(x, approximate=True)
    y = nestad_tf.relu(x, 0.1, 6.0)           # positional, in Keras' order
    y = nestad_tf.threshold(x, 0.5, -1.0)     # no defaults, as in Keras

Each takes what `keras.activations.<name>` takes: the same parameters in the
same order (from the registry, which tests/test_activations.py checks against
Keras' signatures), tensors, numpy arrays, Python lists and numbers. Integer
and bool inputs have no gradient, so there is no f'(x) to keep: the built-ins
hand them to the Keras definition, which returns what Keras returns (`linear`
the input unchanged, `relu` integers, `tanh` float32) or refuses them, and
then nestad raises a TypeError saying so. Complex inputs are refused (Keras
takes them in a few activations): nestad keeps f' of real functions only.

They are objects rather than plain functions so that Keras saves them by their
registered class ("nestad_tf>ActivationFunction") with their parameters and
restores the nestad version (a plain function named "gelu" would be saved as
Keras' own "gelu"), and so that `.keras` files load with safe_mode=True.
"""

import inspect
from typing import Any, Dict, Optional

import keras
import tensorflow as tf

from . import ops, registry, storage


@keras.saving.register_keras_serializable(package="nestad_tf")
class ActivationFunction:
    """A registered activation with bound parameters, keeping only f'(x) for backprop.

    Called as the Keras activation is, parameters positional or by keyword
    (`fn(x, 0.3)`, `fn(x, negative_slope=0.3)`); the bound parameters are the
    defaults, and `backend=` / `derivative=` may be given by keyword for one call
    (`inspect.signature(fn)` shows it all).

    Args:
      activation: name of a registered activation (`nestad_tf.available_activations()`).
      backend: "auto", "kernel", "tf", or None (use `nestad_tf.backend_scope`).
      derivative: how f'(x) is kept: "exact" (default), "full", "bfloat16",
        "uint8", "bits4" ... "bits1" (see `nestad_tf.storage`).
      **params: the activation's parameters; omitted ones take their defaults,
        and those without a default (threshold's) are then needed at the call.

    Example:
      leaky = nestad_tf.ActivationFunction("leaky_relu", negative_slope=0.1)
      y = leaky(x)        # negative_slope=0.1
      y = leaky(x, 0.3)   # negative_slope=0.3 for this call
    """

    def __init__(self, activation: str, backend: Optional[str] = None,
                 derivative: str = "exact", **params):
        self._spec = registry.get(activation)
        self.activation = self._spec.name
        self.backend = backend
        if backend is not None:
            ops._check_backend_name(backend)  # pylint: disable=protected-access
        self.derivative = storage.check_mode(derivative)
        # Parameters without a default (threshold's) may be left for the call.
        self.params = {k: v for k, v in self._spec.bind_partial(params).items()
                       if v is not registry.REQUIRED}
        self.__name__ = self.activation
        self.__doc__ = _docstring(self._spec)
        self.__signature__ = _call_signature(self._spec, self.params, backend, self.derivative)
        # fn(x) alone, the call of every Keras layer: the bound parameters, no binding
        self._only_x = None if any(p.default is inspect.Parameter.empty for p in list(
            self.__signature__.parameters.values())[1:]) else {
                k: p.default for k, p in list(self.__signature__.parameters.items())[1:]
                if k not in ("backend", "derivative")}

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and self._only_x is not None:
            return self._apply(args[0], dict(self._only_x), self.backend, self.derivative)
        try:
            arguments = self.__signature__.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"nestad_tf.{self.activation}{self.__signature__}: {error}") from None
        arguments.apply_defaults()
        params = dict(arguments.arguments)
        x = params.pop("x")
        backend = params.pop("backend")
        derivative = params.pop("derivative")
        return self._apply(x, params, backend, derivative)

    def _apply(self, x, params, backend, derivative):
        if self._spec.apply is None and not _is_floating(x):
            return _keras_reference(self._spec, x, params)
        if ops._is_keras_tensor(x):  # pylint: disable=protected-access
            return ops.activation(x, self.activation, backend=backend, derivative=derivative,
                                  **params)
        # No f' in inference graphs (see ops.keras_apply).
        return ops.keras_apply(x, self._spec, params, backend, derivative)

    def get_config(self) -> Dict[str, Any]:
        config = {"activation": self.activation, **self.params}
        if self.backend is not None:
            config["backend"] = self.backend
        if self.derivative != "exact":
            config["derivative"] = self.derivative
        return config

    @classmethod
    def from_config(cls, config):
        registry.check_saved_params(registry.get(config.get("activation")), config,
                                    "nestad_tf.ActivationFunction")
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, ActivationFunction) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(self.activation)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "activation")
        return f"nestad_tf.ActivationFunction({self.activation!r}{', ' + args if args else ''})"


def get(activation: str, backend: Optional[str] = None, derivative: str = "exact",
        **params) -> ActivationFunction:
    """Returns the activation `activation` with parameters bound, e.g. get("relu", max_value=6)."""
    return ActivationFunction(activation, backend=backend, derivative=derivative, **params)


def _call_signature(spec: registry.ActivationSpec, params: Dict[str, Any], backend,
                    derivative) -> inspect.Signature:
    """(x, <the activation's parameters, in the registry's (Keras') order>, *, backend, derivative).

    Defaults are the bound values. A parameter without a value that follows one
    with a value (get("threshold", threshold=0.5)) can only be given by keyword.
    """
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [inspect.Parameter("x", kind)]
    for name, _ in spec.params:
        default = params.get(name, inspect.Parameter.empty)
        if default is inspect.Parameter.empty and parameters[-1].default is not default:
            kind = inspect.Parameter.KEYWORD_ONLY
        parameters.append(inspect.Parameter(name, kind, default=default))
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters += [inspect.Parameter("backend", keyword, default=backend),
                   inspect.Parameter("derivative", keyword, default=derivative)]
    return inspect.Signature(parameters)


def _is_floating(x) -> bool:
    """Whether x (tensor, KerasTensor, array, list or number) converts to a floating dtype."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        dtype = keras.ops.convert_to_tensor(x).dtype
    name = keras.backend.standardize_dtype(dtype)
    # Complex inputs go on to nestad, which refuses them: f' is kept for real functions only.
    return name.startswith(("float", "bfloat", "complex"))


def _keras_reference(spec: registry.ActivationSpec, x, params: Dict[str, Any]):
    """An integer or bool input: Keras' own result (no gradient, so nothing to keep)."""
    try:
        return spec.reference(x, **params)
    except (TypeError, ValueError, RuntimeError, tf.errors.InvalidArgumentError) as error:
        dtype = getattr(x, "dtype", None)
        dtype = keras.ops.convert_to_tensor(x).dtype if dtype is None else dtype
        raise TypeError(
            f"nestad_tf.{spec.name} needs a floating-point tensor (float16, bfloat16, float32 or "
            f"float64), got {keras.backend.standardize_dtype(dtype)}; keras.activations.{spec.name} refuses "
            f"it too ({type(error).__name__}: {str(error).strip().splitlines()[0][:200]})"
        ) from error


def _docstring(spec: registry.ActivationSpec) -> str:
    params = ", ".join(
        f"{name}" + ("" if default is registry.REQUIRED else f"={default!r}")
        for name, default in spec.params
    )
    return (
        f"nestad {spec.name}(x{', ' + params if params else ''}): y = {spec.formula}.\n\n"
        "Keeps only f'(x) for the backward pass. Same values and parameters as "
        f"keras.activations.{spec.name}."
    )


def _builtin_functions() -> Dict[str, ActivationFunction]:
    functions = {}
    for spec in registry.builtin_specs():
        for name in (spec.name,) + spec.aliases:
            functions[name] = ActivationFunction(spec.name)
    return functions


BUILTINS = _builtin_functions()
globals().update(BUILTINS)
