"""Building without a C++ compiler or without TensorFlow's headers fails and says why.

Each test runs `python setup.py build_ext` in a temporary copy of the sources (never
in the checkout, never installing anything). Missing pieces are simulated: CXX naming a
compiler that does not exist or one that fails, and a stand-in `tensorflow` package
first on PYTHONPATH that cannot be imported or has no C++ headers. With
NESTAD_TF_NO_KERNELS=1 the build succeeds without kernels, and that package then runs
on its pure-TF path after one warning.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("setup.py", "README.md", "requirements.txt", "kernels", "nestad_tf")


@pytest.fixture
def source_copy(tmp_path):
    copy = tmp_path / "src"
    copy.mkdir()
    ignore = shutil.ignore_patterns("*.so", "_build_info.json", "__pycache__", "*.pyc")
    for name in SOURCES:
        source = os.path.join(ROOT, name)
        if os.path.isdir(source):
            shutil.copytree(source, copy / name, ignore=ignore)
        elif os.path.exists(source):
            shutil.copy(source, copy / name)
    return copy


def _build(copy, extra_env=None, pythonpath=()):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", NESTAD_TF_NO_CUDA="1")
    env.pop("NESTAD_TF_NO_KERNELS", None)
    env["PYTHONPATH"] = os.pathsep.join(list(pythonpath) + [env.get("PYTHONPATH", "")])
    env.update(extra_env or {})
    result = subprocess.run([sys.executable, "setup.py", "build_ext"], cwd=copy,
                            capture_output=True, text=True, timeout=600, env=env)
    return result.returncode, result.stdout + result.stderr


def _libraries(copy):
    return [os.path.join(d, f) for d, _, files in os.walk(copy) for f in files
            if f.endswith(".so")]


def _fake_tensorflow(tmp_path, body):
    package = tmp_path / "fake" / "tensorflow"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(body))
    return str(tmp_path / "fake")


def test_missing_compiler_is_named(source_copy):
    status, output = _build(source_copy, {"CXX": "/nonexistent/bin/c++"})
    assert status != 0
    assert "the C++ compiler '/nonexistent/bin/c++' was not found" in output, output[-3000:]
    assert "NESTAD_TF_NO_KERNELS=1" in output and "CXX" in output
    assert not _libraries(source_copy)


def test_failing_compiler_error_is_shown(source_copy, tmp_path):
    compiler = tmp_path / "broken-c++"
    compiler.write_text("#!/bin/sh\necho 'fatal error: simulated compiler failure' >&2\nexit 1\n")
    compiler.chmod(0o755)
    status, output = _build(source_copy, {"CXX": str(compiler)})
    assert status != 0
    assert "compiling the kernels failed" in output, output[-3000:]
    assert "simulated compiler failure" in output and "NESTAD_TF_NO_KERNELS=1" in output
    assert not _libraries(source_copy)


def test_tensorflow_without_headers_is_named(source_copy, tmp_path):
    empty_include = tmp_path / "include"
    empty_include.mkdir()
    fake = _fake_tensorflow(tmp_path, f"""
        __version__ = "2.21.0"
        class sysconfig:
            get_include = staticmethod(lambda: {str(empty_include)!r})
            get_compile_flags = staticmethod(lambda: ["-I" + {str(empty_include)!r}])
            get_link_flags = staticmethod(lambda: [])
    """)
    status, output = _build(source_copy, pythonpath=[fake])
    assert status != 0
    assert f"has no C++ headers under {empty_include}" in output, output[-3000:]
    assert "NESTAD_TF_NO_KERNELS=1" in output
    assert not _libraries(source_copy)


def test_missing_tensorflow_is_named(source_copy, tmp_path):
    fake = _fake_tensorflow(tmp_path, """
        raise ImportError("No module named 'tensorflow' (simulated)")
    """)
    status, output = _build(source_copy, pythonpath=[fake])
    assert status != 0
    assert "`import tensorflow` failed" in output and "(simulated)" in output, output[-3000:]
    assert "--no-build-isolation" in output and "NESTAD_TF_NO_KERNELS=1" in output
    assert not _libraries(source_copy)


CHILD = textwrap.dedent(
    """
    import json, warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import tensorflow as tf
        import nestad_tf
        x = tf.constant([-2.0, 0.0, 3.0])
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = nestad_tf.mish(x)
        d = tape.gradient(y, x)
    import keras
    with tf.GradientTape() as tape:
        tape.watch(x)
        keras_y = keras.activations.mish(x)
    keras_d = tape.gradient(keras_y, x)
    print(json.dumps({
        "package": nestad_tf.__file__,
        "info": {k: nestad_tf.backend_info()[k] for k in ("kernel_available", "reason")},
        "warnings": [str(w.message) for w in caught if "nestad" in str(w.message)],
        "y": y.numpy().tolist(), "d": d.numpy().tolist(),
        "keras_y": keras_y.numpy().tolist(), "keras_d": keras_d.numpy().tolist(),
    }))
    """
)


def test_no_kernels_build_and_pure_tf_use(source_copy):
    status, output = _build(source_copy, {"NESTAD_TF_NO_KERNELS": "1"})
    assert status == 0, output[-3000:]
    assert "NESTAD_TF_NO_KERNELS is set: installing without kernels" in output
    assert not _libraries(source_copy)

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(source_copy))
    env.pop("NESTAD_TF_LIBRARY", None)
    result = subprocess.run([sys.executable, "-c", CHILD], cwd=source_copy, capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads(result.stdout.strip().splitlines()[-1])
    assert run["package"].startswith(str(source_copy))
    assert run["info"]["kernel_available"] is False
    assert "does not exist (installed without kernels?)" in run["info"]["reason"]
    assert len(run["warnings"]) == 1, run["warnings"]
    assert run["y"] == pytest.approx(run["keras_y"], rel=2e-6, abs=1e-7)
    assert run["d"] == pytest.approx(run["keras_d"], rel=2e-6, abs=1e-7)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_missing_keras_backend_framework_names_the_extra(framework, tmp_path):
    # The framework hidden (None in sys.modules makes its import fail), as on a machine
    # that never installed it; KERAS_BACKEND asks for it.
    child = f"import sys; sys.modules[{framework!r}] = None; import nestad_tf"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=framework,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: KERAS_BACKEND=" + framework), last
    assert f"pip install --no-build-isolation 'nestad_tf[{framework}]'" in last, last
