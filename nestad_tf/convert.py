"""Rewrite a Keras model so that its element-wise activations keep only f'(x).

    model = nestad_tf.convert(model, verbose=True)     # one line; weights carried over
    print(nestad_tf.memory_report(model))              # what each activation keeps, and why

`convert` replaces the activations of a Keras 3 model by nestad ones:
`keras.layers.Activation` / `ReLU` / `LeakyReLU` / `ELU` layers become
`nestad_tf.layers.Activation` layers of the same name, and the `activation`
of Dense, Conv*, DepthwiseConv, SeparableConv, EinsumDense and any other layer
holding one becomes a `nestad_tf.ActivationFunction`, in nested models too.
Outputs equal the original's within float rounding.

Which activations are worth replacing follows from one table, derived rather
than written down: `saved_for_backward` builds the gradient graph of an
activation (Keras' own, or nestad's) and lists the tensors its backward pass
reads. An activation is replaced by default only when nestad keeps fewer bytes
than Keras does. Keras' `relu` keeps only its output, which the next layer
keeps anyway, so nestad (which keeps f'(x)) would add memory; `tf.nn.silu`
keeps only x, the same size as f'(x). Composites such as `gelu`, `mish` or
`hard_silu` keep several tensors and are replaced. `include=` overrides the
rule for the activations it names.
"""

import dataclasses
import fnmatch
import functools
import math
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from . import activations as _activations
from . import layers as _layers
from . import _loader, frameworks, ops, registry, storage

_PROBE_ELEMENTS = 1001  # odd and large: packed f' codes (a few bits each) stay far above
_MIN_SAVED_ELEMENTS = 16  # the size of any shape, index or scalar tensor
_SHAPE_ONLY_OPS = frozenset(
    {"Shape", "ShapeN", "Size", "Rank", "ZerosLike", "OnesLike", "BroadcastGradientArgs"}
)
_IDENTITY_OPS = frozenset({"Identity", "IdentityN"})


# --- the one table: what a backward pass keeps, derived from the gradient graph ---


@dataclasses.dataclass(frozen=True)
class SavedTensors:
    """The tensors an activation's backward pass reads, per element of x.

    Attributes:
      tensors: what is kept, e.g. ("x",), ("y",) or ("x", "Tanh", "Sigmoid");
        "x" is the input, "y" the output, others name the op that made them.
      bytes_per_element: bytes kept per element of x, not counting y (the
        next layer keeps its input y for its own backward pass anyway); a
        fraction for f' packed into a few bits per element.
    """

    tensors: Tuple[str, ...]
    bytes_per_element: float

    @property
    def keeps_only_output(self) -> bool:
        return self.tensors == ("y",)


def _source(tensor):
    while tensor.op.type in _IDENTITY_OPS:
        index = tensor.value_index if tensor.op.type == "IdentityN" else 0
        tensor = tensor.op.inputs[index]
    return tensor


@functools.lru_cache(maxsize=None)
def _saved_for_backward_cached(name, params_items, dtype_name, implementation, backend,
                               derivative="exact", framework=None):
    spec = registry.get(name)
    params = dict(params_items)
    if framework is not None:  # Keras on torch / JAX: measured on that framework
        roles, size = frameworks.saved_for_backward(spec, params, dtype_name, implementation,
                                                    backend, derivative)
        return SavedTensors(roles, int(size) if float(size).is_integer() else size)
    dtype = tf.as_dtype(dtype_name)
    if implementation == "keras":
        def function(x):
            return spec.reference(x, **params)
    else:
        def function(x):
            return ops.apply_spec(x, spec, params, backend, derivative)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(dtype, [_PROBE_ELEMENTS])
        y = function(x)
        forward_ops = set(graph.get_operations())
        dy = tf.compat.v1.placeholder(dtype, [_PROBE_ELEMENTS])
        tf.gradients(y, x, grad_ys=dy)
        x_source, y_source = _source(x), _source(y)
        kept = {}
        for op in graph.get_operations():
            if op in forward_ops or op.type in _SHAPE_ONLY_OPS:
                continue
            for tensor in op.inputs:
                elements = tensor.shape.num_elements()
                if tensor.op in forward_ops and elements and elements >= _MIN_SAVED_ELEMENTS:
                    source = _source(tensor)
                    if source is x_source:
                        role = "x"
                    elif source is y_source:
                        role = "y"
                    elif source.op.type == _loader.op_type("FusedActivation") or implementation == "nestad":
                        role = "f'(x)"
                    else:
                        role = source.op.type
                    kept[source.ref()] = (role, elements * source.dtype.size / _PROBE_ELEMENTS)
    roles = sorted((role for role, _ in kept.values()), key=lambda r: (r not in ("x", "y"), r))
    size = sum(nbytes for role, nbytes in kept.values() if role != "y")
    size = int(size) if float(size).is_integer() else size
    return SavedTensors(tuple(roles), size)


