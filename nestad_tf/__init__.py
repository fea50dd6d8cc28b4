"""nestad_tf: activations that keep only f'(x) for the backward pass.

An activation y = f(x) is element-wise, so its Jacobian is diagonal: nestad
computes f'(x) during the forward pass (a fused C++ kernel, or forward-mode AD
of the TF definition) and the backward pass is dx = dy * f'(x). Training keeps
one tensor per activation instead of the input and every intermediate of a
composite such as GELU or Mish.

Quick tour:
    import nestad_tf
    y = nestad_tf.mish(x)                                # like keras.activations.mish
    y = nestad_tf.activation(x, "relu", max_value=6.0)   # any registered activation
    keras.layers.Dense(64, activation=nestad_tf.gelu)
    nestad_tf.layers.Activation("leaky_relu", negative_slope=0.1)
    nestad_tf.backend_info()                             # which backend runs, and why
    model = nestad_tf.convert(model, verbose=True)       # a whole Keras model, one line

nestad follows Keras 3's backend: with KERAS_BACKEND=torch or jax the same calls
run on those frameworks' tensors (`nestad_tf.frameworks`; install the `torch` /
`jax` extra).
"""

import os as _os


def _check_keras_backend_installed():
    """KERAS_BACKEND=torch/jax without that framework: say which extra installs it.

    (Keras' own error at its import is a bare ModuleNotFoundError.)
    """
    name = _os.environ.get("KERAS_BACKEND", "").strip().lower()
    if name in ("torch", "jax"):
        try:
            __import__(name)
        except ImportError as error:
            raise ImportError(
                f"KERAS_BACKEND={name}, but {name} is not installed; nestad_tf runs on Keras' "
                f"{name} backend with the extra: pip install --no-build-isolation "
                f"'nestad_tf[{name}]' (or unset KERAS_BACKEND for TensorFlow) ({error})"
            ) from error


_check_keras_backend_installed()

from . import _loader, frameworks, layers, registry  # noqa: E402
from .activations import ActivationFunction, BUILTINS as _BUILTINS, get  # noqa: E402
from .ops import (  # noqa: E402
    BACKENDS,
    SecondOrderGradientError,
    activation,
    backend_info,
    backend_scope,
)
from .registry import available_activations  # noqa: E402
from .convert import convert, memory_report  # noqa: E402
from .forward_ad import (  # noqa: E402
    ForwardADActivation,
    NotElementwiseError,
    ParametricActivation,
    forward_ad,
    register_activation,
)

globals().update(_BUILTINS)

# Register the kernels' ops with TensorFlow at import (silently; a missing or mismatched
# library warns at first use), so that graphs and SavedModels that contain them load after
# `import nestad_tf`.
_loader.load()

__version__ = "0.1.0"

__all__ = [
    "ActivationFunction",
    "BACKENDS",
    "ForwardADActivation",
    "NotElementwiseError",
    "ParametricActivation",
    "SecondOrderGradientError",
    "activation",
    "available_activations",
    "backend_info",
    "backend_scope",
    "convert",
    "forward_ad",
    "frameworks",
    "get",
    "layers",
    "memory_report",
    "register_activation",
    "registry",
] + sorted(_BUILTINS)
