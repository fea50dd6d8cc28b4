"""Keras 3 layers of nestad_tf."""

from typing import Optional

import keras

from . import ops, registry, storage


# Keyword arguments keras.layers.Layer itself accepts; everything else is an
# activation parameter (and an unknown one is a TypeError naming the valid ones).
_KERAS_LAYER_KWARGS = frozenset({
    "name", "dtype", "trainable", "autocast", "activity_regularizer",
    "input_dim", "input_shape", "batch_input_shape", "batch_size", "weights",
})


@keras.saving.register_keras_serializable(package="nestad_tf")
class Activation(keras.layers.Layer):
    """Applies a nestad activation; the backward pass keeps only f'(x).

    Args:
      activation: a name from `nestad_tf.available_activations()` (or alias).
      backend: "auto", "kernel" or "tf" (see `nestad_tf.backend_info()`); None
        (default): the innermost `nestad_tf.backend_scope` at call time, else "auto".
      derivative: how f'(x) is kept: "exact" (default, the cheapest exact form),
        "full", "bfloat16", "uint8", "bits4" ... "bits1" (see `nestad_tf.storage`).
      after_normalization: the input is a normalization's output (BatchNormalization,
        LayerNormalization, GroupNormalization; `nestad_tf.convert` sets it). Under XLA
        the backward pass then keeps nothing: it recomputes f'(x) from the
        normalization's input in ops XLA fuses (f' stays exact, whatever `derivative`).
      **kwargs: the activation's parameters (Keras names, e.g. `negative_slope`)
        and the usual Keras layer arguments (`name`, `dtype`, ...).

    Example:
      x = nestad_tf.layers.Activation("gelu", approximate=True)(x)
    """

    def __init__(self, activation: str, backend: Optional[str] = None,
                 derivative: str = "exact", after_normalization: bool = False, **kwargs):
        spec = registry.get(activation)
        params = {k: kwargs.pop(k) for k in list(kwargs) if k not in _KERAS_LAYER_KWARGS}
        super().__init__(**kwargs)
        if backend is not None:
            ops._check_backend_name(backend)  # pylint: disable=protected-access
        self.activation = spec.name
        self.backend = backend
        self.derivative = storage.check_mode(derivative)
        self.after_normalization = bool(after_normalization)
        self.params = spec.bind(params)
        self._spec = spec
        self.supports_masking = True

    def call(self, inputs):
        # No f' in inference graphs (see ops.keras_apply).
        return ops.keras_apply(inputs, self._spec, self.params, self.backend, self.derivative,
                               self.after_normalization)

    def compute_output_shape(self, input_shape):
        return input_shape

    @classmethod
    def from_config(cls, config):
        registry.check_saved_params(registry.get(config.get("activation")), config,
                                    "nestad_tf.layers.Activation")
        return super().from_config(config)

    def get_config(self):
        config = super().get_config()
        config.update({"activation": self.activation, "backend": self.backend,
                       "derivative": self.derivative, **self.params})
        if self.after_normalization:
            config["after_normalization"] = True
        return config
