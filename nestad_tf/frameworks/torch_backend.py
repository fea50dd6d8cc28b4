"""nestad on PyTorch (Keras 3's torch backend): a `torch.autograd.Function` that saves only f'.

    y, d = forward(x)          # one pass: the fused C++ loops, or torch.func.jvp
    ctx.save_for_backward(d)   # the only tensor the eager autograd graph keeps
    dx = dy * d                # backward

The kernels are the CPU loops of kernels/ (cpu_loops.h) called through their C
interface (kernels/c_api.cc) on the tensors' memory, with torch's intra-op
thread count, and for CUDA tensors the CUDA kernels of kernels/cuda/ through
theirs (kernels/cuda/c_api_gpu.cc, in _nestad_cuda.so), on torch's current
stream; where that library is not built or finds no device, CUDA tensors take
the pure path. The fused normalization has CPU loops only.
A backward pass with create_graph=True (second-order gradients) raises
SecondOrderGradientError (`_first_order_only`): f' is kept, not x.

The primitives here are the ones `nestad_tf.frameworks` calls; jax_backend.py
has the same set.
"""

import contextlib
import ctypes
import functools
import os
import threading
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch

NAME = "torch"

_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}
_FLOAT = tuple(_DTYPE_CODES)


def is_tensor(value) -> bool:
    return isinstance(value, torch.Tensor)


def dtype_name(x) -> str:
    return str(x.dtype).replace("torch.", "")


def as_float(x, name: str) -> torch.Tensor:
    """x as a torch tensor of a floating dtype; TypeError otherwise."""
    if not isinstance(x, torch.Tensor):
        import keras  # pylint: disable=g-import-not-at-top
        x = keras.ops.convert_to_tensor(x)
    if x.dtype not in _FLOAT:
        raise TypeError(f"nestad activation '{name}' needs a floating-point tensor (float16, "
                        f"bfloat16, float32 or float64), got {dtype_name(x)}")
    return x


def cast(x, dtype) -> torch.Tensor:
    return x.to(dtype)


def detach(x) -> torch.Tensor:
    return x.detach()


def constant(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(array)


def to_numpy(x) -> np.ndarray:
    return x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32).cpu().numpy()


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def in_compute_dtype(fn: Callable, x: torch.Tensor) -> torch.Tensor:
    """fn(x) in float32 (half types) or float64, cast back to x's dtype."""
    return torch.as_tensor(fn(x.to(_compute_dtype(x.dtype)))).to(x.dtype)


def multiply(dy, d):
    return dy * d


def eager_scope():
    """A context in which ops on concrete tensors run at once (torch always does)."""
    return contextlib.nullcontext()


def jvp(fn: Callable, x: torch.Tensor, tangent: torch.Tensor) -> torch.Tensor:
    """The Jacobian-vector product of fn at x along tangent (torch.func.jvp)."""
    return torch.func.jvp(fn, (x,), (tangent,))[1]


def forward_ad(fn: Callable, x: torch.Tensor, params: Sequence[torch.Tensor] = ()):
    """(fn(x, *params), dfn/dx, dfn/dparam...) of an element-wise fn by forward-mode AD.

    One unit tangent per input through torch.func.jvp; every derivative is
    x-shaped (a parameter's partial at each element it broadcasts to). Half
    types are computed in float32 and cast back.
    """
    compute = _compute_dtype(x.dtype)
    with torch.no_grad():
        xc = x.detach().to(compute)
        # x-shaped copies: torch.func.jvp cannot make a dual of an expanded (stride-0) tensor.
        values = [p.detach().to(compute).expand_as(xc).contiguous() for p in params]
        ones = torch.ones_like(xc)
        y, d = torch.func.jvp(lambda t: fn(t, *values), (xc,), (ones,))
        partials = []
        for i in range(len(values)):
            def along(value, i=i):
                return fn(xc, *values[:i], value, *values[i + 1:])

            partials.append(torch.func.jvp(along, (values[i],), (ones,))[1])
        y = torch.as_tensor(y).expand_as(xc)
    return (y.to(x.dtype), d.expand_as(xc).to(x.dtype)) + tuple(p.to(x.dtype) for p in partials)


