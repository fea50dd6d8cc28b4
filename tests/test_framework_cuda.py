"""The CUDA kernels of Keras' torch and JAX backends (nestad_tf/_nestad_cuda.so) on a
machine that may have no GPU.

What runs without one: the library loads without TensorFlow's libraries, exports the
C interface torch calls (kernels/cuda/c_api_gpu.cc) and the XLA:GPU handlers JAX
registers, checks every argument with the same functions as the CPU interface
(kernels/c_api.cc, the same messages) before touching CUDA, reports a missing
device or driver as an error instead of crashing, and `load_framework_cuda` turns
that into the reason the pure path runs. The kernels' values on a GPU are checked by
tools/gpu_check (the same launchers) and by the framework tests on a CUDA machine.
"""

import ctypes
import importlib.util
import os
import subprocess
import sys

import pytest

from nestad_tf import _loader

LIBRARY = os.path.join(os.path.dirname(_loader.library_path()),
                       _loader.FRAMEWORK_CUDA_LIBRARY_NAME)
BUILT = bool(_loader._read_build_info(LIBRARY).get("framework_cuda"))  # pylint: disable=protected-access
ELEMENTWISE_TARGETS = (
    "nestad_fused_activation", "nestad_fused_activation_grad", "nestad_activation_forward",
    "nestad_activation_grad_from_output", "nestad_fused_activation_quantized",
    "nestad_activation_grad_quantized",
)
needs_library = pytest.mark.skipif(
    not BUILT, reason="built without _nestad_cuda.so (NESTAD_FRAMEWORK_CUDA=1 and nvcc build it)")

F32 = 2  # c_api_util.h's dtype code of float32
I64 = ctypes.c_int64


@pytest.fixture(scope="module")
def cuda():
    lib = ctypes.CDLL(LIBRARY)
    lib.nestad_xla_ffi_cuda_handler.argtypes = [ctypes.c_char_p]
    lib.nestad_xla_ffi_cuda_handler.restype = ctypes.c_void_p
    return lib


@pytest.fixture(scope="module")
def cpu():
    return ctypes.CDLL(_loader.load().path)


@pytest.fixture(scope="module")
def device_error(cuda):
    """Why the library's CUDA runtime finds no device, or "" where it finds one."""
    error = ctypes.create_string_buffer(512)
    return error.value.decode() if cuda.nestad_cuda_device_error(error, I64(512)) else ""


def _floats(*values):
    return (ctypes.c_float * max(1, len(values)))(*values), len(values)


def _call(function, *args, tail):
    """(status, message) of a C function whose last arguments are `tail` and the error
    buffer."""
    error = ctypes.create_string_buffer(512)
    status = function(*args, *tail, error, I64(len(error)))
    return status, error.value.decode()


def _forward_args(name, params, dtype, pointer=None, n=16):
    """nestad_fused_forward's arguments up to the thread count (CPU) or device (CUDA)."""
    values, count = _floats(*params)
    return [name.encode(), values, count, dtype, pointer, pointer, pointer, I64(n)]


@needs_library
def test_library_needs_no_tensorflow_library():
    """Keras on torch or JAX loads it beside another framework's CUDA runtime: it links
    no TensorFlow library and no shared CUDA runtime (cudart is static)."""
    with open(LIBRARY, "rb") as f:
        data = f.read()
    for needed in (b"libtensorflow_framework.so", b"libtensorflow_cc.so", b"libcudart.so"):
        assert needed not in data, f"{LIBRARY} refers to {needed.decode()}"


@needs_library
def test_exports_the_cuda_counterpart_of_every_elementwise_c_function(cuda):
    for name in ("fused_forward", "fused_backward", "forward_only", "backward_from_output",
                 "quantized_forward", "quantized_backward"):
        assert hasattr(cuda, f"nestad_cuda_{name}"), name


@needs_library
def test_xla_gpu_handlers_for_jax(cuda):
    handlers = [cuda.nestad_xla_ffi_cuda_handler(t.encode()) for t in ELEMENTWISE_TARGETS]
    assert all(handlers) and len(set(handlers)) == len(handlers)
    # no CUDA kernels for the fused normalization; unknown names find nothing
    for target in ("nestad_batch_norm_activation", "nestad_batch_norm_activation_grad",
                   "nestad_unknown", ""):
        assert not cuda.nestad_xla_ffi_cuda_handler(target.encode()), target
    assert not cuda.nestad_xla_ffi_cuda_handler(None)