def saved_for_backward(activation: str, params: Optional[Dict[str, Any]] = None,
                       dtype="float32", implementation: str = "keras",
                       backend: str = "auto", derivative: str = "exact") -> SavedTensors:
    """What the backward pass of an activation keeps: the one table convert() decides by.

    Derived, not written down: the activation is applied to a placeholder in a
    throw-away graph, `tf.gradients` builds its backward pass, and every
    forward tensor that a backward op reads (ops that only read a shape
    excluded) is listed with its byte size. Grappler may still fuse or drop a
    few at run time; the table is what TensorFlow's registered gradients ask for.
    On the torch and JAX backends of Keras it is measured on that framework
    (the tensors autograd saves, the VJP's residuals: `nestad_tf.frameworks`),
    whose own activations keep other things (torch's gelu keeps only x).

    Args:
      activation: a registered activation name (`nestad_tf.available_activations()`).
      params: its parameters (defaults filled in).
      dtype: the compute dtype of the layer.
      implementation: "keras" (Keras' own activation) or "nestad".
      backend: nestad backend ("auto", "kernel" or "tf"), for implementation="nestad".
      derivative: nestad's storage of f' (see `nestad_tf.storage`), for implementation="nestad".

    Returns:
      A `SavedTensors`.

    Example:
      saved_for_backward("gelu").tensors      # ("x", "Erfc", "Mul", ...)
      saved_for_backward("gelu", implementation="nestad").tensors   # ("f'(x)",)
    """
    if implementation not in ("keras", "nestad"):
        raise ValueError(f"implementation must be 'keras' or 'nestad', got {implementation!r}")
    spec = registry.get(activation)
    bound = spec.bind(dict(params or {}))
    storage.check_mode(derivative)
    return _saved_for_backward_cached(
        spec.name, tuple(sorted(bound.items())), tf.as_dtype(dtype).name, implementation, backend,
        derivative, frameworks.active()
    )


# --- finding the activations of a model ---


@dataclasses.dataclass(frozen=True)
class _Found:
    """One activation held by a layer."""

    kind: str  # "layer": the layer is an activation; "attribute": layer.activation
    implementation: str  # "keras", "nestad" or "other"
    spec: Optional[registry.ActivationSpec] = None
    params: Dict[str, Any] = dataclasses.field(default_factory=dict)
    label: str = ""
    reason: Optional[str] = None  # why it cannot be converted at all

    @property
    def convertible(self) -> bool:
        return self.implementation == "keras" and self.spec is not None and self.reason is None


def _label(name, params, spec=None):
    defaults = dict(spec.params) if spec is not None else {}
    shown = {k: v for k, v in params.items() if defaults.get(k, object()) != v}
    return name + ("(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")" if shown else "")


def _keras_functions() -> Dict[Any, registry.ActivationSpec]:
    table = {}
    for name in registry.available_activations():
        spec = registry.get(name)
        if spec.apply is not None:  # user-registered (forward-mode AD) activations
            continue
        for key in (spec.name,) + spec.aliases:
            function = getattr(keras.activations, key, None)
            if function is not None:
                table[function] = spec
    return table


def _identify_function(function) -> Optional[_Found]:
    """What an `activation` attribute holds; None for linear/identity."""
    if function is None:
        return None
    if isinstance(function, _activations.ActivationFunction):
        spec = registry.get(function.activation)
        return _Found("attribute", "nestad", spec, dict(function.params),
                      _label(spec.name, function.params, spec))
    if type(function).__module__.startswith("nestad_tf"):
        name = getattr(function, "name", None) or getattr(function, "__name__", type(function).__name__)
        return _Found("attribute", "nestad", None, {}, str(name))
    params = {}
    base = function
    if isinstance(function, functools.partial) and not function.args:
        base, params = function.func, dict(function.keywords)
    keras_functions = _keras_functions()
    if base in keras_functions:
        spec = keras_functions[base]
        if spec.name == "linear" and not params:
            return None
        try:
            bound = spec.bind(params)
        except TypeError as error:
            return _Found("attribute", "keras", None, params, spec.name, reason=str(error))
        return _Found("attribute", "keras", spec, bound, _label(spec.name, bound, spec))
    for key, why in registry.NOT_ELEMENTWISE.items():
        if base is getattr(keras.activations, key, None):
            return _Found("attribute", "keras", None, {}, key, reason=f"not element-wise: {why}")
    name = getattr(function, "__name__", type(function).__name__)
    return _Found(
        "attribute", "other", None, {}, str(name),
        reason="not a Keras activation nestad knows; wrap it with nestad_tf.forward_ad "
               "(or nestad_tf.register_activation) to keep only f'(x)",
    )


def _identify(layer) -> Optional[_Found]:
    """The activation a layer is or holds, if any."""
    if isinstance(layer, _layers.BatchNormActivation):
        return _Found("layer", "nestad", layer._spec, dict(layer.activation_params),  # pylint: disable=protected-access
                      _label(layer.activation, layer.activation_params, layer._spec))  # pylint: disable=protected-access
    if isinstance(layer, _layers.Activation):
        return _Found("layer", "nestad", layer._spec, dict(layer.params),  # pylint: disable=protected-access
                      _label(layer.activation, layer.params, layer._spec))  # pylint: disable=protected-access
    fixed = {
        keras.layers.ReLU: lambda l: ("relu", dict(negative_slope=float(l.negative_slope),
                                                   max_value=l.max_value,
                                                   threshold=float(l.threshold))),
        keras.layers.LeakyReLU: lambda l: ("leaky_relu", dict(negative_slope=float(l.negative_slope))),
        keras.layers.ELU: lambda l: ("elu", dict(alpha=float(l.alpha))),
    }
    for layer_class, describe in fixed.items():
        if type(layer) is layer_class:  # pylint: disable=unidiomatic-typecheck
            name, params = describe(layer)
            if params.get("max_value") is not None:
                params["max_value"] = float(params["max_value"])
            spec = registry.get(name)
            bound = spec.bind(params)
            return _Found("layer", "keras", spec, bound, _label(name, bound, spec))
    if isinstance(layer, keras.layers.PReLU):
        return _Found("layer", "keras", None, {}, "prelu",
                      reason="PReLU learns its slope; nestad_tf.ParametricActivation covers "
                             "trainable activations")
    if isinstance(layer, keras.layers.Softmax):
        return None  # not element-wise, and never an activation= of its own
    if isinstance(getattr(type(layer), "activation", None), property):
        return None  # e.g. RNN layers forward `activation` to their cell, which is found itself
    if not hasattr(layer, "activation") or not callable(getattr(layer, "activation")):
        return None
    found = _identify_function(layer.activation)
    if found is None:
        return None
    if type(layer) is keras.layers.Activation:  # pylint: disable=unidiomatic-typecheck
        return dataclasses.replace(found, kind="layer")
    return found


