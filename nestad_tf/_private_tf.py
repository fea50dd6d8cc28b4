"""The only place nestad_tf touches TensorFlow's private modules.

Why: an activation must pick the pure-TF path while a function is being traced
for XLA (custom ops have no XLA kernel), and TensorFlow has no public API that
says whether the graph under construction is an XLA context. This module wraps
the one private helper used for that; if it ever disappears, `in_xla_context`
answers False and `backend="tf"` remains the explicit way to stay XLA-safe.
"""

import tensorflow as tf

try:  # pylint: disable=g-import-not-at-top
    from tensorflow.python.ops import control_flow_util as _control_flow_util
except ImportError:  # pragma: no cover - depends on the TF build
    _control_flow_util = None


def in_xla_context() -> bool:
    """True while tracing a function that XLA will compile (jit_compile=True)."""
    if tf.executing_eagerly() or _control_flow_util is None:
        return False
    graph = tf.compat.v1.get_default_graph()
    return bool(_control_flow_util.GraphOrParentsInXlaContext(graph))
