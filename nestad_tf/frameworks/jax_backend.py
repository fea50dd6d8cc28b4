"""nestad on JAX (Keras 3's jax backend): a `jax.custom_vjp` whose only residual is f'.

    primal:   y = f(x)                      (no gradient asked for: no f')
    forward:  y, d = f(x), f'(x)            residual: d alone
    backward: dx = dy * d

The kernels are XLA FFI custom calls (`jax.ffi.ffi_call`) to the same Host
handlers that TensorFlow's XLA lowering calls (kernels/xla_cpu_ffi.cc), so a
`jax.jit`-compiled step runs the same CPU loops as TensorFlow; they exist only
where nestad was built with XLA's headers. On CUDA the same targets are the
XLA:GPU handlers of kernels/cuda/xla_gpu_ffi.cc, from the TF-free
_nestad_cuda.so (built where JAX or torch had CUDA at install time; the fused
normalization has CPU handlers only). Elsewhere the pure path: jax.jvp of the
Keras definition (XLA fuses it). Higher-order
gradients through the kernels are exact where the kept form allows them, as on
TensorFlow (`with_higher_order`); the pure path's are jax's own.

Same primitives as torch_backend.py.
"""

import ctypes
import functools
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

NAME = "jax"

_FLOAT = ("float16", "bfloat16", "float32", "float64")
_ELEMENTWISE_TARGETS = (
    "nestad_fused_activation", "nestad_fused_activation_grad", "nestad_activation_forward",
    "nestad_activation_grad_from_output", "nestad_fused_activation_quantized",
    "nestad_activation_grad_quantized",
)
_NORM_TARGETS = ("nestad_batch_norm_activation", "nestad_batch_norm_activation_grad")


def is_tensor(value) -> bool:
    return isinstance(value, (jax.Array, jax.core.Tracer))


def dtype_name(x) -> str:
    return np.dtype(x.dtype).name


def as_float(x, name: str):
    """x as a JAX array of a floating dtype; TypeError otherwise."""
    if not is_tensor(x):
        import keras  # pylint: disable=g-import-not-at-top
        x = keras.ops.convert_to_tensor(x)
    if dtype_name(x) not in _FLOAT:
        raise TypeError(f"nestad activation '{name}' needs a floating-point tensor (float16, "
                        f"bfloat16, float32 or float64), got {dtype_name(x)}")
    return x


def cast(x, dtype):
    return jnp.asarray(x).astype(dtype)


def detach(x):
    return jax.lax.stop_gradient(x)


def constant(array: np.ndarray):
    return jnp.asarray(array)


def to_numpy(x) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.float64 if x.dtype == np.float64 else np.float32)


def _compute_dtype(dtype):
    return jnp.float64 if np.dtype(dtype) == np.float64 else jnp.float32


def in_compute_dtype(fn: Callable, x):
    return jnp.asarray(fn(x.astype(_compute_dtype(x.dtype)))).astype(x.dtype)


def multiply(dy, d):
    return dy * d


def may_need_gradient(x) -> bool:
    """Whether a backward pass may read what is kept for x: always (a trace cannot tell)."""
    del x
    return True


def eager_scope():
    """A context in which ops on concrete arrays run at once, also while jax.jit traces
    (`jax.ensure_compile_time_eval`): the element-wise probe of user activations."""
    return jax.ensure_compile_time_eval()


def jvp(fn: Callable, x, tangent):
    return jax.jvp(fn, (x,), (tangent,))[1]


def forward_ad(fn: Callable, x, params: Sequence = ()):
    """(fn(x, *params), dfn/dx, dfn/dparam...) by forward-mode AD (jax.jvp), x-shaped each."""
    compute = _compute_dtype(x.dtype)
    xc = x.astype(compute)
    values = [jnp.broadcast_to(jnp.asarray(p).astype(compute), xc.shape) for p in params]
    ones = jnp.ones_like(xc)
    y, d = jax.jvp(lambda t: fn(t, *values), (xc,), (ones,))
    partials = []
    for i in range(len(values)):
        def along(value, i=i):
            return fn(xc, *values[:i], value, *values[i + 1:])

        partials.append(jax.jvp(along, (values[i],), (ones,))[1])
    y, d = jnp.broadcast_to(y, xc.shape), jnp.broadcast_to(d, xc.shape)
    return (y.astype(x.dtype), d.astype(x.dtype)) + tuple(p.astype(x.dtype) for p in partials)


