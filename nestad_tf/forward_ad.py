"""User-defined activations: f'(x) derived by forward-mode AD, only f'(x) kept.

Write an element-wise activation as ordinary TensorFlow code, decorate it, and
train with it:

    @nestad_tf.register_activation("snake")
    def snake(x, a=1.0):
        return x + tf.sin(a * x) ** 2 / a

    keras.layers.Dense(256, activation=snake)           # or nestad_tf.layers.Activation("snake")

One forward computation pushes a unit tangent through `fn` (forward-mode AD,
nested inside the ordinary reverse-mode training tape), giving y = fn(x) and
d = fn'(x) together. Only d is kept for the backward pass (dx = dy * d): not x,
not the intermediates of `fn` (see `nestad_tf.ops.with_saved_derivative`). The
Jacobian-vector product is taken by transposing fn's VJP as a whole
(`nestad_tf.ops.jvps`), the method `tf.autodiff.ForwardAccumulator` applies op
by op: done op by op it gives every constant operand (0.5 in 0.5 * x) a zero
tangent, which TensorFlow folds into an x-sized constant kept by the traced
step.

Parameters. Python numbers (and numpy arrays) are constants: folded into the
function, nothing extra is kept. Tensor parameters (`tf.Tensor`, trainable
`tf.Variable` / `keras.Variable`, e.g. a learnable beta per channel) are
differentiable: each gets its own forward-mode tangent, and the backward pass
keeps d plus, per such parameter, one tensor of x's shape, dfn/dtheta at every
element (reduced over the broadcast axes only in the backward pass, where dy is
known: d(loss)/dtheta = sum over broadcast axes of dy * dfn/dtheta). That is the
minimum: dy is not known when the tensors are computed. Non-trainable variables
are constants.

Element-wise check. Before the first use at a given (dtype, parameter shape,
constants) the function is evaluated eagerly (at trace time inside
`tf.function`/XLA) on a small random probe and rejected with
`NotElementwiseError` when:
  * its output shape differs from its input shape (reductions, shape changes);
  * changing a random half of the probe elements changes any other output
    element (softmax, normalisations, cumsum, sorting, rolls; also mixing hidden
    behind `tf.stop_gradient`, and non-deterministic functions);
  * the Jacobian is not diagonal: the JVP along a random tangent v differs from
    fn'(x) * v (mixing visible only in the derivatives, e.g. a custom gradient);
  * its forward-mode derivative differs from its reverse-mode gradient: TF's
    forward mode differentiates the primal ops and ignores `tf.custom_gradient`,
    so a function relying on a custom gradient cannot be reproduced;
  * likewise for each tensor parameter, whose elements must each act on the
    elements they broadcast to.
It also rejects functions that read trainable variables themselves (their
gradient would be lost): pass them as parameters. The probe runs in a fresh
thread, eagerly, so it sees none of the caller's graph or tapes.
The check cannot catch mixing that happens only outside the probe (values in
[-2.5, 2.5], parameter values in [0.5, 1.5], every free axis reduced to 5
elements: e.g. `tf.where(x > 100, tf.nn.softmax(x), x)`, or a `tf.roll` by a
multiple of 5), nor functions whose Python code branches on the input values in
eager mode. `check=False` skips it (random activations, or when the cost of the
probe matters in eager loops).

Higher-order gradients (gradient penalties, Hessian-vector products): inside
`tf.function`, d and the parameter partials are linked back to x and the
parameters, so nested tapes get fn''(x) (and the mixed second derivatives) from
TF autodiff of `fn`. In eager mode that link would keep x alive for every call,
so a second-order gradient raises `nestad_tf.SecondOrderGradientError` instead
of silently returning zero.
"""

import concurrent.futures
import functools
import inspect
import warnings
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from . import activations, frameworks, ops, registry

_PROBE_SIDE = 5
"""Size of every free axis of the probe input (axes no parameter broadcasts along)."""

_PROBE_SEED = 20240611
_PROBE_RTOL = {tf.float32: 1e-4, tf.float64: 1e-10}
_FULL_PROBE_LIMIT = 1 << 20
"""Largest probe (elements) tried when the function only runs on the full input shape."""

ParamsLike = Union[Mapping[str, Any], Sequence[Tuple[str, Any]], None]


class NotElementwiseError(ValueError):
    """The function given to `nestad_tf.forward_ad` is not element-wise (see module doc)."""

    # Exception's own constructor lets AutoGraph re-raise this type (with the
    # user's traceback) when the check fails while tracing a tf.function,
    # instead of wrapping it in a StagingError.
    __init__ = Exception.__init__


