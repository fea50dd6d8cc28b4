"""The benchmarked models and the five ways their activations are run.

Models (built with `weights=None`, so nothing is downloaded):

    efficientnet_b0        keras.applications.EfficientNetB0 as shipped (silu)
    efficientnet_b0_mish   the same, every silu switched to mish
    convnext_tiny          keras.applications.ConvNeXtTiny (gelu)
    bert_like              BERT-base-like encoder from Keras layers (hidden 768,
                           12 heads, FFN 3072 with gelu; 4 layers by default)
    mlp                    Dense layers with mish/gelu (tiny; for smoke tests)
    <Name>                 any keras.applications constructor, e.g. MobileNetV3Small

Modes (what the activations become; everything else is the same model):

    keras        the model as Keras builds it
    recompute    every activation wrapped in tf.recompute_grad (keeps x, recomputes f
                 in the backward pass; torch.utils.checkpoint / jax.checkpoint on Keras'
                 torch / JAX backends, whose modes are in frameworks.py)
    nestad       nestad_tf.convert(model, backend="kernel", fuse_normalization=False):
                 the default rule, which replaces only activations where nestad keeps
                 fewer bytes, each activation on its own (f' kept)
    nestad-fused nestad_tf.convert(model, backend="kernel"), the default: the same, and
                 BatchNormalization + activation fused into BatchNormActivation (keeps
                 only the normalization's input)
    nestad-fused-<d>  nestad-fused with the remaining activations' f' kept as
                 derivative=<d> (nestad-fused-bits4, ...)
    nestad-tf    the same with the pure-TF (forward-mode AD) backend
    nestad-all   nestad_tf.convert(model, include=<every activation>, backend="kernel")
    nestad-<d>   nestad with f' kept as derivative=<d>: nestad-full, nestad-bfloat16,
                 nestad-uint8, nestad-bits4 ... nestad-bits1 (see nestad_tf.storage)
    floor        every activation replaced by the identity: the memory that no
                 activation scheme can go below

All rewrites go through `nestad_tf.convert` (its `replace_with` hook for the
baselines), so each mode touches exactly the activations convert finds.
"""

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional, Tuple

STORAGE_MODES = tuple(f"nestad-{d}" for d in ("full", "bfloat16", "uint8", "bits4", "bits3",
                                                "bits2", "bits1"))
FUSED_STORAGE_MODES = tuple("nestad-fused-" + m[len("nestad-"):] for m in STORAGE_MODES)
MODES = (("keras", "recompute", "nestad", "nestad-fused", "nestad-tf", "nestad-all", "floor")
         + STORAGE_MODES + FUSED_STORAGE_MODES)
DEFAULT_MODES = ("keras", "recompute", "nestad", "nestad-fused", "nestad-tf", "floor")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A built-in benchmark model and the batch/size the issue's targets were set at."""

    description: str
    batch: int
    size: int  # image side (pixels), sequence length, or MLP width
    size_name: str


MODELS: Dict[str, ModelSpec] = {
    "efficientnet_b0": ModelSpec("EfficientNetB0 as shipped (silu)", 32, 128, "px"),
    "efficientnet_b0_mish": ModelSpec("EfficientNetB0, activations switched to mish", 32, 128, "px"),
    "convnext_tiny": ModelSpec("ConvNeXtTiny (gelu)", 16, 64, "px"),
    "bert_like": ModelSpec("BERT-base-like encoder (768 hidden, 12 heads, FFN 3072 gelu)",
                           16, 128, "tokens"),
    "mlp": ModelSpec("MLP, Dense layers alternating mish and gelu", 64, 256, "width"),
}
APPLICATION_DEFAULTS = ModelSpec("keras.applications model", 16, 96, "px")


def model_spec(name: str) -> ModelSpec:
    """The built-in spec of `name`, or the defaults for a keras.applications model."""
    return MODELS.get(name, APPLICATION_DEFAULTS)


def application_constructor(name: str) -> Optional[Callable]:
    """keras.applications.<name> (case-insensitive, `keras.applications.` prefix allowed)."""
    import keras  # pylint: disable=g-import-not-at-top

    short = name.split(".")[-1]
    names = {n.lower(): n for n in dir(keras.applications) if n[:1].isupper()}
    found = names.get(short.lower())
    return getattr(keras.applications, found) if found else None


