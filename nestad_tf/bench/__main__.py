"""`python -m nestad_tf.bench {model,kernel} ...`: see `python -m nestad_tf.bench --help`."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Allocator peaks (get_memory_info) on every x86 CPU: TensorFlow keeps them only in its
# BFC allocator, the default only where oneDNN is on (AVX-512 CPUs; not on e.g. AMD EPYC).
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # workers inherit it

from .cli import main  # noqa: E402  (after the log level, which TensorFlow reads at import)

sys.exit(main())