class _ReadsVariablesError(ValueError):
    """fn reads a trainable variable itself, whose gradient would be lost."""

    __init__ = Exception.__init__  # see NotElementwiseError


class ForwardADActivation:
    """An element-wise TF function made a nestad activation (see `forward_ad`).

    Calling it computes y = fn(x) and fn'(x) by forward-mode AD in one pass and
    keeps only fn'(x) (plus dfn/dtheta per tensor parameter) for the backward pass.

    Attributes:
      fn: the user's function `fn(x, **params)`.
      name: `registered_name` once registered, else the function's name.
      spec: the `registry.ActivationSpec` describing it (kernel=None).
      check: whether the element-wise check runs.
    """

    def __init__(self, fn: Callable[..., Any], *, params: ParamsLike = None,
                 formula: Optional[str] = None, check: bool = True):
        if isinstance(fn, (ForwardADActivation, activations.ActivationFunction)):
            raise TypeError(f"{fn!r} is already a nestad activation")
        if not callable(fn):
            raise TypeError(f"forward_ad needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.check = check
        self.registered_name: Optional[str] = None
        self._checked = set()
        functools.update_wrapper(self, fn)
        name = getattr(fn, "__name__", type(fn).__name__)
        self.spec = registry.ActivationSpec(
            name=name,
            formula=formula or _first_doc_line(fn) or f"user-defined {name}(x)",
            reference=fn,
            params=_param_table(fn, params),
            kernel=None,
            apply=self.apply,
        )

    @property
    def name(self) -> str:
        return self.registered_name or self.spec.name

    def __call__(self, x, backend: Optional[str] = None, **params) -> tf.Tensor:
        """fn(x, **params); keeps only fn'(x) (and dfn/dparam per tensor parameter)."""
        if ops._is_keras_tensor(x):  # pylint: disable=protected-access
            if self.registered_name is None:
                raise TypeError(
                    f"the forward_ad activation '{self.name}' is not registered, so it cannot be "
                    "a layer of a functional Keras model; pass it as `activation=` of a layer, "
                    f"or register it: nestad_tf.register_activation('{self.name}', fn)"
                )
            return ops.activation(x, self.registered_name, backend=backend, **params)
        return self.apply(x, self.spec.bind(params), backend)

    def apply(self, x, params: Dict[str, Any], backend: Optional[str] = None) -> tf.Tensor:
        """Applies fn with already bound parameters (the `ActivationSpec.apply` hook)."""
        if frameworks.active():  # Keras on torch or JAX
            return frameworks.apply_forward_ad(self, x, params, backend)
        ops.resolve_backend(backend, has_kernel=False)  # validates the name; "kernel" raises
        x = ops._as_float_tensor(x, self.name)  # pylint: disable=protected-access
        constants, tensors, differentiable = _split_params(params)
        tensors = {k: tf.cast(v, x.dtype) for k, v in tensors.items()}
        differentiable = {k: tf.cast(v, x.dtype) for k, v in differentiable.items()}
        for param, value in {**tensors, **differentiable}.items():
            _check_broadcast(self.name, param, value, x)
        if self.check:
            self._check_once(x, constants, {**tensors, **differentiable})
        bound = functools.partial(self.fn, **constants, **tensors)
        if ops.inference_graph():  # no tape records: nothing will ask for f' (see ops.keras_apply)
            compute = ops._compute_dtype(x.dtype)  # pylint: disable=protected-access
            values = {k: tf.cast(v, compute) for k, v in differentiable.items()}
            return tf.cast(bound(tf.cast(x, compute), **values), x.dtype)
        if not differentiable:
            return ops.with_saved_derivative(
                x,
                lambda t: _forward(self.name, bound, t, {}),
                ops._tf_backward,  # pylint: disable=protected-access
                lambda t: ops.second_derivative(bound, t),
            )
        return _with_saved_partials(self.name, bound, x, differentiable)

    def get_config(self):
        if self.registered_name is None:
            raise TypeError(
                f"the forward_ad activation '{self.name}' is not registered, so Keras cannot save "
                f"it by name. Register it where it is defined: "
                f"nestad_tf.register_activation('{self.name}', fn), and import that module "
                "before loading the model."
            )
        return activations.ActivationFunction(self.registered_name).get_config()

    @tf.autograph.experimental.do_not_convert
    def _check_once(self, x, constants, tensors):
        param_shapes = {k: tuple(v.shape.as_list()) if v.shape.rank is not None else None
                        for k, v in tensors.items()}
        shape = _probe_shape(x.shape, param_shapes.values())
        key = (x.dtype.name, shape, _freeze(constants), tuple(sorted(param_shapes.items())))
        if key in self._checked:
            return
        # A fresh thread is eager and sees none of the caller's graph, tapes or
        # accumulators (tf.init_scope would pause the accumulators the check needs).
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(check_elementwise, self.fn, x.dtype, shape, constants, param_shapes,
                        name=self.name, full_shape=x.shape).result()
        self._checked.add(key)

    def __repr__(self):
        return f"nestad_tf.forward_ad({self.name})"


def forward_ad(fn: Optional[Callable[..., Any]] = None, *, params: ParamsLike = None,
               formula: Optional[str] = None, check: bool = True):
    """Makes an element-wise TF function an activation that keeps only f'(x).

    y = fn(x) and d = fn'(x) come from one forward computation with a unit
    tangent (forward-mode AD, `nestad_tf.ops.jvps`); the backward pass is dx = dy * d.
    Works eagerly, in `tf.function` and under XLA (`jit_compile=True`). See the
    module docstring for tensor (trainable) parameters, the element-wise check
    and higher-order gradients.

    Args:
      fn: `fn(x, **params) -> y`, built from element-wise TF ops; keyword
        parameters with defaults become the activation's parameters.
      params: the parameters with defaults, when they cannot be read from the
        signature: a dict or (name, default) pairs.
      formula: y = f(x) in words, for docs (default: first docstring line).
      check: run the element-wise check before the first use.

    Returns:
      A `ForwardADActivation`: callable as `act(x, **params)`, usable as
      `activation=` of Keras layers. To save models that use it, or to use it by
      name, register it with `register_activation`.

    Example:
      @nestad_tf.forward_ad
      def swish_beta(x, beta=1.0):
          return x * tf.sigmoid(beta * x)

      y = swish_beta(x, beta=1.5)
      y = swish_beta(x, beta=beta_variable)   # gradient w.r.t. beta_variable too
    """
    if fn is None:
        return lambda f: forward_ad(f, params=params, formula=formula, check=check)
    if isinstance(fn, ForwardADActivation):
        return fn
    return ForwardADActivation(fn, params=params, formula=formula, check=check)


@functools.lru_cache(maxsize=None)
def _builtin_with_tensor_params(name: str) -> ForwardADActivation:
    spec = registry.get(name)
    # Built-ins are element-wise by construction: no probe.
    activation = ForwardADActivation(spec.tensor_reference or spec.reference, params=spec.params,
                                     formula=spec.formula, check=False)
    activation.registered_name = spec.name
    return activation


def apply_with_tensor_params(x, spec: registry.ActivationSpec, params: Dict[str, Any],
                             backend: Optional[str] = None) -> tf.Tensor:
    """A built-in activation whose parameters include tensors (variables, per-channel values).

    The fused kernels take parameters as numbers (op attributes), so this runs
    forward-mode AD of the activation's reference instead: only f'(x) is kept,
    plus df/dtheta per differentiable parameter, and gradients reach the
    parameters (see `nestad_tf.forward_ad`).
    """
    switches = [k for k in spec.switch_params if registry.is_tensor_param(params[k])]
    if switches:
        raise TypeError(f"activation '{spec.name}': {', '.join(switches)} chooses the formula and "
                        "must be a Python bool, not a tensor")
    if ops.requested_backend(backend) == "kernel":
        tensors = [k for k in spec.param_names if registry.is_tensor_param(params[k])]
        raise ValueError(
            f"activation '{spec.name}': the fused kernel takes its parameters as Python numbers, "
            f"but {', '.join(tensors)} is a tensor; tensor parameters run the forward-mode AD "
            "path: use backend='auto' or 'tf'"
        )
    return _builtin_with_tensor_params(spec.name).apply(x, params, backend)


def register_activation(name: str, fn: Optional[Callable[..., Any]] = None, *,
                        params: ParamsLike = None, formula: Optional[str] = None,
                        aliases: Iterable[str] = (), check: bool = True,
                        overwrite: bool = False):
    """Registers an element-wise TF function as the nestad activation `name`.

    After registration `nestad_tf.get(name, **params)`,
    `nestad_tf.activation(x, name)`, `nestad_tf.layers.Activation(name)` and
    `nestad_tf.ParametricActivation(name, ...)` work, and Keras models using it
    save and load as `.keras` files (also with `safe_mode=True`) wherever the
    module that registers it has been imported. It runs through `forward_ad`:
    only f'(x) is kept for the backward pass.

    Args:
      name: the activation's name (lower case; must not be taken).
      fn: `fn(x, **params)` or a `ForwardADActivation`; omit it to use
        `register_activation(name, ...)` as a decorator.
      params: parameters with defaults when not read from `fn`'s signature.
        Every parameter needs a default.
      formula: y = f(x) in words, for docs.
      aliases: other names for it.
      check: run the element-wise check (see `forward_ad`).
      overwrite: replace an activation already registered under `name`
        (e.g. when a notebook cell is run again).

    Returns:
      `nestad_tf.get(name)`: an `ActivationFunction` with the default
      parameters, serializable by name.

    Example:
      @nestad_tf.register_activation("snake")
      def snake(x, a=1.0):
          return x + tf.sin(a * x) ** 2 / a

      keras.layers.Dense(64, activation=snake)
      nestad_tf.layers.Activation("snake", a=2.0)
    """
    if fn is None:
        return lambda f: register_activation(name, f, params=params, formula=formula,
                                             aliases=aliases, check=check, overwrite=overwrite)
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"activation name must be a non-empty lower-case string, got {name!r}")
    if isinstance(fn, ForwardADActivation):
        if params is not None or formula is not None:
            raise TypeError("give params/formula to forward_ad(), not to register_activation()")
        act = fn
    else:
        act = ForwardADActivation(fn, params=params, formula=formula, check=check)
    missing = [p for p, default in act.spec.params if default is registry.REQUIRED]
    if missing:
        raise ValueError(
            f"activation '{name}': parameter(s) {missing} need a default value, so that the "
            "activation can be created (and loaded) by name"
        )
    spec = registry.register(
        registry.ActivationSpec(
            name=name,
            formula=act.spec.formula,
            reference=act.fn,
            params=act.spec.params,
            kernel=None,
            aliases=tuple(aliases),
            apply=act.apply,
        ),
        overwrite=overwrite,
    )
    act.registered_name = spec.name
    return activations.ActivationFunction(spec.name)