def _first_order_only(backward):
    """torch's `once_differentiable`, raising as soon as a graph of the gradient is asked for.

    dx = dy * f'(x) depends on x through f'(x), which is kept as a constant, so a
    gradient built with create_graph=True would miss the f''(x) term. (torch's
    once_differentiable only marks the result when dy itself requires grad, and
    `torch.autograd.grad(..., create_graph=True)` of a loss such as
    sum(f(x)) + sum(x ** 2) then gives a silently wrong second derivative.)
    """

    @functools.wraps(backward)
    def wrapper(ctx, *upstream):
        if torch.is_grad_enabled():  # the backward pass runs with create_graph=True
            from ..ops import SecondOrderGradientError  # pylint: disable=g-import-not-at-top
            raise SecondOrderGradientError(
                "a second-order gradient (create_graph=True) through a nestad activation on "
                "torch needs f''(x), but nestad's backward pass has only what it kept (f'(x), "
                "or a fused normalization's input), not a graph of it; use the Keras "
                "activation (and BatchNormalization) where higher-order gradients are needed")
        return backward(ctx, *upstream)

    return wrapper


class _SavedDerivative(torch.autograd.Function):
    """y = forward(x)[0]; saves forward(x)[1] only; dx = backward(dy, kept)."""

    @staticmethod
    def forward(ctx, x, forward, backward):  # pylint: disable=arguments-differ
        y, kept = forward(x.detach())
        ctx.backward = backward
        # the kernels ran in y's memory order; the pure path's y may be an expanded view
        ctx.layout = (y.shape, y.stride()) if _fills_one_block(y) else None
        ctx.save_for_backward(kept)
        return y

    @staticmethod
    @_first_order_only
    def backward(ctx, dy):  # pylint: disable=arguments-differ
        (kept,) = ctx.saved_tensors
        dy = dy.contiguous() if ctx.layout is None else _in_layout(dy, *ctx.layout, dy.dtype)
        return ctx.backward(dy, kept), None, None


class _SavedPartials(torch.autograd.Function):
    """y = forward(x, *thetas)[0]; saves f' and one x-shaped partial per theta."""

    @staticmethod
    def forward(ctx, x, forward, *thetas):  # pylint: disable=arguments-differ
        y, d, *partials = forward(x.detach(), *[t.detach() for t in thetas])
        ctx.shapes = [t.shape for t in thetas]
        ctx.save_for_backward(d, *partials)
        return y

    @staticmethod
    @_first_order_only
    def backward(ctx, dy):  # pylint: disable=arguments-differ
        d, *partials = ctx.saved_tensors
        return (dy * d, None) + tuple(_sum_to_shape(dy * p, s)
                                      for p, s in zip(partials, ctx.shapes))


def _sum_to_shape(t: torch.Tensor, shape) -> torch.Tensor:
    """Sums t over the axes along which a tensor of `shape` was broadcast to t's shape."""
    while t.dim() > len(shape):
        t = t.sum(0)
    axes = [i for i, size in enumerate(shape) if size == 1 and t.shape[i] != 1]
    return t.sum(axes, keepdim=True) if axes else t