def _sublayers(layer) -> List[keras.layers.Layer]:
    # Keras 3 has no public listing of a Layer's direct sublayers (Model.layers
    # only covers models); _flatten_layers is the method Model.layers uses.
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:
        return list(getattr(layer, "layers", []))
    return list(flatten(include_self=False, recursive=False))


def _walk(layer, prefix: str = "") -> Iterator[Tuple[str, keras.layers.Layer, keras.layers.Layer]]:
    """(path, sublayer, parent) for every layer below `layer`, depth first."""
    for sublayer in _sublayers(layer):
        path = prefix + sublayer.name
        yield path, sublayer, layer
        yield from _walk(sublayer, path + "/")


def _is_functional(layer) -> bool:
    # keras.Model(inputs, outputs) returns the (non-exported) Functional class.
    return any(cls.__name__ == "Functional" for cls in type(layer).__mro__)


def _is_graph_model(layer) -> bool:
    return _is_functional(layer) or isinstance(layer, keras.Sequential)


def _elements_per_sample(layer) -> Optional[int]:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError, RuntimeError):
        return None
    dims = tuple(shape)[1:]
    if any(d is None for d in dims):
        return None
    return int(math.prod(dims))


# --- the report ---


@dataclasses.dataclass(frozen=True)
class ActivationReport:
    """One activation of a model, what its backward pass keeps, and what convert() did.

    Attributes:
      layer: path of the layer ("outer_model/inner_layer").
      layer_class: its class name.
      activation: the activation with non-default parameters, e.g. "relu(max_value=6.0)".
      location: "layer" (the layer is the activation) or "activation=" (an argument of it).
      replaced: True when nestad computes it.
      replaced_by: the nestad object computing it, when replaced.
      dtype: the compute dtype.
      elements_per_sample: elements of the activation's output per sample (None if unknown).
      keras_saved / nestad_saved: what Keras' and nestad's backward passes keep.
      keras_bytes_per_sample / nestad_bytes_per_sample: bytes kept per sample beyond the
        output (which the next layer keeps anyway); None when the shape is unknown.
      reason: for activations that are not nestad's, why.
      xla_form: for nestad activations that keep something else under XLA, what and why.
    """

    layer: str
    layer_class: str
    activation: str
    location: str
    replaced: bool
    replaced_by: Optional[str]
    dtype: str
    elements_per_sample: Optional[int]
    keras_saved: Tuple[str, ...]
    nestad_saved: Tuple[str, ...]
    keras_bytes_per_sample: Optional[int]
    nestad_bytes_per_sample: Optional[int]
    reason: Optional[str]
    xla_form: Optional[str] = None

    @property
    def bytes_per_sample(self) -> Optional[int]:
        """What this activation keeps now (nestad's bytes if replaced, else Keras')."""
        return self.nestad_bytes_per_sample if self.replaced else self.keras_bytes_per_sample


class MemoryReport(list):
    """A list of `ActivationReport`s with totals and notes; `print()` shows a table."""

    def __init__(self, entries: Iterable[ActivationReport] = (), notes: Sequence[str] = ()):
        super().__init__(entries)
        self.notes = list(notes)

    @property
    def replaced(self) -> List[ActivationReport]:
        return [entry for entry in self if entry.replaced]

    @property
    def left_alone(self) -> List[ActivationReport]:
        return [entry for entry in self if not entry.replaced]

    def _total(self, attribute) -> Optional[int]:
        # activations nestad cannot compute (softmax, unknown functions) have no comparison
        values = [getattr(entry, attribute) for entry in self if entry.keras_saved or entry.nestad_saved]
        if any(v is None for v in values):
            return None
        return int(sum(values))

    @property
    def keras_bytes_per_sample(self) -> Optional[int]:
        """Bytes per sample the activations would keep with Keras' own activations."""
        return self._total("keras_bytes_per_sample")

    @property
    def bytes_per_sample(self) -> Optional[int]:
        """Bytes per sample the activations keep as the model is now."""
        return self._total("bytes_per_sample")

    def __str__(self):
        header = ("layer", "activation", "dtype", "Keras B/sample", "now B/sample", "status")
        rows = []
        for entry in self:
            status = (f"nestad ({entry.replaced_by})" if entry.replaced
                      else f"Keras: {entry.reason}")
            if entry.replaced and entry.xla_form:
                status += f"; under XLA {entry.xla_form}"
            rows.append((entry.layer, entry.activation, entry.dtype,
                         _fmt(entry.keras_bytes_per_sample), _fmt(entry.bytes_per_sample), status))
        widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(5)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[5]]
        for row in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[5])
        lines.append(
            f"{len(self.replaced)} of {len(self)} activations run as nestad; activation memory "
            f"kept for backward: {_fmt_bytes(self.keras_bytes_per_sample)} per sample with "
            f"Keras' activations, {_fmt_bytes(self.bytes_per_sample)} as the model is now "
            "(outputs not counted: the next layers keep them anyway)"
        )
        lines.extend("note: " + note for note in self.notes)
        return "\n".join(lines)

    __repr__ = __str__