def with_saved(x, forward, backward, primal):
    """y = primal(x); under differentiation forward(x) = (y, kept) and dx = backward(dy, kept)."""

    @jax.custom_vjp
    def activation(t):
        return primal(t)

    def forward_rule(t):
        return forward(t)

    def backward_rule(kept, dy):
        return (backward(dy, kept),)

    activation.defvjp(forward_rule, backward_rule)
    return activation(x)


def with_saved_partials(x, thetas: List, forward, primal):
    """Like with_saved, also differentiating the tensor parameters `thetas`."""
    shapes = [jnp.shape(t) for t in thetas]

    @jax.custom_vjp
    def activation(t, *values):
        return primal(t, *values)

    def forward_rule(t, *values):
        y, d, *partials = forward(t, *values)
        return y, (d, partials)

    def backward_rule(kept, dy):
        d, partials = kept
        return (dy * d,) + tuple(_sum_to_shape(dy * p, s).astype(p.dtype)
                                 for p, s in zip(partials, shapes))

    activation.defvjp(forward_rule, backward_rule)
    return activation(x, *thetas)


def with_higher_order(forward, reference_forward: Optional[Callable], second: Optional[str],
                      refusal: str = ""):
    """forward (FFI calls: operands -> arrays) made differentiable again, for higher-order
    gradients.

    A first-order gradient calls the custom_vjp's forward rule on concrete
    values and never differentiates it; jax.grad of jax.grad (or jax.hessian)
    does, and an FFI call has no derivative. The tangents come from the pure
    path, `reference_forward` (x -> (y, f'(x)) by forward-mode AD of the Keras
    definition), as `second` says (storage.StoragePlan.second_order):
      "exact": every output is (y, f'(x)): the jvp of the reference carries f''(x);
      "zero":  f' is piecewise constant (f'' = 0): y's tangent from the reference,
               the kept tensor's (y again, or exact codes) zero;
      None:    f' is stored in a form f'' cannot come from: SecondOrderGradientError(refusal).
    Exact either way, and free unless a higher-order gradient is asked for.
    """

    @jax.custom_jvp
    def differentiable(*operands):
        return forward(*operands)

    @differentiable.defjvp
    def rule(operands, tangents):
        if second is None:
            from ..ops import SecondOrderGradientError  # pylint: disable=g-import-not-at-top
            raise SecondOrderGradientError(refusal)
        outputs = forward(*operands)
        _, reference_tangents = jax.jvp(reference_forward, operands, tangents)
        if second == "exact":
            return outputs, reference_tangents
        return outputs, (reference_tangents[0],) + tuple(_zero_tangent(o) for o in outputs[1:])

    return differentiable


def _zero_tangent(value):
    if jnp.issubdtype(value.dtype, jnp.inexact):
        return jnp.zeros_like(value)
    return np.zeros(jnp.shape(value), jax.dtypes.float0)


def _linear_in_dy(backward):
    """backward(dy, kept) -> dx = dy * g(kept), differentiable in dy; the kept tensor's
    tangent is zero wherever `with_higher_order` lets one through. The tangent is a
    multiply by g(kept) = backward(1, kept), which reverse mode can transpose (an FFI
    call it could not)."""

    @jax.custom_jvp
    def differentiable(dy, kept):
        return backward(dy, kept)

    @differentiable.defjvp
    def rule(operands, tangents):
        dy, kept = operands
        return backward(dy, kept), tangents[0] * backward(jnp.ones_like(dy), kept)

    return differentiable


def _sum_to_shape(t, shape):
    extra = t.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(extra + i for i, size in enumerate(shape)
                                        if size == 1 and t.shape[extra + i] != 1)
    return jnp.sum(t, axis=axes).reshape(shape) if axes else t.reshape(shape)


# --- the fused kernels, as XLA FFI custom calls ---


def _register(lookup_function, targets, platform: str) -> str:
    """Registers each target's handler (found by the C function `lookup_function`) with
    jax.ffi for `platform`; "" or what is missing."""
    lookup_function.argtypes, lookup_function.restype = [ctypes.c_char_p], ctypes.c_void_p
    handler_type = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
    for target in targets:
        address = lookup_function(target.encode())
        if not address:
            return f"the kernel library has no {platform} handler for {target}"
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler_type(address)),
                                    platform=platform)
    return ""


@functools.lru_cache(maxsize=None)
def _register_targets() -> str:
    """Registers the Host handlers with jax.ffi; "" or why they cannot be."""
    from .. import _loader  # pylint: disable=g-import-not-at-top
    library = _loader.load()
    if not library.xla:
        return f"the kernel library has no XLA FFI handlers ({library.xla_reason})"
    return _register(ctypes.CDLL(library.path).nestad_xla_ffi_host_handler,
                     _ELEMENTWISE_TARGETS + _NORM_TARGETS, "cpu")


