"""What the torch and JAX tests share: the active framework, tensors, its autodiff.

The tests in this folder run when Keras runs on torch or JAX (`KERAS_BACKEND=torch`
or `jax`; tests/test_frameworks.py starts them in a subprocess per backend) and
are skipped on TensorFlow. Expected values come from the framework's own autodiff
of the Keras activation on that backend, never from nestad.
"""

import keras
import numpy as np

FRAMEWORK = keras.backend.backend() if keras.backend.backend() in ("torch", "jax") else None
SKIP_REASON = (f"the torch/JAX tests run with KERAS_BACKEND=torch or jax, not "
               f"{keras.backend.backend()} (tests/test_frameworks.py starts them)")

if FRAMEWORK == "jax":
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 tensors (JAX_ENABLE_X64=1 does the same)

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def tensor(values, dtype="float32"):
    """`values` (float64 numpy) as a tensor of the framework in `dtype`."""
    return keras.ops.cast(keras.ops.convert_to_tensor(np.asarray(values, np.float64)), dtype)


def to_float64(x) -> np.ndarray:
    """A framework tensor as a float64 numpy array (exact for every float dtype)."""
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(x, "float64")))


def value_and_grad(fn, x, cotangent=None):
    """(fn(x), d sum(cotangent * fn(x)) / dx) by the framework's reverse-mode autodiff.

    As float64 numpy arrays; the gradient is zero where fn does not depend on x.
    cotangent: float64 numpy, default ones.
    """
    if FRAMEWORK == "torch":
        import torch  # pylint: disable=g-import-not-at-top

        x = x.detach().clone().requires_grad_(True)
        y = fn(x)
        if not y.requires_grad:
            return to_float64(y), np.zeros(tuple(x.shape))
        upstream = (torch.ones_like(y) if cotangent is None
                    else torch.as_tensor(cotangent).to(y.dtype))
        (gradient,) = torch.autograd.grad(y, x, upstream, allow_unused=True)
        return to_float64(y), (np.zeros(tuple(x.shape)) if gradient is None
                               else to_float64(gradient))
    y, vjp = jax.vjp(fn, x)
    upstream = (jax.numpy.ones_like(y) if cotangent is None
                else jax.numpy.asarray(cotangent).astype(y.dtype))
    (gradient,) = vjp(upstream)
    return to_float64(y), to_float64(gradient)


def reference_y_d(reference_dtype: str):
    """The `y_and_d` of activation_cases.expected_y_d on this framework: the Keras
    reference and its autodiff, evaluated in `reference_dtype`."""

    def y_and_d(spec, params, values):
        return value_and_grad(lambda t: spec.reference(t, **params),
                              tensor(values, reference_dtype))

    return y_and_d


def rounded(values, dtype) -> np.ndarray:
    """float64 `values` rounded to `dtype` by the framework, back as float64."""
    return to_float64(tensor(values, dtype))


def gradients(fn, *args):
    """d sum(fn(*args)) / d args by the framework's autodiff, as float64 numpy arrays."""
    if FRAMEWORK == "torch":
        import torch  # pylint: disable=g-import-not-at-top

        args = [a.detach().clone().requires_grad_(True) for a in args]
        grads = torch.autograd.grad(fn(*args).sum(), args)
        return [to_float64(g) for g in grads]
    grads = jax.grad(lambda *a: jax.numpy.sum(fn(*a)), argnums=tuple(range(len(args))))(*args)
    return [to_float64(g) for g in grads]


def layer_gradients(layer, x):
    """d sum(layer(x)) / dx and / d each trainable weight of the (built) layer."""
    if FRAMEWORK == "torch":
        import torch  # pylint: disable=g-import-not-at-top

        x = x.detach().clone().requires_grad_(True)
        weights = [w.value for w in layer.trainable_weights]
        grads = torch.autograd.grad(layer(x).sum(), [x] + weights)
        return to_float64(grads[0]), [to_float64(g) for g in grads[1:]]
    non_trainable = [w.value for w in layer.non_trainable_weights]

    def total(x, weights):
        y, _ = layer.stateless_call(weights, non_trainable, x)
        return jax.numpy.sum(y)

    dx, dweights = jax.grad(total, argnums=(0, 1))(x, [w.value for w in layer.trainable_weights])
    return to_float64(dx), [to_float64(g) for g in dweights]