def _fmt(value):
    return "-" if value is None else str(value)


def _fmt_bytes(value):
    if value is None:
        return "? (some shapes unknown)"
    return f"{value / 2**20:.2f} MiB" if value >= 2**20 else f"{value} B"


def _default_reason(found: _Found, keras_saved: SavedTensors, nestad_saved: SavedTensors) -> str:
    name = found.label
    nestad_kept = ", ".join(nestad_saved.tensors) or "nothing"
    nestad_part = f"nestad would keep {nestad_kept} ({nestad_saved.bytes_per_element} B/element)"
    if keras_saved.keeps_only_output:
        return (f"Keras' {name} keeps only its output, which the next layer keeps anyway; "
                f"{nestad_part}: no saving")
    kept = ", ".join(keras_saved.tensors) or "nothing"
    verdict = "no saving" if keras_saved.bytes_per_element == nestad_saved.bytes_per_element else \
        "nestad would keep more"
    return (f"Keras' {name} keeps {kept} ({keras_saved.bytes_per_element} B/element), "
            f"{nestad_part}: {verdict}")


def _saves_memory(keras_saved: SavedTensors, nestad_saved: SavedTensors) -> bool:
    return nestad_saved.bytes_per_element < keras_saved.bytes_per_element


def _compute_dtype_name(layer) -> str:
    return tf.as_dtype(getattr(layer, "compute_dtype", None) or "float32").name


def _entry(path, layer, found: _Found, replaced: bool, replaced_by: Optional[str],
           reason: Optional[str], backend: str, derivative: str = "exact",
           fused: bool = False) -> ActivationReport:
    """fused: the activation runs inside a BatchNormActivation (it keeps nothing of its own)."""
    dtype = _compute_dtype_name(layer)
    elements = _elements_per_sample(layer)
    keras_saved = nestad_saved = None
    # On torch / JAX a BatchNormActivation runs unfused where their kernels cannot run.
    fused = fused or (isinstance(layer, _layers.BatchNormActivation)
                      and _fusion_unavailable(layer.backend or backend) is None)
    if found.spec is not None and found.reason is None:
        keras_saved = saved_for_backward(found.spec.name, found.params, dtype, "keras")
        nestad_saved = (SavedTensors((), 0) if fused else
                        saved_for_backward(found.spec.name, found.params, dtype, "nestad",
                                           backend, derivative))

    def per_sample(saved):
        if saved is None or elements is None:
            return None
        return int(math.ceil(elements * saved.bytes_per_element))

    return ActivationReport(
        layer=path,
        layer_class=type(layer).__name__,
        activation=found.label,
        location="layer" if found.kind == "layer" else "activation=",
        replaced=replaced,
        replaced_by=replaced_by,
        dtype=dtype,
        elements_per_sample=elements,
        keras_saved=keras_saved.tensors if keras_saved else (),
        nestad_saved=nestad_saved.tensors if nestad_saved else (),
        keras_bytes_per_sample=per_sample(keras_saved),
        nestad_bytes_per_sample=per_sample(nestad_saved),
        reason=reason,
        xla_form=_xla_form(layer, found) if replaced and not fused else None,
    )


def _xla_form(layer, found: _Found) -> Optional[str]:
    """What a nestad activation keeps under XLA where that differs from graph mode."""
    holder = layer if found.kind == "layer" else getattr(layer, "activation", None)
    if frameworks.active() or not getattr(holder, "after_normalization", False):
        return None  # (TensorFlow's XLA only)
    return ("keeps nothing: x is a normalization's output, and the backward pass recomputes "
            "x and f'(x) from the normalization's input (kept anyway) in ops XLA fuses")


_NORMALIZATIONS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                   keras.layers.GroupNormalization)


def _inbound_layer_names(layer_config) -> List[str]:
    """Names of the layers whose outputs a Functional model's layer config takes as inputs."""
    names = []

    def visit(value):
        if isinstance(value, dict):
            history = value.get("config", {}).get("keras_history") if value.get(
                "class_name") == "__keras_tensor__" else None
            if history:
                names.append(history[0])
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    visit(layer_config.get("inbound_nodes", []))
    return names


def _single_input_edges(model) -> List[Tuple[keras.layers.Layer, keras.layers.Layer, bool]]:
    """(before, layer, only_consumer) in `model` and the graph models nested in it: `layer`
    is called once, on the output of `before` alone; only_consumer: nothing else (no other
    layer, no second call, no model output) reads `before`'s output."""
    edges = []
    containers = [model] + [layer for _, layer, _ in _walk(model)]
    for container in containers:
        if isinstance(container, keras.Sequential):
            for before, layer in zip(container.layers, container.layers[1:]):
                edges.append((before, layer, True))
        elif _is_functional(container):
            config = container.get_config()
            by_name = {layer.name: layer for layer in container.layers}
            inbound = {c.get("name"): _inbound_layer_names(c) for c in config.get("layers", [])}
            calls = {c.get("name"): len(c.get("inbound_nodes", [])) for c in config.get("layers", [])}
            reads = {}
            for names in inbound.values():
                for name in names:
                    reads[name] = reads.get(name, 0) + 1
            outputs = set(_output_layer_names(config.get("output_layers", [])))
            for name, names in inbound.items():
                layer = by_name.get(name)
                if layer is None or calls.get(name) != 1 or len(names) != 1:
                    continue
                before = by_name.get(names[0])
                if before is None:
                    continue
                only = (reads.get(names[0]) == 1 and calls.get(names[0]) == 1
                        and names[0] not in outputs)
                edges.append((before, layer, only))
    return edges