def check_elementwise(fn: Callable[..., Any], dtype, shape: Sequence[int],
                      constants: Optional[Dict[str, Any]] = None,
                      param_shapes: Optional[Dict[str, Optional[Tuple[int, ...]]]] = None, *,
                      name: Optional[str] = None, full_shape=None) -> None:
    """Raises `NotElementwiseError` unless `fn` acts element-wise on a random probe.

    Must run eagerly with no tape or accumulator paused (`tf.init_scope()`
    pauses them; `ForwardADActivation` runs it in a fresh thread). What it
    checks and cannot check: see the module docstring. When `fn` cannot run on
    any probe, the check is skipped with a warning.

    Args:
      fn: `fn(x, **constants, **tensor_params)`.
      dtype: the input dtype (half types are probed in float32).
      shape: the probe shape (see `_probe_shape`).
      constants: parameters passed as they are.
      param_shapes: tensor parameters by name with their shapes; probed with
        random values in [0.5, 1.5].
      name: for messages.
      full_shape: the real input shape, tried when `fn` fails on the small probe
        (e.g. it closes over a tensor of the full channel count).
    """
    constants = constants or {}
    param_shapes = param_shapes or {}
    name = name or getattr(fn, "__name__", "fn")
    try:
        _probe(fn, dtype, tuple(shape), constants, param_shapes, name)
    except NotElementwiseError:
        raise
    except _ReadsVariablesError:
        raise
    except Exception as error:  # pylint: disable=broad-except
        full = _full_probe_shape(full_shape)
        if full is not None and full != tuple(shape):
            try:
                _probe(fn, dtype, full, constants, param_shapes, name)
                return
            except (NotElementwiseError, _ReadsVariablesError):
                raise
            except Exception:  # pylint: disable=broad-except
                pass
        warnings.warn(
            f"nestad_tf.forward_ad: the element-wise check of '{name}' was skipped: the function "
            f"failed on a random probe of shape {tuple(shape)} ({type(error).__name__}: "
            f"{error}). Pass check=False to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )


# --- forward computation and gradients ---


def _forward(name, fn, x, thetas: Dict[str, tf.Tensor]):
    """(y, d, dfn/dtheta...) of fn at x; in graphs, as one function call TF does not inline.

    Inlined, the JVP graph of every layer is scheduled together with the rest
    of the model by Grappler and the executor, which measured 1.5-4.5 extra
    activation-sized tensors per layer kept alive, varying between identical
    traces. As one call, the intermediates of fn and of its tangents are freed
    when the call returns: only y and the derivatives leave it. XLA still
    compiles through the call (jit_compile=True).
    """
    if tf.executing_eagerly():
        return _forward_pass(name, fn, x, thetas)
    names = list(thetas)
    call = tf.function(
        lambda x, *values: _forward_pass(name, fn, x, dict(zip(names, values))),
        autograph=False,
        experimental_attributes={"_noinline": True},
    )
    return call(x, *thetas.values())


def _forward_pass(name, fn, x, thetas: Dict[str, tf.Tensor]):
    """(y, d, dfn/dtheta...) by forward-mode AD (`ops.forward_ad`), checking y's shape."""
    names = list(thetas)

    def call(t, *values):
        y = tf.convert_to_tensor(fn(t, **dict(zip(names, values))))
        _check_output(name, y, t)
        return y

    return ops.forward_ad(call, x, list(thetas.values()))


def _with_saved_partials(name, fn, x, thetas: Dict[str, tf.Tensor]) -> tf.Tensor:
    """Like ops.with_saved_derivative, also differentiating tensor parameters.

    Keeps d = dfn/dx and one x-shaped dfn/dtheta per parameter.
    """
    names = list(thetas)

    def derivatives(x, values):
        return _forward(name, fn, x, dict(zip(names, values)))[1:]

    @tf.custom_gradient
    def fused(x, *values):
        y, *kept = _forward(name, fn, tf.stop_gradient(x),
                            {k: tf.stop_gradient(v) for k, v in zip(names, values)})
        kept = _link_to_inputs(x, values, kept, derivatives)
        d, partials = kept[0], kept[1:]

        def grad(dy):
            return (dy * d,) + tuple(_sum_to_shape(dy * p, v) for p, v in zip(partials, values))

        return y, grad

    return fused(x, *thetas.values())


def _link_to_inputs(x, values, kept, derivatives):
    """`kept` (d and partials), connected to x and the parameters for higher-order autodiff.

    The generalisation of ops._link_to_input: the gradient of the link recomputes
    the derivatives from (x, params) under a tape (graph mode only).
    """
    eager = tf.executing_eagerly()
    count = len(values)

    @tf.custom_gradient
    def link(*inputs):
        outputs = [tf.identity(t) for t in inputs[1 + count:]]
        if eager:
            def grad(*upstream):  # closes over nothing: x stays free in eager mode
                raise ops.SecondOrderGradientError(
                    "a second-order gradient through a nestad forward_ad activation was "
                    "requested in eager mode, where nestad keeps only the derivatives and not x "
                    "or the parameters. Compute it inside a tf.function (where they are "
                    "recomputed from x), or use the plain TF function."
                )
        else:
            def grad(*upstream):
                x_in, params_in = inputs[0], list(inputs[1:1 + count])
                with tf.GradientTape() as tape:
                    tape.watch([x_in] + params_in)
                    recomputed = derivatives(x_in, params_in)
                    total = tf.add_n([tf.reduce_sum(u * r) for u, r in zip(upstream, recomputed)
                                      if u is not None] or [tf.zeros((), x_in.dtype)])
                sources = tape.gradient(total, [x_in] + params_in,
                                        unconnected_gradients=tf.UnconnectedGradients.ZERO)
                return tuple(sources) + (None,) * len(outputs)

        return outputs, grad

    return link(x, *values, *kept)


def _sum_to_shape(t, like):
    """Sums t over the axes along which `like` was broadcast to t's shape."""
    _, axes = tf.raw_ops.BroadcastGradientArgs(s0=tf.shape(t), s1=tf.shape(like))
    return tf.reshape(tf.reduce_sum(t, axes), tf.shape(like))


# --- parameters ---


def _param_table(fn, params: ParamsLike) -> Tuple[Tuple[str, Any], ...]:
    if params is not None:
        items = params.items() if isinstance(params, Mapping) else params
        return tuple((str(k), v) for k, v in items)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return ()
    arguments = list(signature.parameters.values())[1:]  # the first one is x
    table = []
    for argument in arguments:
        if argument.kind in (argument.VAR_POSITIONAL, argument.VAR_KEYWORD):
            continue
        default = registry.REQUIRED if argument.default is argument.empty else argument.default
        table.append((argument.name, default))
    return tuple(table)


def _is_tensor(value) -> bool:
    return isinstance(value, (tf.Tensor, tf.Variable, keras.Variable))


def _split_params(params: Dict[str, Any]):
    """(constants, non-differentiable tensors, differentiable tensors)."""
    constants, tensors, differentiable = {}, {}, {}
    for key, value in params.items():
        if not _is_tensor(value):
            constants[key] = value
        elif isinstance(value, (tf.Variable, keras.Variable)) and not value.trainable:
            tensors[key] = tf.convert_to_tensor(value)
        else:
            differentiable[key] = tf.convert_to_tensor(value)
    return constants, tensors, differentiable


def _check_broadcast(name, param, value, x):
    if value.shape.rank is None or x.shape.rank is None:
        return
    try:
        merged = tf.broadcast_static_shape(x.shape, value.shape)
    except ValueError:
        merged = None
    if merged is None or merged.rank != x.shape.rank or not merged.is_compatible_with(x.shape):
        raise ValueError(
            f"activation '{name}': parameter '{param}' of shape {value.shape} must broadcast to "
            f"the input shape {x.shape} without changing it (e.g. a scalar, or one value per "
            "channel)"
        )


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.ndarray):
        return ("ndarray", value.shape, value.dtype.str, value.tobytes())
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def _first_doc_line(fn) -> Optional[str]:
    doc = inspect.getdoc(fn)
    return doc.strip().splitlines()[0] if doc else None


