"""Applying an activation so that the backward pass keeps only f'(x).

    y, d = forward(x)        # d = f'(x), computed during the forward pass
    dx   = dy * d            # the whole backward pass

`forward` is either the fused C++ kernel (backend "kernel") or forward-mode
automatic differentiation of the activation's pure-TF reference (backend "tf":
one unit tangent pushed through f, see `jvps`). Both
run inside `tf.custom_gradient` on `tf.stop_gradient(x)`, so neither TF's tape
nor a `tf.function` gradient graph keeps x or any intermediate of f: only d
(and y, when the next layer needs it anyway).

What the kernel path keeps is chosen by `derivative=` (see storage.py): f'(x)
itself ("full"), nothing beyond y (f' recomputed from y), or packed codes.

Higher-order gradients: with f'(x) kept, d is linked back to x through a small
custom-gradient identity whose own gradient is f''(x) (TF autodiff of the
reference). In a `tf.function` that costs nothing unless a second-order
gradient is actually built. In eager mode the link cannot hold x without
keeping it alive for every call, so there a second-order gradient raises
`SecondOrderGradientError` instead of silently returning zero. Piecewise-linear
activations need no f'' (it is 0); for f' recomputed from y or compressed, the
f'' term cannot be formed and a second-order gradient raises as well.
"""

import contextlib
import threading
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from . import _loader, _private_tf, frameworks, registry, storage

BACKENDS = ("auto", "kernel", "tf")
FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)

_state = threading.local()


class SecondOrderGradientError(RuntimeError):
    """A second-order gradient through a nestad activation cannot be computed here."""

    # Raised while a tf.function is traced: AutoGraph re-raises exceptions that
    # carry this attribute unchanged instead of wrapping them in a StagingError.
    ag_pass_through = True


@contextlib.contextmanager
def backend_scope(backend: str):
    """Sets the backend used when a call passes `backend=None` (the default).

    Example:
      with nestad_tf.backend_scope("tf"):
          y = nestad_tf.mish(x)   # pure-TF forward-mode AD path
    """
    _check_backend_name(backend)
    stack = _backend_stack()
    stack.append(backend)
    try:
        yield
    finally:
        stack.pop()


def _backend_stack():
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


def _check_backend_name(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _gpu_visible() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


_gpu_warned = False


def requested_backend(backend: Optional[str]) -> str:
    """The backend a call asks for: `backend`, else the innermost backend_scope, else "auto"."""
    if backend is None:
        stack = _backend_stack()
        backend = stack[-1] if stack else "auto"
    _check_backend_name(backend)
    return backend


def resolve_backend(backend: Optional[str], has_kernel: bool = True) -> str:
    """Returns "kernel" or "tf" for a call, following the rules in backend_info()."""
    global _gpu_warned
    backend = requested_backend(backend)
    in_xla = _private_tf.in_xla_context()
    if backend == "tf":
        return "tf"
    if backend == "kernel":
        if not has_kernel:
            raise ValueError("this activation has no fused kernel; use backend='tf' or 'auto'")
        library = _loader.load()
        if library.module is None:
            raise RuntimeError(f"backend='kernel' requested but {library.reason}")
        if in_xla:
            _check_xla_target(library)
        return "kernel"
    # auto
    if not has_kernel:
        return "tf"
    library = _loader.load()
    if library.module is None:
        _loader.warn_once_unavailable()
        return "tf"
    if _gpu_visible():
        if not _gpu_warned:
            _gpu_warned = True
            warnings.warn(
                "nestad_tf: a GPU is visible; backend='auto' uses the pure-TF path there "
                f"(GPU kernels: {library.gpu_reason}; they have not been verified on a GPU "
                "yet: `bash tools/gpu_check/run.sh` checks them). backend='kernel' uses them.",
                RuntimeWarning,
                stacklevel=3,
            )
        return "tf"
    if in_xla and not library.xla:
        _warn_once_no_xla(library.xla_reason)
        return "tf"
    return "kernel"


def _check_xla_target(library) -> None:
    """ValueError unless the kernels can be compiled by XLA where this function runs."""
    if not library.xla:
        raise ValueError(
            "backend='kernel' cannot run under XLA (jit_compile=True) here: "
            f"{library.xla_reason}. Use backend='auto' (the pure-TF path under XLA) or 'tf', "
            "or rebuild nestad_tf against a TensorFlow that ships XLA's headers."
        )
    if _gpu_visible() and not library.gpu_xla:
        why = ("they were built without them" if library.gpu_reason == "loaded"
               else f"the GPU kernels are not loaded ({library.gpu_reason})")
        raise ValueError(
            "backend='kernel' under XLA with a GPU visible needs the GPU kernels' XLA handlers, "
            f"but {why}. Use backend='auto' or 'tf', or run the function on the CPU."
        )


_xla_warned = False


def _warn_once_no_xla(reason: str) -> None:
    global _xla_warned
    if not _xla_warned:
        _xla_warned = True
        warnings.warn(
            f"nestad_tf: under XLA the pure-TF path runs ({reason}).",
            RuntimeWarning,
            stacklevel=4,
        )


def _as_float_tensor(x, name: str) -> tf.Tensor:
    if isinstance(x, (tf.Tensor, tf.Variable)) or hasattr(x, "dtype"):
        x = tf.convert_to_tensor(x)
    else:
        x = tf.convert_to_tensor(x, dtype_hint=tf.float32)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"nestad activation '{name}' needs a floating-point tensor "
            f"(float16, bfloat16, float32 or float64), got {x.dtype.name}"
        )
    return x


