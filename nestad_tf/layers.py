"""Keras 3 layers of nestad_tf."""

from typing import Optional

import keras

from . import frameworks, normalization, ops, registry, storage


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


@keras.saving.register_keras_serializable(package="nestad_tf")
class BatchNormActivation(keras.layers.BatchNormalization):
    """BatchNormalization followed by an activation, fused: training keeps only the input.

    y = f(gamma * (z - mean) / sqrt(variance + epsilon) + beta). The weights
    (gamma, beta, moving_mean, moving_variance), their config names, the moving
    statistics' updates (`momentum`), `training=False` and the frozen-layer rule
    (`trainable=False` normalizes with the moving statistics) are those of
    `keras.layers.BatchNormalization`, whose subclass this is. The backward pass
    recomputes the normalization and f'(x) from z, so a training step keeps z and
    per-channel statistics only: what BatchNormalization alone keeps (see
    `nestad_tf.normalization`). `nestad_tf.convert` fuses BatchNormalization
    layers followed by an activation into this layer.

    With a mask, renorm=True or synchronized=True it runs as BatchNormalization
    followed by the nestad activation (not fused); so it does on Keras' torch and
    JAX backends where the fused kernels cannot run (CUDA tensors, a GPU JAX,
    backend="tf"; see `nestad_tf.frameworks`).

    Args:
      activation: a name from `nestad_tf.available_activations()` (or alias).
      activation_params: the activation's parameters (Keras names), e.g.
        `{"negative_slope": 0.1}` for "leaky_relu".
      backend: "auto", "kernel" or "tf"; None (default): the innermost
        `nestad_tf.backend_scope` at call time, else "auto".
      **kwargs: the arguments of `keras.layers.BatchNormalization` (axis, momentum,
        epsilon, center, scale, initializers, ...) and of Keras layers.

    Example:
      x = keras.layers.Conv2D(32, 3, use_bias=False)(x)
      x = nestad_tf.layers.BatchNormActivation("mish")(x)
    """

    def __init__(self, activation: str = "linear", activation_params: Optional[dict] = None,
                 backend: Optional[str] = None, **kwargs):
        spec = registry.get(activation)
        super().__init__(**kwargs)
        if backend is not None:
            ops._check_backend_name(backend)  # pylint: disable=protected-access
        self.activation = spec.name
        self.activation_params = spec.bind(dict(activation_params or {}))
        self.backend = backend
        self._spec = spec

    def call(self, inputs, training=None, mask=None):
        use_batch_statistics = bool(training) and self.trainable
        fused = None
        if mask is None and not self.renorm and not self.synchronized:
            gamma = self.gamma if self.scale else None
            beta = self.beta if self.center else None
            if frameworks.active():  # torch / JAX: their kernels, where they run
                fused = frameworks.batch_norm_activation(
                    inputs, gamma, beta, self.moving_mean, self.moving_variance, self._spec,
                    self.activation_params, epsilon=self.epsilon, axis=self.axis,
                    training=use_batch_statistics, backend=self.backend)
            else:
                fused = normalization.batch_norm_activation(
                    inputs, gamma, beta, self.moving_mean, self.moving_variance, self.activation,
                    epsilon=self.epsilon, axis=self.axis, training=use_batch_statistics,
                    backend=self.backend, **self.activation_params)
        if fused is None:
            normalized = super().call(inputs, training=training, mask=mask)
            return ops.keras_apply(normalized, self._spec, self.activation_params, self.backend)
        y, mean, variance = fused
        if use_batch_statistics:
            # As BatchNormalization: moving = moving * momentum + batch * (1 - momentum).
            for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
                current = keras.ops.cast(moving, batch.dtype)
                moving.assign(keras.ops.cast(
                    current * self.momentum + batch * (1.0 - self.momentum), moving.dtype))
        return keras.ops.cast(y, self.compute_dtype)

    @classmethod
    def from_config(cls, config):
        registry.check_saved_params(registry.get(config.get("activation", "linear")),
                                    dict(config.get("activation_params") or {}),
                                    "nestad_tf.layers.BatchNormActivation")
        return super().from_config(config)

    def get_config(self):
        config = super().get_config()
        config.update({"activation": self.activation,
                       "activation_params": dict(self.activation_params),
                       "backend": self.backend})
        return config