# --- the element-wise check ---


def _probe_shape(x_shape: tf.TensorShape, param_shapes: Iterable[Optional[Tuple]]) -> Tuple[int, ...]:
    """x's shape with every axis no parameter varies along reduced to _PROBE_SIDE."""
    param_shapes = [s for s in param_shapes if s is not None]
    if x_shape.rank is None:
        dims = [None] * max([len(s) for s in param_shapes] + [2])
    else:
        dims = list(x_shape.as_list())
    needed = {}  # axis counted from the right -> size a parameter has there
    for shape in param_shapes:
        for axis, size in enumerate(reversed(shape)):
            if size not in (None, 1):
                needed[axis] = size
    probe = []
    for axis, size in enumerate(reversed(dims)):
        if axis in needed:
            probe.append(needed[axis])
        elif size is None:
            probe.append(_PROBE_SIDE)
        else:
            probe.append(min(size, _PROBE_SIDE))
    return tuple(reversed(probe))


def _full_probe_shape(full_shape) -> Optional[Tuple[int, ...]]:
    if full_shape is None or tf.TensorShape(full_shape).rank is None:
        return None
    dims = tuple(2 if d is None else d for d in tf.TensorShape(full_shape).as_list())
    return dims if int(np.prod(dims)) <= _FULL_PROBE_LIMIT else None


