"""nestad on Keras' torch and JAX backends, run from the TensorFlow test session.

Keras picks its backend once per process (KERAS_BACKEND), so each backend's tests
(tests/frameworks/) run in a subprocess of their own; so does each step of the
save/load round trip across backends. A backend whose framework is not installed
is skipped (CI installs torch's CPU wheel and JAX).
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMEWORKS_DIR = os.path.join(ROOT, "tests", "frameworks")
_TIMEOUT_S = 900

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]


def _environment(backend):
    path = [ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(path))
    if backend == "jax":
        env["JAX_ENABLE_X64"] = "1"  # float64 tensors (tests/frameworks/framework_helpers.py)
    return env


def _run(backend, args):
    try:
        result = subprocess.run([sys.executable] + args, cwd=ROOT, env=_environment(backend),
                                capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as error:
        output = error.stdout or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        pytest.fail(f"KERAS_BACKEND={backend} {' '.join(args)} ran past {_TIMEOUT_S} s:\n"
                    f"{output[-6000:]}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"KERAS_BACKEND={backend} {' '.join(args)} exited with {result.returncode}:\n"
        f"{output[-8000:]}")
    return output


def _require(*frameworks):
    for framework in frameworks:
        if importlib.util.find_spec(framework) is None:
            pytest.skip(f"{framework} is not installed (pip install 'nestad_tf[{framework}]')")


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_framework_suite(backend):
    """tests/frameworks/ with KERAS_BACKEND=<backend>: values, models, memory."""
    _require(backend)
    output = _run(backend, ["-m", "pytest", "-q", "-p", "no:cacheprovider", FRAMEWORKS_DIR])
    summary = [line for line in output.splitlines() if " passed" in line]
    assert summary, output[-4000:]  # not everything skipped (the backend was honoured)
    print(f"KERAS_BACKEND={backend}: {summary[-1]}")


def test_save_and_load_across_backends(tmp_path):
    """A model holding every kind of nestad object (tests/frameworks/saved_model_helpers.py),
    saved on one backend and loaded on the next: tensorflow -> torch -> jax -> tensorflow,
    same predictions on fixed inputs."""
    _require("torch", "jax")
    script = os.path.join(FRAMEWORKS_DIR, "saved_model_helpers.py")
    directory = str(tmp_path)
    chain = ["tensorflow", "torch", "jax", "tensorflow"]
    for step, backend in enumerate(chain):
        args = [script, directory]
        if step > 0:
            args += ["--load", chain[step - 1]]
        if step < len(chain) - 1:
            args += ["--save", backend]
        output = _run(backend, args)
        if step > 0:
            assert f"loaded {chain[step - 1]}.keras on {backend}: predictions match" in output
    inputs = np.load(os.path.join(directory, "inputs.npy"))
    for backend in chain[:-1]:
        predictions = np.load(os.path.join(directory, f"{backend}.npy"))
        assert predictions.shape == (inputs.shape[0], 3) and np.all(np.isfinite(predictions))
