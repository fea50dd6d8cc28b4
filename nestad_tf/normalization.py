"""Batch normalization fused with the activation that follows it.

In a block z -> x = BN(z) -> y = f(x), training keeps z for BN's backward
pass, something for f's (x, f'(x) or codes) and y for the next layer. The
"floor" (f replaced by the identity) keeps only z and y. The fused op keeps z
and per-channel statistics, and its backward pass recomputes x = BN(z) and
f'(x) from them, so the block keeps what the floor keeps, with no loss of
precision (f' is recomputed exactly, in the compute dtype):

    y, mean, variance = forward(z)                 # batch statistics when training
    dz, dgamma, dbeta = backward(dy, z, statistics)

Backends, as for activations (`nestad_tf.backend_info()`): "kernel" is the
fused C++ op pair (kernels/batch_norm_activation.h, the same per-activation
functors as the activation kernels; under XLA:CPU two custom calls to the same
loops); "tf" is the same custom gradient in pure TensorFlow, its backward pass
recomputing BN and f by TF autodiff (the same memory in graph mode, more time).
"auto" picks "tf" where a GPU is visible (no CUDA kernels for this op yet).
"""

import math
from typing import Any, Dict, Optional, Tuple

import tensorflow as tf

from . import _loader, _private_tf, ops, registry


def _channel_shape(rank: int, axis: int, channels) -> list:
    shape = [1] * rank
    shape[axis] = channels
    return shape


def batch_norm_activation(z, gamma, beta, mean, variance, activation: str = "linear", *,
                          epsilon: float = 1e-3, axis: int = -1, training: bool = True,
                          backend: Optional[str] = None, **params
                          ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """y = f(gamma * (z - mean) / sqrt(variance + epsilon) + beta), keeping only z for backprop.

    Args:
      z: a float16, bfloat16, float32 or float64 tensor of known rank.
      gamma, beta: per-channel scale and offset (vectors of z's size along `axis`), or
        None for 1 and 0 (BatchNormalization's scale=False / center=False).
      mean, variance: the moving statistics, used when `training` is False.
      activation: a name from `nestad_tf.available_activations()` (or an alias).
      epsilon: added to the variance.
      axis: the channel axis (the one not reduced over).
      training: normalize with the batch's statistics (mean and biased variance over
        every axis but `axis`, as tf.nn.moments computes them) and return them; else
        with `mean` and `variance`.
      backend: "auto", "kernel" or "tf" (see the module doc); None: the innermost
        `nestad_tf.backend_scope`, else "auto".
      **params: the activation's parameters (Keras names).

    Returns:
      (y, batch_mean, batch_variance): y with z's dtype; the statistics used, in
      float32 (float64 for float64 z), not differentiable. Gradients flow to z, gamma
      and beta.

    Example:
      y, m, v = batch_norm_activation(z, gamma, beta, moving_mean, moving_var, "mish")
    """
    spec = registry.get(activation)
    bound = spec.bind(params)
    z = ops._as_float_tensor(z, spec.name)  # pylint: disable=protected-access
    rank = z.shape.rank
    if rank is None or rank < 1:
        raise ValueError(f"batch_norm_activation needs z of known rank >= 1, got shape {z.shape}")
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for z of shape {z.shape}")
    axis = axis % rank
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"batch_norm_activation: epsilon must be finite and >= 0, got {epsilon}")
    compute = ops._compute_dtype(z.dtype)  # pylint: disable=protected-access
    channels = tf.shape(z)[axis]

    def vector(value, fill, name):
        if value is None:
            return tf.fill([channels], tf.constant(fill, compute))
        value = tf.convert_to_tensor(value)
        if not value.dtype.is_floating:
            raise TypeError(f"batch_norm_activation: {name} must be floating-point, "
                            f"got {value.dtype.name}")
        return tf.cast(value, compute)

    gamma, beta = vector(gamma, 1.0, "gamma"), vector(beta, 0.0, "beta")
    mean, variance = (tf.stop_gradient(vector(v, 0.0, n)) for v, n in
                      ((mean, "mean"), (variance, "variance")))
    block = _Block(spec, bound, float(epsilon), axis, bool(training))
    if spec.apply is None and any(registry.is_tensor_param(v) for v in bound.values()):
        raise TypeError(f"batch_norm_activation: the parameters of '{spec.name}' must be "
                        "numbers, not tensors")
    explicit_kernel = ops.requested_backend(backend) == "kernel"
    if spec.apply is None and not explicit_kernel and ops.inference_graph():
        return block.composite(z, gamma, beta, mean, variance)  # no backward pass to serve
    chosen = ops.resolve_backend(backend, has_kernel=spec.kernel is not None)
    if chosen == "kernel" and _private_tf.in_xla_context() and ops._gpu_visible():  # pylint: disable=protected-access
        raise ValueError("backend='kernel': the fused normalization has no XLA:GPU lowering "
                         "yet; use backend='auto' or 'tf' (the pure-TF form) under XLA on a GPU")
    return block.with_recomputed_backward(z, gamma, beta, mean, variance, chosen)


