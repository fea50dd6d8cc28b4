"""nestad on the torch and JAX backends of Keras 3: the same method in dynamic graphs.

Keras 3 runs one model on TensorFlow, PyTorch or JAX (`KERAS_BACKEND`). nestad
follows Keras: with `KERAS_BACKEND=torch` or `jax`, its activation objects,
layers and `convert` run on that framework's tensors, and a training step keeps
only f'(x) (or the `derivative=` form of it) for each activation:

  * torch: a `torch.autograd.Function` whose forward computes y and f' in one
    pass and saves only f' in the eager autograd graph (`torch_backend.py`);
  * JAX: a `jax.custom_vjp` whose forward rule returns f' as its only residual
    (`jax_backend.py`), under `jax.jit` too.

Where f' comes from, by `backend=` (the names are the TensorFlow ones):
  * "kernel": the fused C++ loops of kernels/ (the same ones TensorFlow runs):
    on torch through a C interface (kernels/c_api.cc), on JAX as XLA FFI custom
    calls with the handlers TensorFlow's XLA lowering uses (kernels/xla_cpu_ffi.cc);
    on CUDA the CUDA kernels of kernels/cuda/ from _nestad_cuda.so (c_api_gpu.cc,
    xla_gpu_ffi.cc) where that library was built and finds the device.
  * "tf" (the pure path): forward-mode AD of the activation's Keras definition on
    that framework (`torch.func.jvp`, `jax.jvp`), one unit tangent through f.
  * "auto": "kernel" where it can run on the CPU (the library is loaded, and for
    JAX it has its XLA handlers), else the pure path. On CUDA "auto" takes the pure
    path, as TensorFlow's does with a GPU visible, until the CUDA kernels have been
    verified on a GPU (tools/gpu_check/frameworks_check.py); "kernel" uses them.

User activations (`register_activation`, `forward_ad`) are written with
`keras.ops` (backend-neutral) and always take the pure path; tensor parameters
(`ParametricActivation`) get their partials by forward-mode AD too.

What this module holds is what both frameworks share: the choice of path and
storage form, and the element-wise check of user activations. Each framework
module provides the same small set of primitives (see `torch_backend.py`).
"""

import functools
import importlib
import warnings
from typing import Any, Callable, Dict, Optional

import keras
import numpy as np

from .. import _loader, registry, storage

FRAMEWORKS = ("torch", "jax")
_EXTRAS = {"torch": "torch", "jax": "jax"}


def active() -> Optional[str]:
    """The Keras backend when it is one nestad runs natively other than TensorFlow, else None."""
    name = keras.backend.backend()
    return name if name in FRAMEWORKS else None


@functools.lru_cache(maxsize=None)
def module(name: str):
    """The framework module of `name` ("torch" or "jax"); ImportError naming the extra."""
    if name not in FRAMEWORKS:
        raise ValueError(
            f"nestad_tf runs on the tensorflow, torch and jax backends of Keras 3, not {name!r}")
    try:
        importlib.import_module(name)
    except ImportError as error:
        raise ImportError(
            f"KERAS_BACKEND={name} needs {name}, which is not installed: "
            f"pip install 'nestad_tf[{_EXTRAS[name]}]' ({error})") from error
    return importlib.import_module(f".{name}_backend", __name__)


def current():
    """The framework module of the active Keras backend (torch or jax)."""
    name = active()
    if name is None:
        raise RuntimeError("the Keras backend is tensorflow: use nestad_tf.ops")
    return module(name)


def requested_backend(backend: Optional[str]) -> str:
    from .. import ops  # pylint: disable=g-import-not-at-top
    return ops.requested_backend(backend)


