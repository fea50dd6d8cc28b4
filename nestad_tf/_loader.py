"""Loads the compiled kernels once, or says exactly why they cannot be used.

The shared library `_nestad_ops.so` is built by setup.py (or Bazel) against one
TensorFlow version, recorded in `_build_info.json` beside it. A custom op's
binary is only safe with that exact version, so on any mismatch, or if the file
is missing or cannot be loaded, nestad_tf warns once (saying what happened and
how to rebuild) and runs its pure-TensorFlow path, which computes the same
values and derivatives.

Under a CUDA build of TensorFlow, the GPU kernels of the same ops
(`_nestad_ops_gpu.so`, built by setup.py when nvcc was available) are loaded
after the CPU library; if they cannot be, the ops keep their CPU kernels and
one warning says why.

Keras' torch and JAX backends on CUDA use `_nestad_cuda.so` (`load_framework_cuda`):
the same CUDA kernels without TensorFlow, built by setup.py where a CUDA build of
torch or JAX was installed; loaded on the first CUDA tensor, never on the CPU.
"""

import ctypes
import dataclasses
import json
import os
import struct
import sys
import threading
import types
import warnings
from typing import Optional

import tensorflow as tf

LIBRARY_NAME = "_nestad_ops.so"
GPU_LIBRARY_NAME = "_nestad_ops_gpu.so"
FRAMEWORK_CUDA_LIBRARY_NAME = "_nestad_cuda.so"
BUILD_INFO_NAME = "_build_info.json"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# The ops' namespace (kernels/op_util.h NESTAD_OP_NAMESPACE says the same). It
# reads as the fix: a graph holding these ops, loaded where nestad_tf was not
# imported, fails in TensorFlow with "Op type not registered 'Import_nestad_tf>...'".
OP_NAMESPACE = "Import_nestad_tf"
# The ops, by their names without namespace; `KernelLibrary.module` has one
# wrapper per op, named in snake case (module.fused_activation, ...).
OP_NAMES = (
    "FusedActivation",
    "FusedActivationGrad",
    "ActivationForward",
    "ActivationGradFromOutput",
    "FusedActivationQuantized",
    "ActivationGradQuantized",
    "BatchNormActivation",
    "BatchNormActivationGrad",
)
_REBUILD_HINT = (
    "Rebuild the kernels for this TensorFlow with `pip install --no-build-isolation "
    "--force-reinstall --no-deps <nestad_tf source>`."
)


def op_type(name: str) -> str:
    """The full op type of one of OP_NAMES: op_type("FusedActivation") is
    "Import_nestad_tf>FusedActivation"."""
    return f"{OP_NAMESPACE}>{name}"