def _output_layer_names(output_layers) -> List[str]:
    """Layer names in a Functional config's output_layers ([name, node, tensor] entries)."""
    if isinstance(output_layers, (list, tuple)):
        if len(output_layers) == 3 and isinstance(output_layers[0], str):
            return [output_layers[0]]
        return [name for item in output_layers for name in _output_layer_names(item)]
    if isinstance(output_layers, dict):
        return [name for item in output_layers.values() for name in _output_layer_names(item)]
    return []


def _after_normalization(model) -> set:
    """ids of the layers, in `model` and the graph models nested in it, whose only input
    is the output of a normalization layer (BatchNormalization, LayerNormalization,
    GroupNormalization)."""
    return {id(layer) for before, layer, _ in _single_input_edges(model)
            if isinstance(before, _NORMALIZATIONS)}


def _fusable_normalization(layer) -> bool:
    """A plain BatchNormalization that BatchNormActivation reproduces exactly."""
    return (type(layer) is keras.layers.BatchNormalization  # pylint: disable=unidiomatic-typecheck
            and not layer.renorm and not layer.synchronized)


def _fusion_candidates(model) -> Dict[int, keras.layers.Layer]:
    """id(activation layer) -> the BatchNormalization layer it can be fused with: the
    activation's only input is the BN's output, and nothing else reads that output."""
    candidates = {}
    for before, layer, only_consumer in _single_input_edges(model):
        if not (only_consumer and _fusable_normalization(before)):
            continue
        found = _identify(layer)
        if (found is not None and found.kind == "layer" and found.spec is not None
                and found.reason is None and found.spec.kernel is not None
                and found.implementation in ("keras", "nestad")):
            candidates[id(layer)] = before
    return candidates


def _fusion_unavailable(backend: Optional[str]) -> Optional[str]:
    """Why a BatchNormActivation runs unfused here (Keras on torch / JAX only), or None."""
    return frameworks.fused_normalization_unavailable(backend) if frameworks.active() else None


def _worth_fusing(found: _Found, layer, backend: str) -> bool:
    """Fusing saves memory where the activation's backward pass keeps more than its output."""
    dtype = _compute_dtype_name(layer)
    if found.implementation == "nestad":
        saved = saved_for_backward(found.spec.name, found.params, dtype, "nestad", backend,
                                   _derivative_of(layer, found))
    else:
        saved = saved_for_backward(found.spec.name, found.params, dtype, "keras")
    return saved.bytes_per_element > 0


def _describe_nestad(layer, found: _Found) -> str:
    if isinstance(layer, _layers.BatchNormActivation):
        return f"nestad_tf.layers.BatchNormActivation({found.label!r})"
    if found.kind == "layer" and isinstance(layer, _layers.Activation):
        backend = "" if layer.backend is None else f", backend={layer.backend!r}"
        after = ", after_normalization=True" if layer.after_normalization else ""
        return f"nestad_tf.layers.Activation({found.label!r}{backend}{after})"
    function = getattr(layer, "activation", None)
    return repr(function) if function is not None else found.label


def _subclassed_note(model) -> Optional[str]:
    if _is_graph_model(model):
        return None
    return (f"{type(model).__name__} is a subclassed model: convert() sees the activations its "
            "layers hold (Activation layers, activation= arguments); activations called inside "
            "its call() (e.g. keras.activations.gelu(x), tf.nn.silu(x)) are not visible and stay "
            "Keras'")


def _derivative_of(layer, found: _Found) -> str:
    """The derivative= storage of a nestad activation held by `layer`."""
    holder = layer if found.kind == "layer" else getattr(layer, "activation", None)
    return getattr(holder, "derivative", "exact")


def memory_report(model, *, backend: str = "auto", derivative: str = "exact") -> MemoryReport:
    """Per activation of any Keras model: what its backward pass keeps, Keras' vs nestad's.

    For every element-wise activation (Activation/ReLU/LeakyReLU/ELU layers and the
    `activation` of other layers, nested models included) the report gives whether
    nestad computes it, the bytes per sample its backward pass keeps with Keras'
    own activation and with nestad's (output elements x bytes per element from
    `saved_for_backward`; the output itself is not counted, the next layer keeps
    it anyway), and for each one that is not nestad's, why (e.g. "Keras' relu
    keeps only its output"). For a Keras activation that `convert()` would
    replace, the reason says so.

    Args:
      model: a Keras 3 model (Functional, Sequential or subclassed), converted or not.
      backend: the nestad backend assumed for nestad's side of the comparison.
      derivative: the storage of f' assumed for activations not yet converted
        (nestad activations report their own).

    Returns:
      A `MemoryReport` (a list of `ActivationReport`; print it for a table).

    Example:
      report = nestad_tf.memory_report(model)
      print(report)                      # one line per activation, totals at the end
      report.keras_bytes_per_sample, report.bytes_per_sample
    """
    entries = []
    notes = []
    candidates = {} if _fusion_unavailable(backend) else _fusion_candidates(model)
    for path, layer, _ in _walk(model):
        found = _identify(layer)
        if found is None:
            continue
        normalization = candidates.get(id(layer))
        if (normalization is not None and found.implementation == "keras"
                and _decide_fusion(path, layer, found, None, frozenset(), None, (), backend)):
            entry = _entry(path, layer, found, False, None, None, backend)
            entries.append(dataclasses.replace(entry, reason=(
                f"not converted: convert() fuses it with {normalization.name} into a "
                "nestad_tf.layers.BatchNormActivation, which keeps nothing for the activation")))
            continue
        if found.implementation == "nestad":
            entries.append(_entry(path, layer, found, True, _describe_nestad(layer, found), None,
                                  backend, _derivative_of(layer, found)))
            continue
        if not found.convertible:
            entries.append(_entry(path, layer, found, False, None, found.reason, backend))
            continue
        entry = _entry(path, layer, found, False, None, None, backend, derivative)
        keras_saved, nestad_saved = _pair(found, entry.dtype, backend, derivative)
        if _saves_memory(keras_saved, nestad_saved):
            reason = (f"not converted: nestad would keep {nestad_saved.bytes_per_element} instead "
                      f"of {keras_saved.bytes_per_element} B/element (convert() replaces it)")
        else:
            reason = _default_reason(found, keras_saved, nestad_saved)
        entries.append(dataclasses.replace(entry, reason=reason))
    note = _subclassed_note(model)
    if note:
        notes.append(note)
    return MemoryReport(entries, notes)