def known_model(name: str) -> bool:
    return name in MODELS or application_constructor(name) is not None


# --- building -------------------------------------------------------------


def build(name: str, size: int, options: Dict[str, Any]):
    """Returns (model, make_batch) where make_batch(batch) -> (inputs, integer labels).

    Args:
      name: a key of MODELS or a keras.applications constructor name.
      size: image side, sequence length (bert_like) or width (mlp).
      options: bert_layers (int), mlp_depth (int), classes (int).
    """
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    classes = int(options.get("classes", 1000))
    if name == "bert_like":
        model = bert_like(layers=int(options.get("bert_layers", 4)), sequence=size)
        hidden = model.input_shape[-1]

        def make_batch(batch):
            x = tf.random.normal((batch, size, hidden), seed=1)
            return x, tf.random.uniform((batch,), 0, 2, dtype=tf.int32, seed=2)

        return model, make_batch
    if name == "mlp":
        model = mlp(width=size, depth=int(options.get("mlp_depth", 4)))

        def make_batch(batch):
            x = tf.random.normal((batch, 64), seed=1)
            return x, tf.random.uniform((batch,), 0, 10, dtype=tf.int32, seed=2)

        return model, make_batch
    if name in ("efficientnet_b0", "efficientnet_b0_mish"):
        model = keras.applications.EfficientNetB0(
            weights=None, input_shape=(size, size, 3), classes=classes, classifier_activation=None)
        if name == "efficientnet_b0_mish":
            model = switch_activation(model, "silu", "mish")
    elif name == "convnext_tiny":
        model = keras.applications.ConvNeXtTiny(
            weights=None, input_shape=(size, size, 3), classes=classes, classifier_activation=None)
    else:
        constructor = application_constructor(name)
        if constructor is None:
            raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODELS)} or a "
                             "keras.applications name (e.g. MobileNetV3Small)")
        kwargs = dict(weights=None, input_shape=(size, size, 3), classes=classes)
        try:
            model = constructor(classifier_activation=None, **kwargs)
        except TypeError:  # a few constructors have no classifier_activation
            model = constructor(**kwargs)

    def make_batch(batch):
        x = tf.random.uniform((batch, size, size, 3), 0.0, 255.0, seed=1)
        return x, tf.random.uniform((batch,), 0, classes, dtype=tf.int32, seed=2)

    return model, make_batch