def _compute_dtype(dtype: tf.DType) -> tf.DType:
    return tf.float64 if dtype == tf.float64 else tf.float32


def _in_compute_dtype(fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> tf.Tensor:
    """fn(x) computed in float32 (half types) or float64, cast back to x's dtype."""
    return tf.cast(fn(tf.cast(x, _compute_dtype(x.dtype))), x.dtype)


_SAME_SIZE_INT = {2: tf.int16, 4: tf.int32, 8: tf.int64}


def unit_tangent(x: tf.Tensor) -> tf.Tensor:
    """ones_like(x) that TensorFlow cannot fold into a constant held by the graph.

    With a static shape, a fill of ones from constants (`tf.ones_like(x)`, and
    even a fill from a `placeholder_with_default` scalar) is constant-folded
    when a function is instantiated, into an x-sized constant (up to 10 MiB)
    that the function keeps for its lifetime. The 1 here is computed from x's
    first element (its bits AND 0, plus 1: exactly 1 for every value, NaN and
    inf included, and for an empty x), so nothing is folded: the fill happens
    at run time and is freed after use.
    """
    first = tf.reduce_min(tf.reshape(x, [-1])[:1])  # +inf for an empty x
    bits = tf.bitcast(first, _SAME_SIZE_INT[x.dtype.size])
    one = tf.bitwise.bitwise_and(bits, tf.zeros([], bits.dtype)) + 1
    return tf.fill(tf.shape(x), tf.cast(one, x.dtype))


def jvps(fn: Callable[..., tf.Tensor], primals: Sequence[tf.Tensor],
         tangents: Sequence[tf.Tensor]) -> Tuple[tf.Tensor, List[tf.Tensor]]:
    """y = fn(*primals) and one Jacobian-vector product per primal: dy/dp_i . t_i.

    Forward-mode AD by transposition: g(u) = J^T u is linear in the cotangent
    u, so differentiating g(u) . t with respect to u gives J t. TF's
    ForwardAccumulator does this op by op and materializes a zero tangent for
    every constant operand (0.5 in 0.5 * x); TF's constant folding turns those
    into x-sized constants that the traced graph keeps for its lifetime (one
    per op and shape). Transposing the whole function's VJP at once gives the
    same J t with no tangent for constants: nothing is kept, and it measured
    as fast or faster (16M floats: gelu-like 83 vs 127 ms, snake 73 vs 164 ms).

    Raises LookupError where an op's gradient has no gradient (SoftsignGrad).
    """
    zero = tf.UnconnectedGradients.ZERO
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            inner.watch(primals)
            y = tf.convert_to_tensor(fn(*primals))
        cotangent = unit_tangent(y)  # any value: g is linear in it
        outer.watch(cotangent)
        vjps = inner.gradient(y, list(primals), output_gradients=cotangent,
                              unconnected_gradients=zero)
    products = [outer.gradient(g, cotangent, output_gradients=t, unconnected_gradients=zero)
                for g, t in zip(vjps, tangents)]
    del outer
    return y, products


def forward_ad(fn: Callable[..., tf.Tensor], x: tf.Tensor,
               params: Sequence[tf.Tensor] = ()) -> Tuple[tf.Tensor, ...]:
    """(fn(x, *params), dfn/dx, dfn/dparam...) of an element-wise `fn`, by forward-mode AD.

    One unit tangent per input (`jvps`); every derivative is x-shaped: the
    partial along a parameter is taken at each element it broadcasts to. Half
    types are computed in float32 and cast back.
    """
    compute = _compute_dtype(x.dtype)
    xc = tf.cast(x, compute)
    params_c = [tf.cast(p, compute) for p in params]
    try:
        y, derivatives = jvps(fn, [xc] + params_c, [unit_tangent(t) for t in [xc] + params_c])
    except LookupError:
        # A few ops have no gradient of their gradient (tf.nn.softsign's
        # SoftsignGrad), which the transposition needs. For an element-wise fn
        # the VJP with a unit cotangent is the same f'(x), and with every
        # parameter broadcast to x's shape the same per-element partials.
        broadcast = [tf.broadcast_to(p, tf.shape(xc)) for p in params_c]
        with tf.GradientTape() as tape:
            tape.watch([xc] + broadcast)
            y = tf.convert_to_tensor(fn(xc, *broadcast))
        derivatives = tape.gradient(y, [xc] + broadcast,
                                    unconnected_gradients=tf.UnconnectedGradients.ZERO)
    if y.shape.rank is not None and xc.shape.rank is not None and y.shape != xc.shape:
        y = tf.broadcast_to(y, tf.shape(xc))
        derivatives = [tf.broadcast_to(d, tf.shape(xc)) for d in derivatives]
    return (tf.cast(y, x.dtype),) + tuple(tf.cast(d, x.dtype) for d in derivatives)


def second_derivative(fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> tf.Tensor:
    """fn''(x) of an element-wise `fn`, by TF autodiff (used only for higher-order gradients)."""
    compute = _compute_dtype(x.dtype)
    xc = tf.cast(x, compute)
    with tf.GradientTape() as outer:
        outer.watch(xc)
        with tf.GradientTape() as inner:
            inner.watch(xc)
            y = fn(xc)
        d = inner.gradient(y, xc, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    d2 = outer.gradient(d, xc, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return tf.cast(d2, x.dtype)


_IN_A_GRAPH = " inside a tf.function"
_NO_F_PRIME = storage.second_order_refusal("a nestad activation", storage.STORED, _IN_A_GRAPH)
_EAGER_NO_X = (
    "a second-order gradient through a nestad activation was requested in eager mode, where "
    "nestad keeps only f'(x) and not x. Compute it inside a tf.function (where f''(x) is "
    "derived from x), or use the Keras activation."
)


def _link_to_input(x, d, second: Optional[Callable[[tf.Tensor], tf.Tensor]]):
    """Returns d, connected to x for higher-order autodiff (gradient f''(x); see module doc).

    The eager tape keeps whatever the chosen gradient closes over for as long as
    the tape lives, so only the graph-mode gradient refers to x; in a graph x is
    symbolic and costs nothing unless a second-order gradient is built.
    """
    error = _NO_F_PRIME if second is None else _EAGER_NO_X if tf.executing_eagerly() else None

    @tf.custom_gradient
    def link(x, d):  # pylint: disable=unused-argument
        def refuse(upstream):  # pylint: disable=unused-argument
            raise SecondOrderGradientError(error)

        def second_order(upstream):
            return upstream * second(x), None

        return tf.identity(d), refuse if error else second_order

    return link(x, d)


SECOND_ORDER_ZERO = "zero"
"""`second=` value for activations whose f' is piecewise constant (f'' = 0)."""


def with_saved_derivative(
    x: tf.Tensor,
    forward: Callable[[tf.Tensor], Tuple[tf.Tensor, tf.Tensor]],
    backward: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    second,
) -> tf.Tensor:
    """y = forward(x)[0] with a gradient that keeps only d = forward(x)[1].

    Args:
      x: floating-point input.
      forward: x -> (y, d); called on tf.stop_gradient(x). d is whatever the
        backward pass needs: f'(x), y, or packed codes.
      backward: (dy, d) -> dx.
      second: what a higher-order gradient through this call gets —
        a callable x -> f''(x) (d is f'(x) itself: correct, in a tf.function);
        SECOND_ORDER_ZERO (f' is piecewise constant, f'' = 0: nothing to link);
        None (d is not f'(x): higher-order gradients raise SecondOrderGradientError).
    """

    @tf.custom_gradient
    def fused(x):
        y, d = forward(tf.stop_gradient(x))
        if second is SECOND_ORDER_ZERO:
            def grad(dy):
                return backward(dy, d)
        elif d.dtype.is_floating:
            d = _link_to_input(x, d, second)

            def grad(dy):
                return backward(dy, d)
        else:
            # Integer codes are invisible to autodiff: a scalar linked to x stands
            # in for them, so that a higher-order gradient reaches the link and
            # raises instead of silently missing the f''(x) term.
            anchor = _link_to_input(x, tf.zeros([], x.dtype), None)

            def grad(dy):
                return _depends_on(backward(dy, d), anchor)

        return y, grad

    return fused(x)


@tf.custom_gradient
def _depends_on(value, anchor):
    """Identity on value; differentiating it sends a (zero) gradient to anchor."""

    def grad(upstream):
        return upstream, tf.zeros_like(anchor)

    return tf.identity(value), grad


def _tf_backward(dy, d):
    return dy * d


def _kernel_backward(dy, d):
    return _loader.load().module.fused_activation_grad(dy, d)


def _warn_uncompressed(name: str, derivative: str, why: str) -> None:
    """A lossy `derivative=` asked for where f' cannot be compressed: say so, not silently."""
    if derivative in ("exact", "full"):
        return
    warnings.warn(
        f"nestad_tf: derivative={derivative!r} is not applied to '{name}': {why}, which keeps "
        "f'(x) uncompressed in the compute dtype (only the fused kernels compress it).",
        RuntimeWarning,
        stacklevel=4,
    )


def apply_spec(x, spec: registry.ActivationSpec, params: Dict[str, Any],
               backend: Optional[str] = None, derivative: str = "exact",
               after_normalization: bool = False) -> tf.Tensor:
    """Applies a registered activation with bound parameters (see `activation`).

    after_normalization: x is the output of a normalization (BatchNormalization,
    ...); under XLA the backward pass then recomputes f'(x) in ops XLA fuses with
    the normalization and keeps nothing (see `_apply_kernel_recomputed`).
    """
    storage.check_mode(derivative)
    if spec.apply is not None:  # user activations (nestad_tf.register_activation)
        _warn_uncompressed(spec.name, derivative, "it is a forward_ad activation (pure-TF path)")
        return spec.apply(x, params, backend)
    if any(registry.is_tensor_param(v) for v in params.values()):
        # Tensor parameters get gradients through forward-mode AD of the reference.
        from .forward_ad import apply_with_tensor_params  # pylint: disable=g-import-not-at-top
        _warn_uncompressed(spec.name, derivative, "its parameters are tensors (pure-TF path)")
        return apply_with_tensor_params(x, spec, params, backend)
    x = _as_float_tensor(x, spec.name)
    chosen = resolve_backend(backend, has_kernel=spec.kernel is not None)

    def reference(t):
        return spec.reference(t, **params)

    def second(t):
        return second_derivative(reference, t)

    if chosen == "kernel":
        plan = storage.plan(spec, params, derivative, x.dtype)  # validates derivative= here too
        if after_normalization and _private_tf.in_xla_context():
            return _apply_kernel_recomputed(x, spec, params)
        return _apply_kernel(x, spec, params, plan, second)
    _warn_uncompressed(spec.name, derivative, "the pure-TF path runs here (backend='tf', "
                       "a visible GPU, no kernel library, or XLA without its lowering)")
    if spec.kernel is not None:
        spec.kernel_attrs(params)  # same parameter validation on both paths
    if _private_tf.in_xla_context():
        # Under XLA the pure-TF path is the reference itself: XLA fuses it with its
        # gradient and keeps what Keras' activation keeps. Forward-mode AD would make
        # XLA keep f'(x) on top (a Conv-BN-mish stack: 377 vs 310 MB of XLA temp).
        return _in_compute_dtype(reference, x)
    return with_saved_derivative(x, lambda t: forward_ad(reference, t), _tf_backward, second)


def _apply_kernel(x, spec, params, plan: storage.StoragePlan, second):
    """The fused-kernel path, keeping f' in the form `plan` says (see storage.py)."""
    lib = _loader.load().module
    kernel_name, kernel_params = spec.kernel_attrs(params)
    attrs = dict(activation=kernel_name, params=kernel_params)
    second = {"exact": second, "zero": SECOND_ORDER_ZERO,
              None: None}[plan.second_order(kernel_name)]
    if plan.form == "full":
        def forward(t):
            return lib.fused_activation(t, **attrs)

        return with_saved_derivative(x, forward, _kernel_backward, second)
    if plan.form == "output":
        def forward(t):
            y = lib.activation_forward(t, **attrs)
            return y, y

        def backward(dy, y):
            return lib.activation_grad_from_output(dy, y, **attrs)

        return with_saved_derivative(x, forward, backward, second)
    quantizer = plan.op_attrs()

    def forward(t):
        return lib.fused_activation_quantized(t, **attrs, **quantizer)

    def backward(dy, code):
        return lib.activation_grad_quantized(dy, code, **quantizer)

    return with_saved_derivative(x, forward, backward, second)


def _apply_kernel_recomputed(x, spec, params):
    """Under XLA, right after a normalization: y = f(x) from the fused kernel, and a
    backward pass that keeps nothing: TF autodiff of the reference on x.

    XLA keeps the normalization's input z for the normalization's own backward
    pass and recomputes x = normalize(z), and f'(x) with it, inside the backward
    fusion, so this form keeps no tensor for the activation, where any stored
    form keeps one (f') or a fraction of one (codes), and a custom call in the
    backward pass would make XLA keep x for its operand. Measured on
    EfficientNet-B0 with mish under XLA (BENCHMARKS.md): 914 MiB against 1148
    (f' kept), 1052 (4-bit codes) and 915 (tf.recompute_grad). Exact for every
    derivative= (f' is recomputed in the compute dtype), second-order
    gradients included.
    """
    lib = _loader.load().module
    kernel_name, kernel_params = spec.kernel_attrs(params)
    compute = _compute_dtype(x.dtype)

    @tf.custom_gradient
    def recomputed(x):
        y = lib.activation_forward(tf.stop_gradient(x), activation=kernel_name,
                                   params=kernel_params)

        def grad(dy):
            xc = tf.cast(x, compute)
            with tf.GradientTape() as tape:
                tape.watch(xc)
                yc = spec.reference(xc, **params)
            return tf.cast(tape.gradient(yc, xc, output_gradients=tf.cast(dy, compute)), x.dtype)

        return y, grad

    return recomputed(x)


def inference_graph() -> bool:
    """True while a tf.function is traced with no gradient tape recording (no f' needed)."""
    return not tf.executing_eagerly() and not _private_tf.gradient_tape_active()


def keras_apply(x, spec: registry.ActivationSpec, params: Dict[str, Any],
                backend: Optional[str] = None, derivative: str = "exact",
                after_normalization: bool = False) -> tf.Tensor:
    """`apply_spec` as nestad's Keras layers and activation objects use it.

    In an inference graph (a tf.function traced while no gradient tape records:
    `model.predict`, `model.evaluate`, the serving signature of `model.export`)
    nothing will ever ask for f'(x), so y = f(x) comes from the activation's
    pure-TF reference alone (float32 math for half types, like the kernels): no
    derivative, no custom op, and exported serving graphs hold only core
    TensorFlow ops. Everywhere else (eager calls, traces under a tape, an
    explicit `backend="kernel"`, user-registered activations) it is `apply_spec`.

    Example:
      y = ops.keras_apply(x, registry.get("gelu"), {"approximate": False})
    """
    if frameworks.active():  # Keras on torch or JAX: the same method on their tensors
        return frameworks.apply(x, spec, params, backend, derivative)
    explicit_kernel = backend == "kernel" or (backend is None and _backend_stack()[-1:] == ["kernel"])
    if spec.apply is None and not explicit_kernel and inference_graph():
        return _in_compute_dtype(lambda t: spec.reference(t, **params),
                                 _as_float_tensor(x, spec.name))
    return apply_spec(x, spec, params, backend, derivative, after_normalization)


def activation(x, name: str, *, backend: Optional[str] = None, derivative: str = "exact",
               **params) -> tf.Tensor:
    """Applies the activation `name` to `x`, keeping only f'(x) for the backward pass.

    Args:
      x: a float16, bfloat16, float32 or float64 tensor of the Keras backend's framework
        (TensorFlow, torch or JAX: see `nestad_tf.frameworks`), or a symbolic Keras
        tensor, in which case a `nestad_tf.layers.Activation` layer is applied.
      name: an activation from `nestad_tf.available_activations()` (or an alias such
        as "swish" or "hard_swish").
      backend: "auto" (fused kernel when usable, else pure TF), "kernel" or "tf";
        None uses the innermost `backend_scope`, else "auto".
      derivative: how f'(x) is kept for the backward pass: "exact" (the cheapest
        exact form), "full", "bfloat16", "uint8", "bits4" ... "bits1" (see
        `nestad_tf.storage`).
      **params: the activation's parameters, with the Keras names and defaults
        (e.g. `negative_slope=0.1` for "leaky_relu").

    Returns:
      f(x), with the dtype and shape of x.

    Example:
      y = nestad_tf.activation(x, "gelu", approximate=True)
    """
    spec = registry.get(name)
    bound = spec.bind(params)
    if _is_keras_tensor(x):
        from . import layers  # pylint: disable=g-import-not-at-top

        return layers.Activation(spec.name, backend=backend or "auto", derivative=derivative,
                                 **bound)(x)
    if frameworks.active():
        return frameworks.apply(x, spec, bound, backend, derivative)
    return apply_spec(x, spec, bound, backend, derivative)


def _is_keras_tensor(x) -> bool:
    import keras  # pylint: disable=g-import-not-at-top

    return isinstance(x, keras.KerasTensor)


def _register_gradients():
    """Gradients of the raw ops, for graphs that differentiate them directly."""

    @tf.RegisterGradient(_loader.op_type("FusedActivationGrad"))
    def _fused_activation_grad_grad(op, upstream):  # pylint: disable=unused-variable
        dy, d = op.inputs
        grad_op = _loader.load().module.fused_activation_grad
        return [grad_op(upstream, d), grad_op(upstream, dy)]

    def _second_order_error(op_type, detail):
        return SecondOrderGradientError(storage.second_order_refusal(op_type, detail, _IN_A_GRAPH))

    @tf.RegisterGradient(_loader.op_type("ActivationGradFromOutput"))
    def _grad_from_output_grad(op, upstream):  # pylint: disable=unused-variable
        name = op.get_attr("activation").decode()
        if storage.StoragePlan("output").second_order(name) is None:
            raise _second_order_error(op.type, f"'{name}' kept only its output y")
        dy, y = op.inputs
        lib = _loader.load().module
        params = op.get_attr("params")
        return [lib.activation_grad_from_output(upstream, y, activation=name,
                                                       params=params), None]

    @tf.RegisterGradient(_loader.op_type("ActivationGradQuantized"))
    def _grad_quantized_grad(op, upstream):  # pylint: disable=unused-variable
        kept = storage.StoragePlan("quantized", format=op.get_attr("format").decode())
        if kept.second_order("") is None:  # the codes' format alone decides
            raise _second_order_error(op.type, "f'(x) was kept compressed")
        _, code = op.inputs
        attrs = {k: op.get_attr(k) for k in ("format", "bits", "breakpoints", "levels", "range")}
        attrs["format"] = attrs["format"].decode()
        return [_loader.load().module.activation_grad_quantized(upstream, code, **attrs),
                None]

    @tf.RegisterGradient(_loader.op_type("FusedActivation"))
    def _fused_activation_grad(op, dy, dd):  # pylint: disable=unused-variable
        if dd is not None:
            raise SecondOrderGradientError(
                f"the raw {op.type} op cannot differentiate its derivative output; "
                "use nestad_tf.activation(), which links f'(x) to x for higher-order gradients"
            )
        return [_loader.load().module.fused_activation_grad(dy, op.outputs[1])]


_register_gradients()


def backend_info() -> Dict[str, Any]:
    """Which backend runs, and why.

    Returns a dict with `kernel_available`, `reason` (why the kernels are or are not
    used), `library`, `built_against` (TF version of the kernels), `tensorflow`,
    `default_backend` (what backend=None means here), `rules` (how "auto" chooses),
    `keras_backend` (the framework nestad runs on: it follows Keras) and, on torch or
    JAX, `framework_kernels` (whether the kernels run there, or why not) and
    `framework_cuda` (whether their CUDA kernels run on CUDA tensors here, or why not).
    """
    import keras  # pylint: disable=g-import-not-at-top

    library = _loader.load()
    stack = _backend_stack()
    framework = frameworks.active()
    extra = {}
    if framework is not None:
        if library.module is None:
            extra["framework_kernels"] = library.reason
        else:
            fw = frameworks.current()
            probe = fw.as_float([0.0], "probe")
            extra["framework_kernels"] = fw.kernel_unavailable(probe, library) or "loaded"
        extra["framework_cuda"] = _loader.load_framework_cuda().reason
    return {**extra,
            "keras_backend": keras.backend.backend(),
        "kernel_available": library.module is not None,
        "reason": library.reason,
        "library": library.path,
        "built_against": library.built_against,
        "xla": library.xla_reason,
        "tensorflow": tf.__version__,
        "gpu_visible": _gpu_visible(),
        "default_backend": stack[-1] if stack else "auto",
        "rules": (
            "auto: the fused CPU kernel when it is loaded and no GPU is visible, also under "
            "XLA (jit_compile), where each op is an XLA custom call to the same CPU loops; "
            "otherwise the pure-TF forward-mode AD path. On Keras' torch / JAX backends: the "
            "same CPU loops for CPU tensors (C interface / jax.ffi custom calls), else "
            "forward-mode AD of the Keras definition (torch.func.jvp / jax.jvp); "
            "backend='kernel' runs the CUDA kernels on CUDA where _nestad_cuda.so was built "
            "and finds a device (not yet verified on a GPU, so not chosen by auto)"
        ),
    }