def _needs_gradient(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def may_need_gradient(x) -> bool:
    """Whether a backward pass may read what is kept for x (not under torch.no_grad, as
    in Keras' shape inference on "meta" tensors)."""
    return _needs_gradient(x)


def with_saved(x, forward, backward, primal):
    """y = forward(x)[0] with a backward pass that keeps only forward(x)[1].

    Without a gradient to compute (torch.no_grad, or x needs none), y = primal(x).
    """
    if not _needs_gradient(x):
        return primal(x.detach())
    return _SavedDerivative.apply(x, forward, backward)


def with_saved_partials(x, thetas: List[torch.Tensor], forward, primal):
    """Like with_saved, also differentiating the tensor parameters `thetas`."""
    if not _needs_gradient(x, *thetas):
        return primal(x.detach(), *[t.detach() for t in thetas])
    return _SavedPartials.apply(x, forward, *thetas)


def with_higher_order(forward, reference_forward, second, refusal: str = ""):
    """forward unchanged: torch's backward with create_graph=True raises in
    `_first_order_only` (nestad keeps f', not x)."""
    del reference_forward, second, refusal
    return forward


# --- the fused kernels, through kernels/c_api.cc ---


def on_gpu(x) -> bool:
    """Whether x lives on a CUDA device."""
    return x.device.type == "cuda"


def kernel_unavailable(x, library, normalization: bool = False):
    """Why the kernels (with `normalization`, the fused normalization's) cannot run on x,
    or None."""
    del library
    if x.device.type == "cpu":
        return None
    if x.device.type != "cuda":
        return f"the tensor is on {x.device} and the torch kernels run on CPU and CUDA tensors"
    if normalization:
        return f"the tensor is on {x.device} and the fused normalization has CPU kernels only"
    from .. import _loader  # pylint: disable=g-import-not-at-top
    cuda = _loader.load_framework_cuda()
    return None if cuda.cdll is not None else f"the tensor is on {x.device} and {cuda.reason}"


def _c_api_signatures(normalization: bool = False) -> Dict[str, list]:
    """The element-wise functions of kernels/c_api.cc (with `normalization`, the fused
    normalization's too) and their argument types, the last three the thread count and
    the error buffer (c_api_gpu.cc's nestad_cuda_* take the device and stream in place of
    the thread count; it has no normalization)."""
    p, i, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    f, s, err = ctypes.POINTER(ctypes.c_float), ctypes.c_char_p, [ctypes.c_char_p, i64]
    norm = [s, f, i, ctypes.c_float, i, i, i, ctypes.POINTER(i64), i]
    return {
        "nestad_fused_forward": [s, f, i, i, p, p, p, i64, i] + err,
        "nestad_fused_backward": [i, p, p, p, i64, i] + err,
        "nestad_forward_only": [s, f, i, i, p, p, i64, i] + err,
        "nestad_backward_from_output": [s, f, i, i, p, p, p, i64, i] + err,
        "nestad_quantized_forward": [s, f, i, s, i, f, i, f, i, f, i, i, p, p, p, i64, i] + err,
        "nestad_quantized_backward": [s, i, f, i, f, i, f, i, i, p, p, p, i64, i] + err,
        **({"nestad_batch_norm_activation": norm + [p] * 8 + [i] + err,
            "nestad_batch_norm_activation_grad": norm + [p] * 9 + [i] + err}
           if normalization else {}),
    }


@functools.lru_cache(maxsize=None)
def _c_api():
    from .. import _loader  # pylint: disable=g-import-not-at-top
    lib = ctypes.CDLL(_loader.load().path)
    for name, argtypes in _c_api_signatures(normalization=True).items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = ctypes.c_int
    lib.nestad_packed_bytes.argtypes = [ctypes.c_int64, ctypes.c_int]
    lib.nestad_packed_bytes.restype = ctypes.c_int64
    lib.nestad_use_openmp.argtypes = [ctypes.c_void_p] * 3
    lib.nestad_use_openmp.restype = ctypes.c_int
    team = _torch_openmp()
    if team is not None:
        lib.nestad_use_openmp(*team)
    return lib


@functools.lru_cache(maxsize=None)
def _cuda_api():
    from .. import _loader  # pylint: disable=g-import-not-at-top
    lib = _loader.load_framework_cuda().cdll
    for name, function in _c_api_signatures().items():
        # the CPU function's arguments, then the device and stream instead of the thread count
        cuda_function = getattr(lib, name.replace("nestad_", "nestad_cuda_", 1))
        cuda_function.argtypes = function[:-3] + [ctypes.c_int, ctypes.c_void_p] + function[-2:]
        cuda_function.restype = ctypes.c_int
    return lib


_OPENMP_RUNTIMES = ("libgomp", "libiomp", "libomp")


def _torch_openmp():
    """(GOMP_parallel, omp_get_thread_num, omp_get_num_threads) of the OpenMP runtime that
    torch's own ops run on, or None (std::threads then).

    torch's intra-op threads are an OpenMP team whose idle threads spin for a while
    after every op: threads of the kernels' own would compete with them for the
    cores (on 2 cores, a second one made the kernels no faster). The runtime is the
    one torch ships (torch/lib/libgomp.so.1 in the CPU wheel); others a process may
    hold (scikit-learn bundles its own libgomp) run other teams.
    """
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    package = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    try:
        with open("/proc/self/maps") as maps:
            loaded = {line.split()[-1] for line in maps if "/" in line}
    except OSError:
        return None
    for path in sorted(loaded):
        name = os.path.basename(path)
        if name.startswith(_OPENMP_RUNTIMES) and ".so" in name and path.startswith(
                (os.path.join(package, "torch") + os.sep, os.path.join(package, "torch.libs"))):
            runtime = ctypes.CDLL(path)
            try:
                return tuple(ctypes.cast(getattr(runtime, symbol), ctypes.c_void_p).value
                             for symbol in ("GOMP_parallel", "omp_get_thread_num",
                                            "omp_get_num_threads"))
            except AttributeError:
                return None
    return None


def _floats(values) -> tuple:
    array = (ctypes.c_float * max(1, len(values)))(*values)
    return array, len(values)


_errors = threading.local()  # one message buffer per calling thread
_CPU = torch.device("cpu")


def _run(function: str, *args, device: torch.device = _CPU) -> None:
    """Calls C function `function` of kernels/c_api.cc, or for a CUDA `device` its
    nestad_cuda_* counterpart on torch's current stream there; ValueError on failure."""
    error = getattr(_errors, "buffer", None)
    if error is None:
        error = _errors.buffer = ctypes.create_string_buffer(512)
    if device.type == "cuda":
        function = function.replace("nestad_", "nestad_cuda_", 1)
        status = getattr(_cuda_api(), function)(
            *args, device.index, torch.cuda.current_stream(device).cuda_stream, error, len(error))
    else:
        status = getattr(_c_api(), function)(*args, torch.get_num_threads(), error, len(error))
    if status:
        raise ValueError(f"nestad kernel ({function}): {error.value.decode()}")


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x itself where its elements fill one block of memory in some order (contiguous, or a
    permuted view such as Keras' NHWC view of a NCHW convolution's output), else a
    contiguous copy. An element-wise loop runs on the block in memory order, into
    outputs made by empty_like (which keeps such strides), with no copy."""
    x = x.detach()
    return x if _fills_one_block(x) else x.contiguous()


def _fills_one_block(t: torch.Tensor) -> bool:
    """Whether t's elements occupy numel() consecutive elements of memory, each once."""
    expected = 1
    for i in sorted(range(t.dim()), key=t.stride):
        if t.shape[i] != 1:
            if t.stride(i) != expected:
                return t.numel() == 0
            expected *= t.shape[i]
    return True


def _in_layout(t: torch.Tensor, shape, stride, dtype) -> torch.Tensor:
    """t as a tensor of `dtype` with exactly these strides (a copy only where it differs)."""
    t = t.detach()
    # tuples: comparing torch.Size objects goes through torch's symbolic-shape code
    if t.dtype == dtype and t.stride() == stride and tuple(t.shape) == tuple(shape):
        return t
    return torch.empty_strided(shape, stride, dtype=dtype, device=t.device).copy_(t)


def _like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return _in_layout(t, like.shape, like.stride(), like.dtype)


def _memory_order(t: torch.Tensor, axis: int):
    """(t's dims in memory order, the position of `axis` among them) for a dense t: the
    row-major shape its memory has (dims of size 1 may land anywhere: they move nothing)."""
    order = sorted(range(t.dim()), key=lambda i: -t.stride(i))
    return [int(t.shape[i]) for i in order], order.index(axis)


def fused_forward(x, kernel_name: str, kernel_params: List[float]):
    x = _dense(x)
    y, d = torch.empty_like(x), torch.empty_like(x)
    params, count = _floats(kernel_params)
    _run("nestad_fused_forward", kernel_name.encode(), params, count, _DTYPE_CODES[x.dtype],
         x.data_ptr(), y.data_ptr(), d.data_ptr(), x.numel(), device=x.device)
    return y, d


def fused_backward(dy, d):
    dy = _like(dy, d)
    dx = torch.empty_like(d)
    _run("nestad_fused_backward", _DTYPE_CODES[d.dtype], dy.data_ptr(), d.data_ptr(),
         dx.data_ptr(), d.numel(), device=d.device)
    return dx


def forward_only(x, kernel_name: str, kernel_params: List[float]):
    x = _dense(x)
    y = torch.empty_like(x)
    params, count = _floats(kernel_params)
    _run("nestad_forward_only", kernel_name.encode(), params, count, _DTYPE_CODES[x.dtype],
         x.data_ptr(), y.data_ptr(), x.numel(), device=x.device)
    return y


def backward_from_output(dy, y, kernel_name: str, kernel_params: List[float]):
    dy = _like(dy, y)
    dx = torch.empty_like(y)
    params, count = _floats(kernel_params)
    _run("nestad_backward_from_output", kernel_name.encode(), params, count,
         _DTYPE_CODES[y.dtype], dy.data_ptr(), y.data_ptr(), dx.data_ptr(), y.numel(),
         device=y.device)
    return dx


def _quantizer_args(quantizer: Dict) -> list:
    args = [quantizer["format"].encode(), int(quantizer["bits"])]
    for key in ("breakpoints", "levels", "range"):
        args += list(_floats([float(v) for v in quantizer[key]]))
    return args


def quantized_forward(x, kernel_name: str, kernel_params: List[float], quantizer: Dict):
    """(y, codes): f'(x) packed into uint8 codes of quantizer["bits"] bits per element, in
    x's memory order (with_saved gives the backward pass dy in that order)."""
    x = _dense(x)
    y = torch.empty_like(x)
    code = torch.empty(int(_c_api().nestad_packed_bytes(x.numel(), int(quantizer["bits"]))),
                       dtype=torch.uint8, device=x.device)
    params, count = _floats(kernel_params)
    _run("nestad_quantized_forward", kernel_name.encode(), params, count,
         *_quantizer_args(quantizer), _DTYPE_CODES[x.dtype], x.data_ptr(), y.data_ptr(),
         code.data_ptr(), x.numel(), device=x.device)
    return y, code


def quantized_backward(dy, code, quantizer: Dict):
    dy = _dense(dy)
    dx = torch.empty_like(dy)
    _run("nestad_quantized_backward", *_quantizer_args(quantizer), _DTYPE_CODES[dy.dtype],
         dy.data_ptr(), code.data_ptr(), dx.data_ptr(), dy.numel(), device=dy.device)
    return dx


def parameter_gradient(fn: Callable, x: np.ndarray, value: float):
    """d sum(fn(x, v)) / dv at v = value (a scalar tensor), or None where fn does not use v."""
    v = torch.tensor(value, dtype=torch.float32, requires_grad=True)
    with torch.enable_grad():
        y = torch.as_tensor(fn(torch.as_tensor(x), v))
        if not y.requires_grad:
            return None
        (gradient,) = torch.autograd.grad(y.sum(), v, allow_unused=True)
    return None if gradient is None else gradient.detach().numpy()


def _norm_args(z, attrs: Dict) -> list:
    """The kernels' attributes for a dense z, described in its memory order."""
    params, count = _floats(attrs["params"])
    shape, axis = _memory_order(z, attrs["axis"])
    dims = (ctypes.c_int64 * len(shape))(*shape)
    return [attrs["activation"].encode(), params, count, attrs["epsilon"], axis,
            int(attrs["training"]), _DTYPE_CODES[z.dtype], dims, len(shape)]


def _norm_forward(z, gamma, beta, mean, variance, attrs: Dict):
    z = _dense(z)
    vectors = [_dense(v) for v in (gamma, beta, mean, variance)]
    y = torch.empty_like(z)
    batch_mean, batch_variance = torch.empty_like(vectors[2]), torch.empty_like(vectors[3])
    _run("nestad_batch_norm_activation", *_norm_args(z, attrs),
         *[t.data_ptr() for t in [z] + vectors + [y, batch_mean, batch_variance]])
    return y, batch_mean, batch_variance


class _FusedNorm(torch.autograd.Function):
    """y = f(BN(z)); saves z and the per-channel vectors only."""

    @staticmethod
    def forward(ctx, z, gamma, beta, mean, variance, attrs):  # pylint: disable=arguments-differ
        y, batch_mean, batch_variance = _norm_forward(z, gamma, beta, mean, variance, attrs)
        ctx.attrs = attrs
        ctx.save_for_backward(z, gamma, beta, batch_mean, batch_variance)
        ctx.mark_non_differentiable(batch_mean, batch_variance)
        return y, batch_mean, batch_variance

    @staticmethod
    @_first_order_only
    def backward(ctx, dy, unused_mean, unused_variance):  # pylint: disable=arguments-differ
        z, gamma, beta, mean, variance = (_dense(t) for t in ctx.saved_tensors)
        dy = _like(dy, z)
        dz, dgamma, dbeta = torch.empty_like(z), torch.empty_like(gamma), torch.empty_like(beta)
        _run("nestad_batch_norm_activation_grad", *_norm_args(z, ctx.attrs),
             *[t.data_ptr() for t in (dy, z, gamma, beta, mean, variance, dz, dgamma, dbeta)])
        return dz, dgamma, dbeta, None, None, None


def fused_norm(z, gamma, beta, mean, variance, attrs: Dict):
    """(y, batch_mean, batch_variance) of the fused BatchNormalization + activation."""
    if not _needs_gradient(z, gamma, beta):
        return _norm_forward(z, gamma, beta, mean, variance, attrs)
    return _FusedNorm.apply(z, gamma, beta, mean, variance, attrs)


# --- what a function keeps for its backward pass ---


def saved_tensors(function: Callable, dtype_name: str, nestad: bool):
    """(roles, bytes per element of the input beyond y) that autograd saves for function.

    Counted with torch.autograd.graph.saved_tensors_hooks on a probe of 4096
    elements; tensors smaller than the probe (scalars, shapes) are not counted.
    """
    n = 4096
    dtype = getattr(torch, dtype_name)
    x = torch.linspace(-3, 3, n, dtype=dtype).requires_grad_(True)
    source = x * 1  # a non-leaf, as inside a model
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = function(source)
    roles, size = [], 0.0
    seen = set()
    for t in saved:
        if t.numel() * t.element_size() < n or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        if t.data_ptr() == source.data_ptr():
            role = "x"
        elif t.data_ptr() == y.data_ptr():
            role = "y"
        else:
            role = "f'(x)" if nestad else "saved"
        roles.append(role)
        if role != "y":
            size += t.numel() * t.element_size() / n
    return tuple(sorted(roles, key=lambda r: (r not in ("x", "y"), r))), size