def resolve_backend(fw, x, backend: Optional[str], has_kernel: bool = True) -> str:
    """"kernel" or "tf" (the pure path) for a call on framework `fw` (see the module doc)."""
    backend = requested_backend(backend)
    if backend == "tf":
        return "tf"
    why_not = None
    if not has_kernel:
        why_not = "this activation has no fused kernel"
    else:
        library = _loader.load()
        if library.module is None:
            why_not = library.reason
        else:
            why_not = fw.kernel_unavailable(x, library)
    if why_not is None and backend == "auto" and fw.on_gpu(x):
        _warn_once_unverified_cuda(fw)
        return "tf"
    if why_not is None:
        return "kernel"
    if backend == "kernel":
        raise ValueError(f"backend='kernel' cannot run on {fw.NAME} here: {why_not}; use "
                         "backend='auto' or 'tf' (forward-mode AD of the Keras definition)")
    if has_kernel and _loader.load().module is None:
        _loader.warn_once_unavailable()
    return "tf"


@functools.lru_cache(maxsize=None)
def _warn_once_unverified_cuda(fw) -> None:
    warnings.warn(
        f"nestad_tf on {fw.NAME}: backend='auto' uses the pure path (forward-mode AD, also "
        "keeping only f') on CUDA: the CUDA kernels have not been verified on a GPU yet "
        "(`python tools/gpu_check/frameworks_check.py` checks them). backend='kernel' "
        "uses them.", RuntimeWarning, stacklevel=4)


def _warn_uncompressed(name: str, derivative: str, why: str) -> None:
    from .. import ops  # pylint: disable=g-import-not-at-top
    ops._warn_uncompressed(name, derivative, why)  # pylint: disable=protected-access


def apply(x, spec: registry.ActivationSpec, params: Dict[str, Any],
          backend: Optional[str] = None, derivative: str = "exact"):
    """`nestad_tf.ops.apply_spec` on the active torch/JAX backend."""
    fw = current()
    storage.check_mode(derivative)
    if spec.apply is not None:  # user activations (nestad_tf.register_activation)
        _warn_uncompressed(spec.name, derivative, "it is a forward_ad activation (pure path)")
        return spec.apply(x, params, backend)
    if any(_is_param_tensor(fw, v) for v in params.values()):
        from ..forward_ad import apply_with_tensor_params  # pylint: disable=g-import-not-at-top
        _warn_uncompressed(spec.name, derivative, "its parameters are tensors (pure path)")
        return apply_with_tensor_params(x, spec, params, backend)
    x = fw.as_float(x, spec.name)
    chosen = resolve_backend(fw, x, backend, has_kernel=spec.kernel is not None)

    def reference(t):
        return spec.reference(t, **params)

    if chosen == "kernel":
        return _apply_kernel(fw, x, spec, params, storage.plan(spec, params, derivative,
                                                                fw.dtype_name(x)), reference)
    if fw.may_need_gradient(x):  # not for Keras' shape inference on torch "meta" tensors
        _warn_uncompressed(spec.name, derivative, f"the pure path runs here ({fw.NAME}: "
                           "backend='tf', a GPU tensor, or no kernel library)")
    if spec.kernel is not None:
        spec.kernel_attrs(params)  # the same parameter validation on both paths
    return fw.with_saved(x, lambda t: fw.forward_ad(reference, t), fw.multiply,
                         lambda t: fw.in_compute_dtype(reference, t))


def _apply_kernel(fw, x, spec, params, plan: storage.StoragePlan, reference):
    """The fused kernels, keeping f' in the form `plan` says (see storage.py).

    Higher-order gradients (JAX; torch refuses them all) as on TensorFlow: exact
    where f'(x) itself is kept or f'' = 0 (their tangents by forward-mode AD of
    `reference`), else SecondOrderGradientError (see `with_higher_order`).
    """
    kernel_name, kernel_params = spec.kernel_attrs(params)

    def primal(t):  # no gradient asked for: y alone
        return fw.forward_only(t, kernel_name, kernel_params)

    def differentiable(forward):
        return fw.with_higher_order(
            forward, lambda t: fw.forward_ad(reference, t), plan.second_order(kernel_name),
            storage.second_order_refusal(f"nestad activation '{spec.name}'", storage.STORED))

    if plan.form == "full":
        forward = differentiable(lambda t: fw.fused_forward(t, kernel_name, kernel_params))
        return fw.with_saved(x, forward, fw.fused_backward, primal)
    if plan.form == "output":
        y_alone = differentiable(lambda t: (primal(t),))

        def output_twice(t):  # y kept as the residual is the output itself, not a copy of it
            (y,) = y_alone(t)
            return y, y

        def backward(dy, y):
            return fw.backward_from_output(dy, y, kernel_name, kernel_params)

        return fw.with_saved(x, output_twice, backward, primal)
    quantizer = plan.op_attrs()
    forward = differentiable(
        lambda t: fw.quantized_forward(t, kernel_name, kernel_params, quantizer))
    return fw.with_saved(x, forward, lambda dy, code: fw.quantized_backward(dy, code, quantizer),
                         primal)