class _Block:
    """One fused normalization + activation: its forward and backward in both backends."""

    def __init__(self, spec: registry.ActivationSpec, params: Dict[str, Any], epsilon: float,
                 axis: int, training: bool):
        self.spec, self.params = spec, params
        self.epsilon, self.axis, self.training = epsilon, axis, training

    def composite(self, z, gamma, beta, mean, variance):
        """BN then f in TF ops (tf.nn.moments, tf.nn.batch_normalization, the reference f)."""
        compute = gamma.dtype
        zc = tf.cast(z, compute)
        rank = z.shape.rank
        if self.training:
            axes = [a for a in range(rank) if a != self.axis]
            mean, variance = tf.nn.moments(zc, axes)
        shape = _channel_shape(rank, self.axis, tf.shape(z)[self.axis])
        x = tf.nn.batch_normalization(zc, tf.reshape(mean, shape), tf.reshape(variance, shape),
                                      tf.reshape(beta, shape), tf.reshape(gamma, shape),
                                      self.epsilon)
        y = tf.cast(self.spec.reference(x, **self.params), z.dtype)
        return y, mean, variance

    def _kernel_attrs(self):
        kernel_name, kernel_params = self.spec.kernel_attrs(self.params)
        return dict(activation=kernel_name, params=kernel_params, epsilon=self.epsilon,
                    axis=self.axis, training=self.training)

    def with_recomputed_backward(self, z, gamma, beta, mean, variance, backend: str):
        """(y, batch_mean, batch_variance); the gradient keeps z and the statistics only."""
        if backend == "kernel":
            lib = _loader.load().module
            attrs = self._kernel_attrs()

            def forward(z, gamma, beta):
                return lib.batch_norm_activation(z, gamma, beta, mean, variance, **attrs)

            def backward(dy, z, gamma, beta, used_mean, used_variance):
                return lib.batch_norm_activation_grad(dy, z, gamma, beta, used_mean,
                                                      used_variance, **attrs)
        else:
            def forward(z, gamma, beta):
                return self.composite(z, gamma, beta, mean, variance)

            def backward(dy, z, gamma, beta, used_mean, used_variance):  # pylint: disable=unused-argument
                with tf.GradientTape() as tape:
                    tape.watch([z, gamma, beta])
                    y, _, _ = self.composite(z, gamma, beta, mean, variance)
                return tape.gradient(y, [z, gamma, beta], output_gradients=dy,
                                     unconnected_gradients=tf.UnconnectedGradients.ZERO)

        statistics = {}

        @tf.custom_gradient
        def fused(z, gamma, beta):
            y, used_mean, used_variance = forward(
                tf.stop_gradient(z), tf.stop_gradient(gamma), tf.stop_gradient(beta))
            statistics["used"] = (used_mean, used_variance)

            def grad(dy):
                return list(backward(dy, z, gamma, beta, used_mean, used_variance))

            return y, grad

        y = fused(z, gamma, beta)
        used_mean, used_variance = statistics["used"]
        return y, tf.stop_gradient(used_mean), tf.stop_gradient(used_variance)


def _register_gradients():
    @tf.RegisterGradient(_loader.op_type("BatchNormActivationGrad"))
    def _no_second_order(op, *upstream):  # pylint: disable=unused-argument,unused-variable
        raise ops.SecondOrderGradientError(
            f"a second-order gradient through {op.type} is not implemented; use "
            "backend='tf' for the fused normalization + activation, or BatchNormalization "
            "followed by the activation"
        )


_register_gradients()