def _snake_case(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


@dataclasses.dataclass(frozen=True)
class KernelLibrary:
    """Outcome of loading the kernels: `module` is None when they cannot be used."""

    module: Optional[object]
    path: str
    built_against: Optional[str]
    reason: str
    gpu_reason: str = "not loaded"  # "loaded", or why the GPU kernels are not registered
    # "loaded" when the ops lower to XLA custom calls (jit_compile), or why they do not.
    xla_reason: str = "not loaded"
    gpu_xla: bool = False  # the GPU kernels carry the custom calls' handlers for XLA:GPU

    @property
    def xla(self) -> bool:
        """Whether the ops compile under XLA (their custom-call lowering is built in)."""
        return self.module is not None and self.xla_reason == "loaded"


_lock = threading.Lock()
_result: Optional[KernelLibrary] = None
_warned = False


def library_path() -> str:
    return os.environ.get("NESTAD_TF_LIBRARY", os.path.join(_PACKAGE_DIR, LIBRARY_NAME))


def _read_build_info(path: str) -> dict:
    info_path = os.path.join(os.path.dirname(path), BUILD_INFO_NAME)
    try:
        with open(info_path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _elf_problem(path: str) -> Optional[str]:
    """Why `path` is not a complete ELF shared library, or None.

    dlopen of a truncated library (an interrupted copy or download) can kill the
    process with SIGBUS instead of failing, so the file's extent is checked first:
    the ELF header, every program segment and the section table must lie in the file.
    """
    try:
        with open(path, "rb") as f:
            header = f.read(64)
            size = os.fstat(f.fileno()).st_size
            if len(header) < 52 or header[:4] != b"\x7fELF" or header[4] not in (1, 2):
                return "it is not an ELF shared library"
            order = "<" if header[5] == 1 else ">"
            if header[4] == 2:  # 64-bit
                phoff, shoff = struct.unpack_from(order + "QQ", header, 32)
                phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", header, 54)
            else:
                phoff, shoff = struct.unpack_from(order + "II", header, 28)
                phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", header, 42)
            needed = max(shoff + shentsize * shnum, phoff + phentsize * phnum)
            if needed <= size:
                f.seek(phoff)
                table = f.read(phentsize * phnum)
                for i in range(phnum):
                    entry = table[i * phentsize:(i + 1) * phentsize]
                    if header[4] == 2:
                        offset, filesz = struct.unpack_from(order + "Q16xQ", entry, 8)
                    else:
                        offset, filesz = struct.unpack_from(order + "I8xI", entry, 4)
                    needed = max(needed, offset + filesz)
    except (OSError, struct.error) as error:
        return f"it cannot be read ({error})"
    if needed > size:
        return f"it is truncated ({size} bytes, the ELF headers need {needed})"
    return None


def _load() -> KernelLibrary:
    path = library_path()
    if os.environ.get("NESTAD_TF_DISABLE_KERNELS"):
        return KernelLibrary(None, path, None, "disabled by NESTAD_TF_DISABLE_KERNELS")
    if not os.path.exists(path):
        return KernelLibrary(
            None, path, None,
            f"the kernel library {path} does not exist (installed without kernels?). "
            + _REBUILD_HINT,
        )
    build_info = _read_build_info(path)
    built_against = build_info.get("tensorflow_version")
    if built_against != tf.__version__:
        return KernelLibrary(
            None, path, built_against,
            f"the kernel library was built for TensorFlow {built_against or '(unknown)'} but "
            f"TensorFlow {tf.__version__} is running; a custom op is only safe with the "
            "version it was built against. " + _REBUILD_HINT,
        )
    problem = _elf_problem(path) if sys.platform.startswith("linux") else None
    if problem:
        return KernelLibrary(None, path, built_against,
                             f"loading {path} failed ({problem}). " + _REBUILD_HINT)
    try:
        module = tf.load_op_library(path)
    except (tf.errors.NotFoundError, OSError, RuntimeError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return KernelLibrary(
            None, path, built_against,
            f"loading {path} failed ({message}). " + _REBUILD_HINT,
        )
    # tf.load_op_library names each wrapper after the full op type:
    # "Import_nestad_tf>FusedActivation" -> import_nestad_tf_fused_activation.
    wrappers = {_snake_case(name): getattr(module, f"{OP_NAMESPACE.lower()}_{_snake_case(name)}", None)
                for name in OP_NAMES}
    missing = [op_type(name) for name in OP_NAMES if wrappers[_snake_case(name)] is None]
    if missing:
        return KernelLibrary(
            None, path, built_against,
            f"{path} loaded but does not define the nestad ops ({', '.join(missing)} missing): "
            "it is not this version of nestad_tf's kernel library. " + _REBUILD_HINT,
        )
    xla_reason = ("loaded" if build_info.get("xla") else
                  "the library was built without XLA's headers (no custom-call lowering)")
    gpu_reason = _load_gpu_kernels(path, build_info)
    gpu_xla = gpu_reason == "loaded" and bool((build_info.get("cuda") or {}).get("xla"))
    return KernelLibrary(types.SimpleNamespace(**wrappers), path, built_against, "loaded",
                         gpu_reason, xla_reason, gpu_xla)


def _load_gpu_kernels(path: str, build_info: dict) -> str:
    """Registers the GPU kernels beside the CPU library; returns "loaded" or why not."""
    if not tf.test.is_built_with_cuda():
        return "TensorFlow is not a CUDA build"
    if not build_info.get("cuda"):
        return "built without GPU kernels (no CUDA TensorFlow or no nvcc at build time)"
    gpu_path = os.path.join(os.path.dirname(path), GPU_LIBRARY_NAME)
    try:
        tf.load_op_library(gpu_path)
    except (tf.errors.NotFoundError, OSError, RuntimeError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(
            f"nestad_tf: GPU kernels unavailable, the fused ops run on the CPU: loading "
            f"{gpu_path} failed ({message}). " + _REBUILD_HINT,
            RuntimeWarning,
            stacklevel=4,
        )
        return f"loading {gpu_path} failed ({message})"
    return "loaded"


@dataclasses.dataclass(frozen=True)
class CudaLibrary:
    """The CUDA kernels of Keras' torch/JAX backends: `cdll` is None when they cannot run."""

    cdll: Optional[ctypes.CDLL]
    path: str
    reason: str  # "loaded", or why the kernels cannot run on CUDA tensors here


_cuda_result: Optional[CudaLibrary] = None


def _load_framework_cuda() -> CudaLibrary:
    path = os.path.join(os.path.dirname(library_path()), FRAMEWORK_CUDA_LIBRARY_NAME)
    if os.environ.get("NESTAD_TF_DISABLE_KERNELS"):
        return CudaLibrary(None, path, "disabled by NESTAD_TF_DISABLE_KERNELS")
    if not _read_build_info(path).get("framework_cuda") or not os.path.exists(path):
        return CudaLibrary(None, path, "nestad_tf was built without CUDA kernels for torch/JAX "
                           "(no nvcc, or no CUDA build of torch or JAX, at build time; "
                           "NESTAD_FRAMEWORK_CUDA=1 builds them)")
    problem = _elf_problem(path) if sys.platform.startswith("linux") else None
    if problem:
        return CudaLibrary(None, path, f"loading {path} failed ({problem}). " + _REBUILD_HINT)
    try:
        cdll = ctypes.CDLL(path)
    except OSError as error:
        return CudaLibrary(None, path, f"loading {path} failed ({error}). " + _REBUILD_HINT)
    error = ctypes.create_string_buffer(512)
    cdll.nestad_cuda_device_error.argtypes = [ctypes.c_char_p, ctypes.c_int64]
    cdll.nestad_cuda_device_error.restype = ctypes.c_int
    if cdll.nestad_cuda_device_error(error, len(error)):
        return CudaLibrary(None, path, "the CUDA runtime of nestad's kernels finds no usable "
                           f"device ({error.value.decode()})")
    return CudaLibrary(cdll, path, "loaded")


def load_framework_cuda() -> CudaLibrary:
    """Loads `_nestad_cuda.so` on first use and asks its CUDA runtime for a device; later
    calls return the same result."""
    global _cuda_result
    with _lock:
        if _cuda_result is None:
            _cuda_result = _load_framework_cuda()
        return _cuda_result


def load() -> KernelLibrary:
    """Loads the library on first use; later calls return the same result."""
    global _result
    with _lock:
        if _result is None:
            _result = _load()
        return _result


def warn_once_unavailable() -> None:
    """Emits the one warning that says why the kernels are not used."""
    global _warned
    result = load()
    if result.module is None and not _warned:
        _warned = True
        warnings.warn(
            "nestad_tf: fused kernels unavailable, using the pure-TensorFlow path "
            f"(same values and derivatives, slower): {result.reason}",
            RuntimeWarning,
            stacklevel=3,
        )


def _reset_for_tests() -> None:
    """Forgets the loading result and the warning (tests simulate broken installs)."""
    global _result, _warned, _cuda_result
    with _lock:
        _result = None
        _cuda_result = None
        _warned = False
