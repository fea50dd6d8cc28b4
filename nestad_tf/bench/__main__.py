"""`python -m nestad_tf.bench {model,kernel} ...`: see `python -m nestad_tf.bench --help`."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .cli import main  # noqa: E402  (after the log level, which TensorFlow reads at import)

sys.exit(main())