@functools.lru_cache(maxsize=None)
def _register_cuda_targets() -> str:
    """Registers the CUDA handlers of _nestad_cuda.so with jax.ffi; "" or why they cannot be."""
    from .. import _loader  # pylint: disable=g-import-not-at-top
    cuda = _loader.load_framework_cuda()
    if cuda.cdll is None:
        return cuda.reason
    return _register(cuda.cdll.nestad_xla_ffi_cuda_handler, _ELEMENTWISE_TARGETS, "CUDA")


def on_gpu(x) -> bool:
    """Whether JAX computes on a GPU (its default backend: where a jitted step runs)."""
    del x
    return jax.default_backend() == "gpu"


def kernel_unavailable(x, library, normalization: bool = False):
    """Why the kernels (with `normalization`, the fused normalization's) cannot run for x,
    or None."""
    del x, library
    platform = jax.default_backend()
    if platform == "cpu":
        return _register_targets() or None
    version = jax.extend.backend.get_backend().platform_version
    if platform != "gpu" or "cuda" not in version.lower():
        return f"JAX runs on {platform} ({version}) and the JAX kernels run on CPU and CUDA"
    if normalization:
        return "JAX runs on CUDA and the fused normalization has CPU kernels only"
    _register_targets()  # too, where it can: a computation placed on the CPU may call them
    return _register_cuda_targets() or None


def _bits(values) -> np.ndarray:
    """Floats as the bit patterns of their float32 values (how the handlers take them)."""
    return np.asarray([float(v) for v in values], np.float32).view(np.int32)


def _call(target: str, results, *operands, **attributes):
    return jax.ffi.ffi_call(target, results, vmap_method="broadcast_all")(*operands, **attributes)


def _like(x):
    return jax.ShapeDtypeStruct(jnp.shape(x), x.dtype)


def fused_forward(x, kernel_name: str, kernel_params: List[float]):
    return tuple(_call("nestad_fused_activation", (_like(x), _like(x)), x,
                       activation=kernel_name, params=_bits(kernel_params)))


@jax.custom_jvp
def _product(dy, d):
    return _call("nestad_fused_activation_grad", _like(d), dy, d)


_product.defjvp(lambda operands, tangents: (
    _product(*operands), tangents[0] * operands[1] + operands[0] * tangents[1]))


def fused_backward(dy, d):
    """dx = dy * d (the kernel; differentiable in both, for higher-order gradients)."""
    return _product(dy.astype(d.dtype), d)


def forward_only(x, kernel_name: str, kernel_params: List[float]):
    return _call("nestad_activation_forward", _like(x), x, activation=kernel_name,
                 params=_bits(kernel_params))


def backward_from_output(dy, y, kernel_name: str, kernel_params: List[float]):
    return _linear_in_dy(lambda dy, y: _call(
        "nestad_activation_grad_from_output", _like(y), dy, y, activation=kernel_name,
        params=_bits(kernel_params)))(dy.astype(y.dtype), y)


def _quantizer(quantizer: Dict) -> Dict:
    return dict(format=quantizer["format"], bits=np.int32(quantizer["bits"]),
                breakpoints=_bits(quantizer["breakpoints"]), levels=_bits(quantizer["levels"]),
                range=_bits(quantizer["range"]))