def _is_param_tensor(fw, value) -> bool:
    return isinstance(value, (keras.Variable, np.ndarray)) or fw.is_tensor(value)


def split_params(fw, params: Dict[str, Any]):
    """(constants, differentiable tensors) of a user activation's parameters.

    Numbers and numpy arrays are constants; a non-trainable keras.Variable is a
    constant tensor; framework tensors and trainable variables are differentiable.
    """
    constants, differentiable = {}, {}
    for key, value in params.items():
        if isinstance(value, keras.Variable):
            if value.trainable:
                differentiable[key] = value.value
            else:
                constants[key] = fw.detach(value.value)
        elif fw.is_tensor(value):
            differentiable[key] = value
        else:
            constants[key] = value
    return constants, differentiable


def apply_forward_ad(activation, x, params: Dict[str, Any], backend: Optional[str] = None):
    """`ForwardADActivation.apply` on torch/JAX: forward-mode AD of the user's function."""
    fw = current()
    resolve_backend(fw, x, backend, has_kernel=False)  # validates; "kernel" raises
    x = fw.as_float(x, activation.name)
    constants, thetas = split_params(fw, params)
    thetas = {k: fw.cast(v, x.dtype) for k, v in thetas.items()}
    for key, value in thetas.items():
        _check_broadcast(activation.name, key, tuple(value.shape), tuple(x.shape))
    if activation.check:
        check_elementwise(fw, activation, x, constants, thetas)
    bound = functools.partial(activation.fn, **constants)
    names = list(thetas)

    def call(t, *values):
        return bound(t, **dict(zip(names, values)))

    if not thetas:
        return fw.with_saved(x, lambda t: fw.forward_ad(call, t), fw.multiply,
                             lambda t: fw.in_compute_dtype(call, t))
    return fw.with_saved_partials(x, list(thetas.values()),
                                  lambda t, *values: fw.forward_ad(call, t, values),
                                  lambda t, *values: fw.in_compute_dtype(
                                      lambda u: call(u, *values), t))


def _check_broadcast(name, param, shape, x_shape):
    merged = None
    try:
        merged = np.broadcast_shapes(tuple(1 if d is None else d for d in shape),
                                     tuple(1 if d is None else d for d in x_shape))
    except ValueError:
        pass
    if merged is None or len(merged) != len(x_shape) or any(
            d is not None and m != d for m, d in zip(merged, x_shape)):
        raise ValueError(
            f"activation '{name}': parameter '{param}' of shape {shape} must broadcast to the "
            f"input shape {x_shape} without changing it (e.g. a scalar, or one value per channel)")


def check_trainable(spec: registry.ActivationSpec, params: Dict[str, Any], param: str) -> None:
    """ValueError unless gradient descent can train `param` (torch/JAX form of
    `nestad_tf.forward_ad._check_trainable`): its gradient, by the framework's
    autodiff of the definition on a probe, must exist and not be zero everywhere."""
    fw = current()
    reference = spec.tensor_reference or spec.reference
    constants = {k: v for k, v in params.items() if k != param}
    probe = np.linspace(-2.5, 2.5, 11).astype(np.float32)
    try:
        gradient = fw.parameter_gradient(lambda x, v: reference(x, **constants, **{param: v}),
                                         probe, float(params[param]))
    except (TypeError, RuntimeError) as error:
        raise ValueError(
            f"parameter '{param}' of '{spec.name}' cannot be trainable: the definition of "
            f"'{spec.name}' uses its value in Python (a branch or a conversion), which a tensor "
            f"parameter does not have ({type(error).__name__}: {str(error).splitlines()[0][:160]})"
        ) from error
    if gradient is None or not np.any(gradient):
        raise ValueError(
            f"parameter '{param}' of '{spec.name}' cannot be trainable: '{spec.name}' depends on "
            f"it only through comparisons (f is piecewise constant in {param}), so its gradient "
            "is zero wherever it exists and training would never change it")