def _check_output(name, y, x):
    if not y.dtype.is_floating:
        raise NotElementwiseError(
            f"activation '{name}' returned a {y.dtype.name} tensor; it must return floats"
        )
    same = (y.shape.rank == x.shape.rank and y.shape.is_compatible_with(x.shape))
    if x.shape.rank is not None and not same:
        raise NotElementwiseError(
            f"activation '{name}' is not element-wise: its output shape {y.shape} differs from "
            f"its input shape {x.shape}. An activation maps every element to one element "
            "(no reductions, reshapes or broadcasting to a bigger shape)."
        )


def _probe(fn, dtype, shape, constants, param_shapes, name):
    compute = ops._compute_dtype(tf.as_dtype(dtype))  # pylint: disable=protected-access
    np_dtype = compute.as_numpy_dtype
    rng = np.random.default_rng(_PROBE_SEED)
    x = tf.constant(rng.uniform(-2.5, 2.5, shape).astype(np_dtype))
    thetas = {}
    for key, theta_shape in param_shapes.items():
        theta_shape = tuple(1 if d is None else d for d in (theta_shape or ()))
        thetas[key] = tf.constant(rng.uniform(0.5, 1.5, theta_shape).astype(np_dtype))

    def call(t, th):
        return tf.convert_to_tensor(fn(t, **constants, **th))

    with tf.GradientTape() as tape:
        y = call(x, thetas)
    variables = [v.name for v in tape.watched_variables() if v.trainable]
    if variables:
        raise _ReadsVariablesError(
            f"activation '{name}' reads the trainable variable(s) {variables} itself; its gradient "
            "would be lost, since nestad differentiates only x and the declared parameters. "
            "Declare it as a parameter (def fn(x, beta=1.0)) and pass the variable "
            "(act(x, beta=variable)), or use nestad_tf.ParametricActivation."
        )
    _check_output(name, y, x)

    if x.shape.num_elements() > 1:
        changed = half_changed(rng, shape)
        y_changed = call(tf.where(changed, x + 0.75, x), thetas)
        check_unchanged(name, shape, changed, y.numpy(), y_changed.numpy())

    tolerance = _PROBE_RTOL[compute]
    tangent = tf.constant(rng.normal(size=shape).astype(np_dtype))
    d = _jvp(lambda t: call(t, thetas), x, tf.ones_like(x))
    jv = _jvp(lambda t: call(t, thetas), x, tangent)
    if not _close(jv, d * tangent, tolerance):
        raise NotElementwiseError(
            f"activation '{name}' is not element-wise: on a probe of shape {tuple(shape)} its "
            f"Jacobian is not diagonal (the derivative along a random direction v differs from "
            f"f'(x) * v). {MIXING_HINT}"
        )
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = call(x, thetas)
    reverse = tape.gradient(y, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    if not _close(reverse, d, tolerance):
        raise NotElementwiseError(
            f"activation '{name}': its forward-mode derivative differs from its reverse-mode "
            f"gradient on a probe of shape {tuple(shape)}. Either it is not element-wise (the "
            "Jacobian is not diagonal), or it uses tf.custom_gradient: TensorFlow's forward-mode "
            "AD differentiates the primal ops and ignores custom gradients, so nestad cannot "
            "reproduce them. Write the function without tf.custom_gradient."
        )
    for key, theta in thetas.items():
        def along(value, key=key):
            return call(x, dict(thetas, **{key: value}))

        direction = tf.constant(rng.normal(size=theta.shape).astype(np_dtype))
        partial = _jvp(along, theta, tf.ones_like(theta))
        jv = _jvp(along, theta, direction)
        if not _close(jv, partial * direction, tolerance):
            raise NotElementwiseError(
                f"activation '{name}' is not element-wise in its parameter '{key}': each "
                f"element of '{key}' must act only on the input elements it broadcasts to "
                "(no reductions of the parameter)."
            )


MIXING_HINT = (
    "nestad keeps one derivative per element, which needs every output element to depend "
    "only on the input element at the same position (softmax, normalisations, reductions, "
    "cumsum, sort or roll mix elements)."
)


def half_changed(rng, shape) -> np.ndarray:
    """A random half of the probe's elements (the first one always, the last one never)."""
    changed = rng.random(shape) < 0.5
    changed.flat[0], changed.flat[-1] = True, False
    return changed


def check_unchanged(name, shape, changed, y, y_changed) -> None:
    """NotElementwiseError if an output whose input did not change, changed (the probe
    moved the inputs where `changed`, adding 0.75)."""
    moved = np.argwhere(~changed & ~_same_values(y, y_changed))
    if moved.size:
        raise NotElementwiseError(
            f"activation '{name}' is not element-wise: changing some input elements of a "
            f"probe of shape {tuple(shape)} changed output element "
            f"{tuple(int(i) for i in moved[0])}, whose input did not change. {MIXING_HINT} "
            "(A function with random ops also fails this check: use check=False.)"
        )


def _jvp(fn, primal, tangent):
    with tf.autodiff.ForwardAccumulator(primal, tangent) as accumulator:
        y = fn(primal)
    return accumulator.jvp(y, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _same_values(a, b):
    return (a == b) | (np.isnan(a) & np.isnan(b))


def _close(a, b, rtol):
    a, b = a.numpy(), b.numpy()
    both_nan = np.isnan(a) & np.isnan(b)
    finite = np.isfinite(a) & np.isfinite(b)
    scale = np.max(np.abs(np.where(finite, b, 0)), initial=0.0)
    ok = (a == b) | both_nan | (finite & (np.abs(a - b) <= rtol * (np.abs(a) + np.abs(b) + scale)))
    return bool(np.all(ok))


# --- a layer for activations with trainable parameters ---


def _check_trainable(spec: registry.ActivationSpec, params: Dict[str, Any], param: str) -> None:
    """ValueError unless gradient descent can train `param` of `spec`'s activation.

    Traces (never runs) TF autodiff of the definition with `param` a scalar
    tensor, in a graph without AutoGraph, as the layer will call it. Two
    definitions cannot train: one that branches on the parameter's value in
    Python (`if alpha == 1.0`: no truth value in a graph), and one where the
    parameter only enters comparisons (hard_shrink's threshold: f is piecewise
    constant in it, its derivative is zero wherever it exists). A definition
    that fails on the probe for another reason is left to fail at its first call.
    """
    reference = spec.tensor_reference or spec.reference
    constants = {k: v for k, v in params.items() if k != param}

    def gradient(x, value):
        with tf.GradientTape() as tape:
            tape.watch(value)
            y = reference(x, **constants, **{param: value})
        return tape.gradient(y, value)

    probe = tf.function(gradient, autograph=False)
    try:
        traced = probe.get_concrete_function(tf.TensorSpec([5], tf.float32),
                                             tf.TensorSpec([], tf.float32))
    except TypeError as error:  # includes OperatorNotAllowedInGraphError
        raise ValueError(
            f"parameter '{param}' of '{spec.name}' cannot be trainable: the definition of "
            f"'{spec.name}' uses its value in Python (a branch or a conversion), which a tensor "
            f"parameter does not have ({type(error).__name__}: "
            f"{str(error).splitlines()[0].split('. ')[0]})"
        ) from error
    except (ValueError, tf.errors.OpError):
        return
    if traced.structured_outputs is None:
        raise ValueError(
            f"parameter '{param}' of '{spec.name}' cannot be trainable: '{spec.name}' depends on "
            f"it only through comparisons (f is piecewise constant in {param}), so its gradient "
            "is zero wherever it exists and training would never change it"
        )


@keras.saving.register_keras_serializable(package="nestad_tf")
class ParametricActivation(keras.layers.Layer):
    """An activation whose parameters (some of them) are trainable weights.

    y = f(x; theta) with theta one value per channel (along `axis`) or one
    scalar (`axis=None`), e.g. Swish with a learnable beta, or PReLU-like
    slopes. f'(x) and df/dtheta come from forward-mode AD; the backward pass
    keeps f'(x) and one x-shaped df/dtheta per trainable parameter (see
    `nestad_tf.forward_ad`).

    Args:
      activation: a registered activation name (`register_activation`).
      trainable_params: names of the parameters that become weights; their
        initial values are the given or default parameter values. A parameter
        that cannot train is refused here, naming it and why: a formula switch
        (gelu's approximate), one that enters only comparisons (hard_shrink's
        threshold: zero gradient), or one the definition uses in Python.
      axis: the channel axis the weights vary along, or None for scalars.
      backend: "auto" or "tf" (both run forward-mode AD: the fused kernels take
        numbers); None (default): the innermost `nestad_tf.backend_scope`, else "auto".
      **kwargs: the other parameters (constants) and Keras layer arguments.

    Example:
      nestad_tf.register_activation("swish_beta", lambda x, beta=1.0: x * tf.sigmoid(beta * x))
      layer = nestad_tf.ParametricActivation("swish_beta", trainable_params=["beta"])
    """

    def __init__(self, activation: str, trainable_params: Union[str, Sequence[str]],
                 axis: Optional[int] = -1, backend: Optional[str] = None, **kwargs):
        spec = registry.get(activation)
        params = {k: kwargs.pop(k) for k in list(kwargs) if k in spec.param_names}
        super().__init__(**kwargs)
        if backend is not None:
            ops._check_backend_name(backend)  # pylint: disable=protected-access
        if isinstance(trainable_params, str):
            trainable_params = [trainable_params]
        unknown = sorted(set(trainable_params) - set(spec.param_names))
        if unknown or not trainable_params:
            raise ValueError(
                f"trainable_params must name parameters of '{spec.name}' "
                f"({', '.join(spec.param_names) or 'none'}), got {list(trainable_params)}"
            )
        self.activation = spec.name
        self.trainable_params = tuple(trainable_params)
        self.axis = axis
        self.backend = backend
        self.params = spec.bind(params)
        for param in self.trainable_params:
            value = self.params[param]
            if param in spec.switch_params:
                why = "chooses the formula (a bool) and cannot be trained"
            elif not isinstance(value, (int, float)):
                why = f"(pass e.g. {param}=6.0)"
            else:
                continue
            raise ValueError(f"trainable parameters of '{spec.name}' need a number as initial "
                             f"value; {param}={value!r} {why}")
        for param in self.trainable_params:
            if frameworks.active():
                frameworks.check_trainable(spec, self.params, param)
            else:
                _check_trainable(spec, self.params, param)
        self._apply = spec.apply or functools.partial(apply_with_tensor_params, spec=spec)
        self.supports_masking = True

    def build(self, input_shape):
        shape = ()
        if self.axis is not None:
            channels = input_shape[self.axis]
            if channels is None:
                raise ValueError(f"axis {self.axis} of the input shape {input_shape} must be known")
            shape = (channels,)
        self.parameter_weights = {
            name: self.add_weight(
                name=name, shape=shape, trainable=True,
                initializer=keras.initializers.Constant(float(self.params[name])),
            )
            for name in self.trainable_params
        }

    def call(self, inputs):
        values = dict(self.params)
        rank = len(inputs.shape)
        for name, weight in self.parameter_weights.items():
            value = keras.ops.cast(weight, inputs.dtype)
            if self.axis is not None:
                axis = self.axis % rank
                value = keras.ops.reshape(value, [-1] + [1] * (rank - 1 - axis))
            values[name] = value
        return self._apply(inputs, params=values, backend=self.backend)

    def compute_output_shape(self, input_shape):
        return input_shape

    @classmethod
    def from_config(cls, config):
        registry.check_saved_params(registry.get(config.get("activation")), config,
                                    "nestad_tf.ParametricActivation")
        return super().from_config(config)

    def get_config(self):
        config = super().get_config()
        config.update({
            "activation": self.activation,
            "trainable_params": list(self.trainable_params),
            "axis": self.axis,
            "backend": self.backend,
            **self.params,
        })
        return config