def quantized_forward(x, kernel_name: str, kernel_params: List[float], quantizer: Dict):
    """(y, codes): f'(x) packed into uint8 codes of quantizer["bits"] bits per element."""
    n = int(np.prod(jnp.shape(x), dtype=np.int64))
    code = jax.ShapeDtypeStruct(((n + 7) // 8 * int(quantizer["bits"]),), jnp.uint8)
    return tuple(_call("nestad_fused_activation_quantized", (_like(x), code), x,
                       activation=kernel_name, params=_bits(kernel_params),
                       **_quantizer(quantizer)))


def quantized_backward(dy, code, quantizer: Dict):
    return _linear_in_dy(lambda dy, code: _call(
        "nestad_activation_grad_quantized", _like(dy), dy, code, **_quantizer(quantizer)))(
            dy, code)


def parameter_gradient(fn: Callable, x: np.ndarray, value: float):
    """d sum(fn(x, v)) / dv at v = value (a scalar); a Python branch on v raises TypeError."""
    return np.asarray(jax.grad(lambda v: jnp.sum(fn(jnp.asarray(x), v)))(jnp.float32(value)))


NORM_SECOND_ORDER = (
    "a second-order gradient through nestad's fused BatchNormalization + activation is not "
    "implemented (its backward pass recomputes from z in the kernels); use BatchNormalization "
    "followed by the activation where higher-order gradients are needed")


def fused_norm(z, gamma, beta, mean, variance, attrs: Dict):
    """(y, batch_mean, batch_variance) of the fused BatchNormalization + activation;
    the residuals are z and the per-channel vectors."""
    ffi_attrs = dict(activation=attrs["activation"], params=_bits(attrs["params"]),
                     epsilon=_bits([attrs["epsilon"]]), axis=np.int32(attrs["axis"]),
                     training=np.int32(bool(attrs["training"])))

    def kernel(z, gamma, beta, mean, variance):
        return tuple(_call("nestad_batch_norm_activation", (_like(z), _like(mean), _like(mean)),
                           z, gamma, beta, mean, variance, **ffi_attrs))

    forward = with_higher_order(kernel, None, None, NORM_SECOND_ORDER)

    @jax.custom_vjp
    def block(z, gamma, beta, mean, variance):
        return forward(z, gamma, beta, mean, variance)

    def forward_rule(z, gamma, beta, mean, variance):
        y, batch_mean, batch_variance = forward(z, gamma, beta, mean, variance)
        return (y, batch_mean, batch_variance), (z, gamma, beta, batch_mean, batch_variance)

    def backward_rule(kept, cotangents):
        z, gamma, beta, used_mean, used_variance = kept
        dz, dgamma, dbeta = _call(
            "nestad_batch_norm_activation_grad", (_like(z), _like(gamma), _like(beta)),
            cotangents[0].astype(z.dtype), z, gamma, beta, used_mean, used_variance, **ffi_attrs)
        return dz, dgamma, dbeta, jnp.zeros_like(used_mean), jnp.zeros_like(used_variance)

    block.defvjp(forward_rule, backward_rule)
    y, batch_mean, batch_variance = block(z, gamma, beta, mean, variance)
    return y, jax.lax.stop_gradient(batch_mean), jax.lax.stop_gradient(batch_variance)


# --- what a function keeps for its backward pass ---


def saved_tensors(function: Callable, dtype_name: str, nestad: bool):
    """(roles, bytes per element XLA keeps for function in a training step).

    The roles are the residuals of function's VJP ("x", "y", "f'(x)" or "saved").
    The bytes are what XLA keeps once it has compiled a step, which is its choice
    (it fuses and recomputes elementwise chains, shares buffers): XLA's temp
    buffers of jax.grad of a probe of three Dense(256) -> function layers (batch
    128), less those of the same probe with the identity, per activation element.
    """
    n = 4096
    x = jnp.linspace(-3, 3, n).astype(dtype_name)
    y, vjp = jax.vjp(function, x)
    roles = []
    for leaf in jax.tree_util.tree_leaves(vjp):
        if not hasattr(leaf, "dtype") or leaf.size * leaf.dtype.itemsize < n:
            continue
        if leaf is x or (leaf.shape == x.shape and bool(jnp.array_equal(leaf, x))):
            role = "x"
        elif leaf.shape == y.shape and bool(jnp.array_equal(leaf, y, equal_nan=True)):
            role = "y"
        else:
            role = "f'(x)" if nestad else "saved"
        roles.append(role)
    kept = _compiled_temp_bytes(function, dtype_name) - _compiled_temp_bytes(None, dtype_name)
    size = max(0.0, kept / (_PROBE_ROWS * _PROBE_WIDTH * _PROBE_LAYERS))
    return tuple(sorted(roles, key=lambda r: (r not in ("x", "y"), r))), size


_PROBE_ROWS, _PROBE_WIDTH, _PROBE_LAYERS = 128, 256, 3


def _compiled_temp_bytes(function: Optional[Callable], dtype_name: str) -> int:
    """XLA's temp buffer bytes of the gradient of the probe (function None: the identity)."""
    x = jnp.linspace(-3, 3, _PROBE_ROWS * _PROBE_WIDTH).reshape(
        _PROBE_ROWS, _PROBE_WIDTH).astype(dtype_name)
    weight = (jnp.eye(_PROBE_WIDTH) * 0.5 + 0.01).astype(dtype_name)

    def loss(weights):
        h = x
        for w in weights:
            h = h @ w
            h = h if function is None else function(h)
        return jnp.sum(h.astype(jnp.float32))

    compiled = jax.jit(jax.grad(loss)).lower([weight] * _PROBE_LAYERS).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)