_PROBE_SEED = 20240611
_PROBE_SIDE = 5


def check_elementwise(fw, activation, x, constants, thetas) -> None:
    """NotElementwiseError unless the user's function is element-wise on a probe.

    The torch/JAX form of `nestad_tf.forward_ad.check_elementwise`: on a small
    random probe (every axis no parameter varies along cut to 5 elements), the
    output must have the input's shape and float dtype, changing a random half
    of the input elements must leave the other outputs unchanged, and the JVP
    along a random direction must equal f'(x) times it (diagonal Jacobian).
    Runs once per (dtype, shapes, constants).
    """
    from ..forward_ad import _freeze  # pylint: disable=g-import-not-at-top
    shape = tuple(_PROBE_SIDE if d is None else min(d, _PROBE_SIDE) for d in x.shape)
    theta_shapes = {k: tuple(v.shape) for k, v in thetas.items()}
    for value_shape in theta_shapes.values():  # axes a parameter varies along keep their size
        for axis, size in enumerate(reversed(value_shape)):
            if size not in (None, 1):
                shape = shape[:len(shape) - 1 - axis] + (size,) + shape[len(shape) - axis:]
    key = (fw.NAME, fw.dtype_name(x), shape, _freeze(constants), tuple(sorted(theta_shapes.items())))
    checked = activation.__dict__.setdefault("_checked_frameworks", set())
    if key in checked:
        return
    with fw.eager_scope():  # inside jax.jit too: the probe is concrete
        _probe_elementwise(fw, activation, fw.dtype_name(x), shape, constants, theta_shapes)
    checked.add(key)


def _probe_elementwise(fw, activation, dtype_name, shape, constants, theta_shapes) -> None:
    from ..forward_ad import (  # pylint: disable=g-import-not-at-top
        MIXING_HINT, NotElementwiseError, check_unchanged, half_changed)
    compute = np.float64 if dtype_name == "float64" else np.float32
    rng = np.random.default_rng(_PROBE_SEED)
    probe = rng.uniform(-2.5, 2.5, shape).astype(compute)
    values = {k: rng.uniform(0.5, 1.5, tuple(1 if d is None else d for d in s)).astype(compute)
              for k, s in theta_shapes.items()}

    def call(t):
        return activation.fn(t, **constants, **{k: fw.constant(v) for k, v in values.items()})

    y = fw.to_numpy(call(fw.constant(probe)))
    name = activation.name
    if y.shape != probe.shape or not np.issubdtype(y.dtype, np.floating):
        raise NotElementwiseError(
            f"activation '{name}' is not element-wise: on a probe of shape {shape} it returned "
            f"{y.dtype} of shape {y.shape}. An activation maps every element to one element of "
            "the same shape (no reductions, reshapes or broadcasting to a bigger shape).")
    if probe.size > 1:
        changed = half_changed(rng, shape)
        moved_y = fw.to_numpy(call(fw.constant(np.where(changed, probe + 0.75, probe))))
        check_unchanged(name, shape, changed, y, moved_y)
    tangent = rng.normal(size=shape).astype(compute)
    d = fw.to_numpy(fw.jvp(call, fw.constant(probe), fw.constant(np.ones_like(probe))))
    along = fw.to_numpy(fw.jvp(call, fw.constant(probe), fw.constant(tangent)))
    # float32's precision in float64 too: Keras' JAX sin, cos and tanh compute float64 in
    # float32 (a non-diagonal Jacobian differs by far more).
    rtol = 1e-5
    finite = np.isfinite(along) & np.isfinite(d)
    scale = np.max(np.abs(np.where(finite, d * tangent, 0)), initial=0.0)
    if not np.all(~finite | (np.abs(along - d * tangent) <= rtol * (np.abs(along) + scale))):
        raise NotElementwiseError(
            f"activation '{name}' is not element-wise: on a probe of shape {shape} its Jacobian "
            f"is not diagonal (the derivative along a random direction v differs from f'(x) * v). "
            f"{MIXING_HINT}")


