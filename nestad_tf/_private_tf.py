"""The only place nestad_tf touches TensorFlow's private modules.

Why: an activation must pick the pure-TF path while a function is being traced
for XLA (custom ops have no XLA kernel), and TensorFlow has no public API that
says whether the graph under construction is an XLA context. This module wraps
the one private helper used for that; if it ever disappears, `in_xla_context`
answers False and `backend="tf"` remains the explicit way to stay XLA-safe.

Why (gradient_tape_active): an inference graph (model.predict, model.export's
serving signature) needs no f'(x) and must not contain nestad's custom op, and
TensorFlow has no public API that says whether a gradient tape is recording.
If the helper disappears, `gradient_tape_active` answers True (f' is kept, as
before) and exported graphs then need `import nestad_tf` to load.
"""

import tensorflow as tf

try:  # pylint: disable=g-import-not-at-top
    from tensorflow.python.ops import control_flow_util as _control_flow_util
except ImportError:  # pragma: no cover - depends on the TF build
    _control_flow_util = None

try:  # pylint: disable=g-import-not-at-top
    from tensorflow.python.eager import record as _tape_record
except ImportError:  # pragma: no cover - depends on the TF build
    _tape_record = None


def in_xla_context() -> bool:
    """True while tracing a function that XLA will compile (jit_compile=True)."""
    if tf.executing_eagerly() or _control_flow_util is None:
        return False
    graph = tf.compat.v1.get_default_graph()
    return bool(_control_flow_util.GraphOrParentsInXlaContext(graph))


def gradient_tape_active() -> bool:
    """True while any gradient tape could record the ops being created (True if unknown)."""
    if _tape_record is None:
        return True
    return bool(_tape_record.could_possibly_record())