def _pair(found: _Found, dtype: str, backend: str,
          derivative: str = "exact") -> Tuple[SavedTensors, SavedTensors]:
    return (saved_for_backward(found.spec.name, found.params, dtype, "keras"),
            saved_for_backward(found.spec.name, found.params, dtype, "nestad", backend,
                               derivative))


# --- convert ---


@dataclasses.dataclass(frozen=True)
class _Decision:
    found: _Found
    replace: bool
    reason: Optional[str]


def _canonical(names, argument) -> Optional[frozenset]:
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    canonical = set()
    for name in names:
        try:
            canonical.add(registry.get(name).name)
        except ValueError as error:
            raise ValueError(f"{argument}: {error}") from None
    return frozenset(canonical)


def _matches(path: str, layer_name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(layer_name, p) for p in patterns)


def _decide(path, layer, found: _Found, include, exclude, layer_patterns, exclude_layers,
            backend, derivative) -> _Decision:
    if not found.convertible:
        return _Decision(found, False, found.reason)
    name = found.spec.name
    if name in exclude:
        return _Decision(found, False, f"excluded: exclude= names {name}")
    if layer_patterns is not None and not _matches(path, layer.name, layer_patterns):
        return _Decision(found, False, "layer not selected by layers=")
    if _matches(path, layer.name, exclude_layers):
        return _Decision(found, False, "layer excluded by exclude_layers=")
    if include is not None:
        if name in include:
            return _Decision(found, True, None)
        return _Decision(found, False, f"not named in include= ({', '.join(sorted(include))})")
    dtype = _compute_dtype_name(layer)
    keras_saved, nestad_saved = _pair(found, dtype, backend, derivative)
    if _saves_memory(keras_saved, nestad_saved):
        return _Decision(found, True, None)
    return _Decision(found, False, _default_reason(found, keras_saved, nestad_saved) +
                     f" (pass include=[{name!r}] to replace it anyway)")


def _decide_fusion(path, layer, found: _Found, include, exclude, layer_patterns, exclude_layers,
                   backend) -> bool:
    """Whether convert() fuses this activation layer with the BatchNormalization before it."""
    name = found.spec.name
    if name in exclude or _matches(path, layer.name, exclude_layers):
        return False
    if layer_patterns is not None and not _matches(path, layer.name, layer_patterns):
        return False
    if include is not None and found.implementation == "keras":
        return name in include
    return _worth_fusing(found, layer, backend)


def _nestad_function(found: _Found, backend: str,
                     derivative: str = "exact") -> _activations.ActivationFunction:
    return _activations.ActivationFunction(
        found.spec.name, backend=None if backend == "auto" else backend, derivative=derivative,
        **found.params
    )


def _nestad_layer(layer, found: _Found, backend: str, derivative: str = "exact",
                  after_normalization: bool = False) -> _layers.Activation:
    return _layers.Activation(found.spec.name, backend=None if backend == "auto" else backend,
                              derivative=derivative, after_normalization=after_normalization,
                              name=layer.name, dtype=layer.dtype_policy, **found.params)


def _recreate_subclassed(model):
    try:
        clone = type(model).from_config(model.get_config())
    except Exception as error:  # pylint: disable=broad-except
        raise TypeError(
            f"convert() cannot re-create the subclassed model {type(model).__name__}: "
            f"from_config(get_config()) failed ({type(error).__name__}: {error}). Give it a "
            "get_config() returning its constructor arguments, or build the model with "
            "nestad activations directly (activation=nestad_tf.gelu, nestad_tf.layers.Activation)."
        ) from error
    build_config = model.get_build_config() if model.built else None
    if build_config:
        clone.build_from_config(build_config)
    return clone


def _same_inputs(model):
    """New Input tensors named like the model's input layers (clone_model renames them)."""
    if isinstance(model, keras.Sequential) or not getattr(model, "inputs", None):
        return None
    names = {id(layer.output): layer.name for layer in model.layers
             if isinstance(layer, keras.layers.InputLayer)}

    def new_input(tensor):
        return keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype,
                           sparse=getattr(tensor, "sparse", False),
                           name=names.get(id(tensor), None))

    return keras.tree.map_structure(new_input, model.input)