def bert_like(layers: int = 4, sequence: int = 128, hidden: int = 768, heads: int = 12,
              ffn: int = 3072):
    """A BERT-base-like Transformer encoder from Keras layers, on float token embeddings.

    Post-LayerNorm blocks as in BERT: x = LN(x + MHA(x)); x = LN(x + Dense(Dense_gelu(x))).
    A tanh pooler on the first token and a 2-class head follow. No dropout, no
    embedding table (inputs are embeddings), so every mode runs the same ops.
    """
    import keras  # pylint: disable=g-import-not-at-top

    inputs = keras.Input((sequence, hidden), name="embeddings")
    h = inputs
    for i in range(layers):
        attention = keras.layers.MultiHeadAttention(heads, hidden // heads, name=f"attention_{i}")(h, h)
        h = keras.layers.LayerNormalization(epsilon=1e-12, name=f"attention_norm_{i}")(
            keras.layers.Add()([h, attention]))
        f = keras.layers.Dense(ffn, activation="gelu", name=f"ffn_in_{i}")(h)
        f = keras.layers.Dense(hidden, name=f"ffn_out_{i}")(f)
        h = keras.layers.LayerNormalization(epsilon=1e-12, name=f"ffn_norm_{i}")(
            keras.layers.Add()([h, f]))
    first = keras.layers.Flatten(name="first_token")(
        keras.layers.Cropping1D((0, sequence - 1))(h))
    pooled = keras.layers.Dense(hidden, activation="tanh", name="pooler")(first)
    outputs = keras.layers.Dense(2, name="classifier")(pooled)
    return keras.Model(inputs, outputs, name=f"bert_like_{layers}")


def mlp(width: int = 256, depth: int = 4):
    """Dense(width) layers alternating mish and gelu on 64 features, 10 logits."""
    import keras  # pylint: disable=g-import-not-at-top

    inputs = keras.Input((64,))
    h = inputs
    for i in range(depth):
        h = keras.layers.Dense(width, activation="mish" if i % 2 == 0 else "gelu")(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name=f"mlp_{depth}x{width}")


# --- the activations of each mode -----------------------------------------


class KerasActivation:
    """Keras' own activation `name(x, **params)` (the registry's reference), as a callable."""

    def __init__(self, name: str, params: Dict[str, Any]):
        from .. import registry  # pylint: disable=g-import-not-at-top

        self.name = name
        self.params = dict(params)
        self._function = functools.partial(registry.get(name).reference, **self.params)
        self.__name__ = name

    def __call__(self, x):
        return self._function(x)

    def __repr__(self):
        return f"keras.activations.{self.name}"


class RecomputedActivation(KerasActivation):
    """Keras' activation recomputed in the backward pass: keeps x, recomputes f(x) for the gradient.

    The Keras backend's own checkpointing: `tf.recompute_grad` (tensorflow),
    `torch.utils.checkpoint.checkpoint(fn, x, use_reentrant=False)` (torch),
    `jax.checkpoint(fn)` (jax).
    """

    _WRAPPERS = {"tensorflow": "tf.recompute_grad", "torch": "torch.utils.checkpoint.checkpoint",
                 "jax": "jax.checkpoint"}

    def __init__(self, name: str, params: Dict[str, Any]):
        import keras  # pylint: disable=g-import-not-at-top

        from .frameworks import recompute_wrapper  # pylint: disable=g-import-not-at-top

        super().__init__(name, params)
        self.backend = keras.backend.backend()
        self._recomputed = recompute_wrapper(self._function, self.backend)

    def __call__(self, x):
        return self._recomputed(x)

    def __repr__(self):
        return f"{self._WRAPPERS.get(self.backend, 'recompute')}(keras.activations.{self.name})"


class IdentityActivation:
    """y = x in place of an activation (the `floor` mode)."""

    __name__ = "identity"

    def __call__(self, x):
        return x

    def __repr__(self):
        return "identity"


def all_activations() -> Tuple[str, ...]:
    from .. import registry  # pylint: disable=g-import-not-at-top

    return tuple(registry.available_activations())


def switch_activation(model, old: str, new: str):
    """The model with every `old` activation replaced by Keras' `new` (e.g. silu -> mish)."""
    import keras  # pylint: disable=g-import-not-at-top

    import nestad_tf  # pylint: disable=g-import-not-at-top

    function = getattr(keras.activations, new)  # Keras' own: the model stays a plain Keras model
    return nestad_tf.convert(model, include=[old], replace_with=lambda _name, _params: function)


def apply_mode(model, mode: str):
    """Returns the model as run in `mode` (see the module docstring)."""
    import nestad_tf  # pylint: disable=g-import-not-at-top

    if mode == "keras":
        return model
    if mode == "nestad":
        return nestad_tf.convert(model, backend="kernel", fuse_normalization=False)
    if mode == "nestad-fused":
        return nestad_tf.convert(model, backend="kernel")
    if mode == "nestad-tf":
        return nestad_tf.convert(model, backend="tf", fuse_normalization=False)
    if mode == "nestad-all":
        return nestad_tf.convert(model, include=all_activations(), backend="kernel",
                                 fuse_normalization=False)
    if mode in STORAGE_MODES:
        return nestad_tf.convert(model, backend="kernel", derivative=mode[len("nestad-"):],
                                 fuse_normalization=False)
    if mode in FUSED_STORAGE_MODES:
        return nestad_tf.convert(model, backend="kernel",
                                 derivative=mode[len("nestad-fused-"):])
    if mode == "recompute":
        return nestad_tf.convert(model, include=all_activations(), replace_with=RecomputedActivation)
    if mode == "floor":
        return nestad_tf.convert(model, include=all_activations(),
                               replace_with=lambda _name, _params: IdentityActivation())
    raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")


def runs_under_xla(mode: str) -> Optional[str]:
    """None if `mode` can be compiled by XLA, else why not."""
    if mode in ("nestad", "nestad-fused", "nestad-all") + STORAGE_MODES + FUSED_STORAGE_MODES:
        from .. import _loader  # pylint: disable=g-import-not-at-top

        library = _loader.load()
        if not library.xla:
            return (f"the fused kernels cannot be compiled by XLA here "
                    f"({library.reason if library.module is None else library.xla_reason}); "
                    "under XLA nestad's backend='auto' runs the pure-TF path (the nestad-tf mode)")
    return None