# --- BatchNormalization fused with its activation ---


def fused_normalization_unavailable(backend: Optional[str] = None, z=None) -> Optional[str]:
    """Why the fused BatchNormalization + activation kernels cannot run here (for z, a
    tensor of the call; None: a CPU tensor), or None."""
    fw = current()
    if requested_backend(backend) == "tf":
        return "backend='tf' (the fused normalization has kernels only)"
    library = _loader.load()
    if library.module is None:
        return library.reason
    return fw.kernel_unavailable(fw.as_float([0.0] if z is None else z, "probe"), library,
                                 normalization=True)


def batch_norm_activation(z, gamma, beta, mean, variance, spec: registry.ActivationSpec,
                          params: Dict[str, Any], *, epsilon: float, axis: int, training: bool,
                          backend: Optional[str] = None):
    """(y, batch_mean, batch_variance) of the fused block on torch/JAX (see
    `nestad_tf.normalization`): the backward pass keeps z and per-channel statistics only,
    and recomputes BN and f'(x) in the same C++ loops as TensorFlow's fused op.

    Returns None where the kernels cannot run (the caller runs BatchNormalization and
    the activation unfused); backend="kernel" there is a ValueError.
    """
    fw = current()
    z = fw.as_float(z, spec.name)
    why_not = fused_normalization_unavailable(backend, z)
    if why_not is None and (spec.kernel is None
                            or any(_is_param_tensor(fw, v) for v in params.values())):
        why_not = "the activation has no fused kernel or has tensor parameters"
    if why_not is not None:
        if requested_backend(backend) == "kernel":
            raise ValueError(f"backend='kernel': the fused normalization cannot run on "
                             f"{fw.NAME} here: {why_not}")
        return None
    rank = len(z.shape)
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for z of shape {tuple(z.shape)}")
    if not (np.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"batch_norm_activation: epsilon must be finite and >= 0, got {epsilon}")
    kernel_name, kernel_params = spec.kernel_attrs(params)
    attrs = dict(activation=kernel_name, params=kernel_params, epsilon=float(epsilon),
                 axis=axis % rank, training=bool(training))
    stats = "float64" if fw.dtype_name(z) == "float64" else "float32"
    channels = z.shape[axis]

    def vector(value, fill):  # a variable, a tensor, or None: fill
        if value is None:
            return fw.constant(np.full([channels], fill, stats))
        return keras.ops.cast(value, stats)

    return fw.fused_norm(z, vector(gamma, 1.0), vector(beta, 0.0), fw.detach(vector(mean, 0.0)),
                         fw.detach(vector(variance, 1.0)), attrs)


# --- what an activation keeps, measured on the framework (convert's decisions) ---


def saved_for_backward(spec: registry.ActivationSpec, params: Dict[str, Any], dtype_name: str,
                       implementation: str, backend: str, derivative: str):
    """(roles, bytes per element beyond y) the backward pass of one activation keeps.

    Measured, not written down: on torch, the tensors its autograd graph saves
    (`torch.autograd.graph.saved_tensors_hooks`); on JAX, the residuals of its VJP.
    Roles: "x", "y", "f'(x)" (nestad), or "saved" (other intermediates).
    """
    fw = current()
    if implementation == "keras":
        def function(t):
            return spec.reference(t, **params)
    else:
        def function(t):
            return apply(t, spec, params, backend, derivative)
    return fw.saved_tensors(function, dtype_name, nestad=implementation == "nestad")