def _counterparts(model, new_model) -> Dict[str, keras.layers.Layer]:
    """Old layer path -> the new model's layer in the same position (names may differ)."""
    old_layers = list(_walk(model))
    new_layers = [layer for _, layer, _ in _walk(new_model)]
    if len(old_layers) != len(new_layers):
        raise RuntimeError(
            f"convert(): the re-created {type(model).__name__} has {len(new_layers)} layers "
            f"instead of {len(old_layers)}"
        )
    mapping = {}
    for (path, old, _), new in zip(old_layers, new_layers):
        swapped = isinstance(new, (_layers.Activation, keras.layers.Activation,
                                   _layers.BatchNormActivation, keras.layers.Identity))
        if type(old) is not type(new) and not swapped:  # pylint: disable=unidiomatic-typecheck
            raise RuntimeError(f"convert(): layer {path} ({type(old).__name__}) became a "
                               f"{type(new).__name__} in the re-created model")
        mapping[path] = new
    return mapping


def convert(model, include: Optional[Iterable[str]] = None, exclude: Iterable[str] = (), *,
            layers: Optional[Iterable[str]] = None, exclude_layers: Iterable[str] = (),
            backend: str = "auto", derivative: str = "exact", verbose: bool = False,
            replace_with: Optional[Callable[[str, Dict[str, Any]], Callable]] = None,
            fuse_normalization: Optional[bool] = None) -> keras.Model:
    """Returns a copy of `model` whose element-wise activations keep only f'(x) for backprop.

    Replaces `keras.layers.Activation`, `ReLU`, `LeakyReLU` and `ELU` layers by
    `nestad_tf.layers.Activation` layers of the same name, and the `activation`
    of Dense, Conv*, DepthwiseConv2D, SeparableConv*, EinsumDense and any other
    layer by a `nestad_tf.ActivationFunction`, in nested models too. Weights are
    copied; outputs equal the original's within float rounding. Converting a
    converted model changes nothing. The returned model is not compiled.

    By default an activation is replaced only when nestad's backward pass keeps
    fewer bytes than Keras' (see `saved_for_backward`): gelu, mish, hard_silu,
    celu, ... yes; relu, sigmoid, tanh, elu (Keras keeps only the output, which
    the next layer keeps anyway) and silu, leaky_relu, softplus (Keras keeps only
    x, the same size as f'(x)) no. `memory_report(model)` says why for each.

    A BatchNormalization whose output goes only to an activation layer (Activation,
    ReLU, LeakyReLU, ELU) is fused with it into one `nestad_tf.layers.BatchNormActivation`
    (same name and weights as the BatchNormalization; the activation layer becomes a
    `keras.layers.Identity` of the same name): the backward pass recomputes the
    normalization and f'(x) from the BN's input, so the block keeps what BatchNormalization
    alone keeps. This happens where Keras' activation keeps more than its output (silu,
    mish, gelu, ...; not relu, sigmoid, tanh, elu, where Keras is already there), for the
    activations `include`/`exclude`/`layers`/`exclude_layers` select.

    Other activation layers whose only input is a BatchNormalization, LayerNormalization
    or GroupNormalization output become `nestad_tf.layers.Activation(...,
    after_normalization=True)`: under XLA their backward pass keeps nothing (f' is
    recomputed in ops XLA fuses with the normalization; README, "Under XLA").

    Subclassed models are re-created with `from_config(get_config())`: the
    activations their layers hold are converted; activations called inside
    their `call()` are not visible and stay Keras' (the printed report says so).

    Args:
      model: a Keras 3 model (Functional, Sequential or subclassed).
      include: activation names (aliases allowed) to replace, and only those; the ones
        named are replaced even where nestad saves no memory. None: the memory rule.
      exclude: activation names never to replace.
      layers: fnmatch patterns of layer names or paths ("block1*", "inner/*"); when
        given, only activations of matching layers are replaced.
      exclude_layers: fnmatch patterns of layers whose activations stay Keras'.
      backend: "auto", "kernel" or "tf", for the nestad activations.
      derivative: how the nestad activations keep f'(x): "exact" (default), "full",
        "bfloat16", "uint8", "bits4" ... "bits1" (see `nestad_tf.storage`); the memory
        rule compares Keras with this form, so lossy forms replace more activations.
      verbose: print the report of what was replaced and what was left alone, and why.
      replace_with: `replace_with(name, params) -> callable`, what the chosen activations
        become instead of nestad's (activation layers become `keras.layers.Activation` of
        it); the benchmark builds its recomputed and identity baselines with it. Default
        None: nestad activations (and no fusion).
      fuse_normalization: fuse BatchNormalization + activation (above); False keeps them
        as two layers. None (default): True, except on Keras' torch / JAX backends where
        the fused kernels cannot run (CUDA tensors, a GPU JAX, backend="tf"; True there
        is a ValueError).

    Returns:
      The new Keras model.

    Example:
      model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(64, 64, 3))
      model = nestad_tf.convert(model, verbose=True)     # gelu -> nestad gelu
      model.compile("adam", "sparse_categorical_crossentropy")
    """
    ops._check_backend_name(backend)  # pylint: disable=protected-access
    storage.check_mode(derivative)
    cannot_fuse = _fusion_unavailable(backend)
    if fuse_normalization is None:
        fuse_normalization = cannot_fuse is None
    elif fuse_normalization and cannot_fuse is not None:
        raise ValueError(
            f"fuse_normalization=True: the fused BatchNormalization + activation cannot run on "
            f"Keras' {frameworks.active()} backend here ({cannot_fuse}); pass "
            "fuse_normalization=False or leave it unset")
    include = _canonical(include, "include")
    exclude = _canonical(exclude, "exclude") or frozenset()
    layer_patterns = None if layers is None else (
        [layers] if isinstance(layers, str) else list(layers))
    exclude_layers = [exclude_layers] if isinstance(exclude_layers, str) else list(exclude_layers)

    decisions: Dict[int, Tuple[str, keras.layers.Layer, _Decision]] = {}
    entries_in_order = []
    candidates = _fusion_candidates(model) if fuse_normalization and replace_with is None else {}
    fused: Dict[int, str] = {}  # id(activation layer) -> the path of its BatchNormalization
    fused_into: Dict[int, Tuple[keras.layers.Layer, _Found]] = {}  # id(BN) -> (activation, found)
    paths = {id(layer): path for path, layer, _ in _walk(model)}
    for path, layer, parent in _walk(model):
        found = _identify(layer)
        if found is None:
            continue
        normalization = candidates.get(id(layer))
        if normalization is not None and _decide_fusion(path, layer, found, include, exclude,
                                                        layer_patterns, exclude_layers, backend):
            fused[id(layer)] = paths[id(normalization)]
            fused_into[id(normalization)] = (layer, found)
            entries_in_order.append((path, layer, _Decision(found, True, None)))
            continue
        if found.implementation != "keras":
            entries_in_order.append((path, layer, _Decision(found, False, None)))
            continue
        decision = _decide(path, layer, found, include, exclude, layer_patterns, exclude_layers,
                           backend, derivative)
        swappable = _is_graph_model(parent) or type(layer) is keras.layers.Activation  # pylint: disable=unidiomatic-typecheck
        if decision.replace and found.kind == "layer" and not swappable:
            decision = _Decision(found, False,
                                 f"a {type(layer).__name__} layer held by the custom "
                                 f"{type(parent).__name__} cannot be swapped; use "
                                 f"nestad_tf.layers.Activation({found.spec.name!r}) in its code")
        decisions[id(layer)] = (path, layer, decision)
        entries_in_order.append((path, layer, decision))

    swapped_paths = set()
    after_normalization = _after_normalization(model)

    def clone_layer(layer):
        if id(layer) in fused_into:
            activation_layer, found = fused_into[id(layer)]
            own_backend = getattr(activation_layer, "backend", None) if (
                found.implementation == "nestad") else (None if backend == "auto" else backend)
            return _layers.BatchNormActivation(activation=found.spec.name,
                                               activation_params=dict(found.params),
                                               backend=own_backend, **layer.get_config())
        if id(layer) in fused:
            return keras.layers.Identity(name=layer.name, dtype=layer.dtype_policy.name)
        record = decisions.get(id(layer))
        if record is not None and record[2].replace and record[2].found.kind == "layer":
            if replace_with is None:
                return _nestad_layer(layer, record[2].found, backend, derivative,
                                     id(layer) in after_normalization)
            swapped_paths.add(record[0])
            found = record[2].found
            return keras.layers.Activation(replace_with(found.spec.name, dict(found.params)),
                                           name=layer.name, dtype=layer.dtype_policy)
        return layer.__class__.from_config(layer.get_config())

    if not _is_graph_model(model):
        new_model = _recreate_subclassed(model)
    else:
        new_model = keras.models.clone_model(model, input_tensors=_same_inputs(model),
                                             clone_function=clone_layer, recursive=True)

    # activation= arguments (and Activation layers inside custom layers): set on the new layers
    new_layers = _counterparts(model, new_model)
    notes = []
    for path, layer, decision in entries_in_order:
        if not decision.replace:
            continue
        new_layer = new_layers.get(path)
        if new_layer is None:
            raise RuntimeError(f"convert(): layer {path} has no counterpart in the new model")
        if isinstance(new_layer, _layers.Activation) or path in swapped_paths or id(layer) in fused:
            continue  # swapped by clone_layer
        if replace_with is not None:
            new_layer.activation = replace_with(decision.found.spec.name, dict(decision.found.params))
            continue
        new_layer.activation = _nestad_function(decision.found, backend, derivative)
        saved = str(new_layer.get_config().get("activation", ""))
        if "nestad_tf" not in saved:
            notes.append(f"{path}: converted in memory, but {type(new_layer).__name__}.get_config() "
                         "does not save its activation attribute, so a saved and reloaded model "
                         "gets Keras' activation back")

    if model.weights:
        if len(new_model.weights) != len(model.weights):
            raise RuntimeError(
                f"convert(): the re-created {type(model).__name__} has {len(new_model.weights)} "
                f"weights instead of {len(model.weights)}; call the model once on data (so that "
                "Keras records its input shape) before converting it"
            )
        new_model.set_weights(model.get_weights())

    report_entries = []
    for path, layer, decision in entries_in_order:
        new_layer = new_layers.get(path, layer)
        if id(layer) in fused:
            bn = new_layers[fused[id(layer)]]
            report_entries.append(_entry(path, layer, decision.found, True,
                                         f"fused into {bn.name}: {_describe_nestad(bn, decision.found)}",
                                         None, backend, fused=True))
            continue
        if decision.found.implementation != "keras":
            reason = decision.found.reason if decision.found.implementation == "other" else None
            report_entries.append(_entry(path, new_layer, decision.found,
                                         decision.found.implementation == "nestad",
                                         _describe_nestad(new_layer, decision.found)
                                         if decision.found.implementation == "nestad" else None,
                                         reason, backend, _derivative_of(new_layer, decision.found)))
            continue
        replaced_by = _describe_nestad(new_layer, decision.found) if decision.replace else None
        report_entries.append(_entry(path, layer, decision.found, decision.replace, replaced_by,
                                     decision.reason, backend, derivative))
    note = _subclassed_note(model)
    if note:
        notes.append(note)
    report = MemoryReport(report_entries, notes)
    if verbose:
        print(f"nestad_tf.convert({model.name}):")
        print(report)
    return new_model
