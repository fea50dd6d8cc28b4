"""Every example in examples/ runs to the end (small sizes) and prints what it promises.

The sizes keep each activation at 256 KiB or more: TensorFlow's CPU allocator
statistics, which the examples print, count only allocations of that size.
"""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# "example [label]": (arguments, regular expressions its output must contain)
EXAMPLES = {
    "train_memory.py": (["--width", "256", "--depth", "2", "--batch", "256", "--epochs", "1"],
                        [r"peak_mib: [\d.]+",  # Keras' progress bar shows the callback's value
                         r"nestad saved -?[\d.]+ MiB of training-step peak memory in model\.fit "
                         r"\([\d.]+x lower\)"]),
    "custom_activation.py": (["--width", "256", "--depth", "2", "--batch", "256", "--epochs", "1"],
                             [r"nestad forward_ad\s+peak\s+[\d.]+ MiB",
                              r"predictions identical: True"]),
    "convert_application.py": (["--model", "efficientnet_mish", "--image-size", "32", "--batch", "4"],
                               [r"nestad \(converted\): peak\s+[\d.]+ MiB", r"accuracy"]),
    "mixed_precision.py": ([], [r"loss"]),
    "keras_backends.py": (["--width", "128", "--depth", "2", "--batch", "128", "--epochs", "1"],
                          [r"tensorflow\s+allocator peak, MiB\s+[\d.]+\s+[\d.]+\s+[\d.]+x",
                           r"torch\s+(autograd saved, MiB\s+[\d.]+|skipped)",
                           r"jax\s+(XLA temp buffers, MiB\s+[\d.]+|skipped)"]),
    "distributed.py": ([], [r"replicas: 2", r"loss"]),
    "distributed.py --workers 2": (
        ["--workers", "2"], [r"worker 1 loss", r"multi-worker matches single process: True"]),
}


def test_every_example_is_covered():
    scripts = {example.split()[0] for example in EXAMPLES}
    assert scripts == {f for f in os.listdir(os.path.join(REPO, "examples")) if f.endswith(".py")}


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_example_runs(example, tmp_path):
    arguments, expected = EXAMPLES[example]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    script = os.path.join(REPO, "examples", example.split()[0])
    result = subprocess.run([sys.executable, script] + arguments,
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for pattern in expected:
        assert re.search(pattern, output), (pattern, output[-3000:])
