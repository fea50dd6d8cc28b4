"""Activation functions as serializable callables: `nestad_tf.mish`, `nestad_tf.gelu`, ...

Each is an `ActivationFunction`, usable wherever Keras takes an activation:

    keras.layers.Dense(64, activation=nestad_tf.mish)
    keras.layers.Dense(64, activation=nestad_tf.get("leaky_relu", negative_slope=0.1))
    y = nestad_tf.gelu(x, approximate=True)

They are objects rather than plain functions so that Keras saves them by their
registered class ("nestad_tf>ActivationFunction") with their parameters and
restores the nestad version (a plain function named "gelu" would be saved as
Keras' own "gelu"), and so that `.keras` files load with safe_mode=True.
"""

from typing import Any, Dict, Optional

import keras

from . import ops, registry, storage


@keras.saving.register_keras_serializable(package="nestad_tf")
class ActivationFunction:
    """A registered activation with bound parameters, keeping only f'(x) for backprop.

    Args:
      activation: name of a registered activation (`nestad_tf.available_activations()`).
      backend: "auto", "kernel", "tf", or None (use `nestad_tf.backend_scope`).
      derivative: how f'(x) is kept: "exact" (default), "full", "bfloat16",
        "uint8", "bits4" ... "bits1" (see `nestad_tf.storage`).
      **params: the activation's parameters; omitted ones take their defaults.
    """

    def __init__(self, activation: str, backend: Optional[str] = None,
                 derivative: str = "exact", **params):
        self._spec = registry.get(activation)
        self.activation = self._spec.name
        self.backend = backend
        if backend is not None:
            ops._check_backend_name(backend)  # pylint: disable=protected-access
        self.derivative = storage.check_mode(derivative)
        self.params = self._spec.bind(params)
        self.__name__ = self.activation
        self.__doc__ = _docstring(self._spec)

    def __call__(self, x, **overrides):
        backend = overrides.pop("backend", self.backend)
        derivative = overrides.pop("derivative", self.derivative)
        params = dict(self.params, **overrides) if overrides else self.params
        if overrides:
            params = self._spec.bind(params)
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
        if registry.REQUIRED in (default for _, default in spec.params):
            continue  # `threshold` has no defaults: use get("threshold", ...)
        for name in (spec.name,) + spec.aliases:
            functions[name] = ActivationFunction(spec.name)
    return functions


BUILTINS = _builtin_functions()
globals().update(BUILTINS)