@needs_library
@pytest.mark.parametrize("name, params, dtype", [
    ("no_such_activation", [], F32),
    ("leaky_relu", [], F32),          # a missing parameter
    ("elu", [float("nan")], F32),     # a parameter the activation refuses
    ("mish", [], 7),                  # an unknown dtype code
])
def test_bad_arguments_get_the_cpu_interfaces_message(cpu, cuda, name, params, dtype):
    """Checked before any CUDA call, by the functions the CPU interface uses."""
    args = _forward_args(name, params, dtype)
    cpu_status, cpu_message = _call(cpu.nestad_fused_forward, *args, tail=[1])
    status, message = _call(cuda.nestad_cuda_fused_forward, *args, tail=[0, None])
    assert cpu_status == 1 and status == 1
    assert message == cpu_message and message


@needs_library
def test_bad_derivative_formats_get_the_cpu_interfaces_message(cpu, cuda):
    breakpoints, levels, value_range = _floats(0.5), _floats(0.0, 1.0), _floats(0.0, 1.0)
    args = [b"piecewise", 3, *breakpoints, *levels, *value_range, F32, None, None, None,
            I64(16)]
    cpu_status, cpu_message = _call(cpu.nestad_quantized_backward, *args, tail=[1])
    status, message = _call(cuda.nestad_cuda_quantized_backward, *args, tail=[0, None])
    assert cpu_status == status == 1 and message == cpu_message and message


@needs_library
def test_backward_from_output_refuses_what_the_cpu_interface_refuses(cpu, cuda):
    values, count = _floats()
    args = [b"mish", values, count, F32, None, None, None, I64(16)]  # f' is not a function of y
    cpu_status, cpu_message = _call(cpu.nestad_backward_from_output, *args, tail=[1])
    status, message = _call(cuda.nestad_cuda_backward_from_output, *args, tail=[0, None])
    assert cpu_status == status == 1 and message == cpu_message and "mish" in message


@needs_library
def test_without_a_usable_device_a_launch_is_an_error_not_a_crash(cuda, device_error):
    if not device_error:
        pytest.skip("a CUDA device is usable here: the launch would run")
    args = _forward_args("mish", [], F32, pointer=ctypes.c_void_p(64))  # never dereferenced
    status, message = _call(cuda.nestad_cuda_fused_forward, *args, tail=[0, None])
    assert status == 1 and message.startswith("CUDA device 0: ") and device_error in message


@needs_library
def test_loader_says_why_cuda_tensors_take_the_pure_path(device_error):
    _loader._reset_for_tests()  # pylint: disable=protected-access
    loaded = _loader.load_framework_cuda()
    assert loaded.path == LIBRARY
    if device_error:
        assert loaded.cdll is None
        assert loaded.reason == ("the CUDA runtime of nestad's kernels finds no usable device "
                                 f"({device_error})")
    else:
        assert loaded.cdll is not None and loaded.reason == "loaded"
    assert _loader.load_framework_cuda() is loaded  # asked once


def test_loader_without_the_library(tmp_path, monkeypatch):
    """A build without it (the default where neither torch nor JAX has CUDA)."""
    monkeypatch.setenv("NESTAD_TF_LIBRARY", str(tmp_path / _loader.LIBRARY_NAME))
    _loader._reset_for_tests()  # pylint: disable=protected-access
    try:
        loaded = _loader.load_framework_cuda()
        assert loaded.cdll is None
        assert loaded.reason.startswith("nestad_tf was built without CUDA kernels for torch/JAX")
        assert "NESTAD_FRAMEWORK_CUDA=1" in loaded.reason
    finally:
        monkeypatch.delenv("NESTAD_TF_LIBRARY")
        _loader._reset_for_tests()  # pylint: disable=protected-access


@pytest.mark.subprocess
def test_gpu_check_script_self_check():
    """tools/gpu_check/frameworks_check.py (what a GPU machine runs against this library)
    keeps up with the C interfaces: its torch and JAX checks, run on the CPU through
    kernels/c_api.cc and the Host handlers, pass."""
    for framework in ("torch", "jax"):
        if importlib.util.find_spec(framework) is None:
            pytest.skip(f"{framework} is not installed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, os.path.join(root, "tools", "gpu_check", "frameworks_check.py"),
         "--self-check"], capture_output=True, text=True, timeout=600, check=False,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "FAIL" not in result.stdout and ", 0 failed" in result.stdout
