"""Builds nestad_tf: the Python package plus its C++ kernels.

The kernels are compiled against the TensorFlow installed in the *building*
Python, with the flags `tf.sysconfig` reports, so install with

    pip install --no-build-isolation .        (or -e . for development)

The library records the TF version it was built for (nestad_tf/_build_info.json);
at import, a different TF version means the pure-TF path and one warning.

Environment:
  NESTAD_TF_NO_KERNELS=1  install without kernels (pure-TF path only).
  CXX                     the C++ compiler (default: g++ / the Python build's).

GPU kernels: when the installed TensorFlow is a CUDA build (its wheel ships the
CUDA headers) and nvcc is found, kernels/cuda/ is also compiled, into
nestad_tf/_nestad_ops_gpu.so (loaded only under CUDA TensorFlow); otherwise the
CPU-only build proceeds unchanged.
For Keras' torch and JAX backends on CUDA, the same kernels without TensorFlow
(kernels/cuda/*.cu, their C interface c_api_gpu.cc and the XLA:GPU handlers)
go into nestad_tf/_nestad_cuda.so, with the CUDA runtime linked in statically;
built when nvcc is found and a CUDA build of torch or a CUDA plugin of JAX is
installed, or when asked for:
  NESTAD_FRAMEWORK_CUDA=1 build _nestad_cuda.so wherever nvcc is found (=0: never).
  NESTAD_TF_NO_CUDA=1     skip all GPU kernels even where they could be built.
  NVCC                    the CUDA compiler (default: nvcc on PATH, then $CUDA_HOME/bin,
                          /usr/local/cuda/bin).
  NESTAD_CUDA_ARCHS       GPU architectures, e.g. "80;90" (the default): SASS for
                          each plus PTX of the lowest, which newer GPUs JIT-compile.
"""

import concurrent.futures
import json
import os
import platform
import shutil
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
KERNEL_SOURCES = [
    "kernels/fused_activation_ops.cc", "kernels/storage_ops.cc",
    "kernels/batch_norm_activation_ops.cc", "kernels/c_api.cc",
]
# The XLA lowering of the same ops (custom calls) and their XLA FFI handlers for
# XLA:CPU; built when the installed TensorFlow ships XLA's headers (see _xla_build_flags).
XLA_SOURCES = ["kernels/xla_lowering.cc", "kernels/xla_cpu_ffi.cc"]
# Headers that XLA's own headers include from TF's include/external/ tree.
XLA_INCLUDE_SUBDIRS = ["external/highwayhash", "external/farmhash_archive/src"]
# The TF library that exports XLA's op registry, custom-call registry and FFI API
# (already loaded by TensorFlow's Python module, so no rpath is needed).
XLA_LINK_LIBRARY = "-l:libtensorflow_cc.so.2"

# Portable and vectorized: no -march=native, no -ffast-math; the element loops
# carry target_clones (AVX-512 / AVX2+FMA / baseline, chosen at load time) and
# call glibc's vector math (libmvec), which needs -fno-math-errno.
# -fno-trapping-math: the functors' selects (x >= 0 ? 1 / (1 + z) : z / (1 + z))
# compute both sides; with trapping math g++ if-converts them only with AVX-512's
# masked operations, so the AVX2 and baseline clones stayed scalar (expf per
# element: gelu 5x slower than TensorFlow's own ops on an AVX2 CPU). No FP
# exception is ever unmasked here; the values are unchanged (it is not -ffast-math).
# -ffp-contract=off: no fused multiply-adds, so the same expression rounds the
# same way in every op (fused, forward-only, quantized) and every clone.
CXX_FLAGS = [
    "-O3", "-g0", "-fPIC", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
    "-fvisibility=hidden",
    "-Wno-deprecated-declarations", "-Wno-interference-size", "-Wno-unused-function",
]


def _xla_build_flags():
    """(compile flags, link flags) for XLA_SOURCES, or (None, why not)."""
    if os.environ.get("NESTAD_TF_NO_XLA"):
        return None, "NESTAD_TF_NO_XLA is set"
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    include, lib = tf.sysconfig.get_include(), tf.sysconfig.get_lib()
    needed = [os.path.join(include, "xla", "ffi", "api", "ffi.h"),
              os.path.join(include, "tensorflow", "compiler", "tf2xla", "xla_op_kernel.h")]
    needed += [os.path.join(include, d) for d in XLA_INCLUDE_SUBDIRS]
    missing = [path for path in needed if not os.path.exists(path)]
    if missing:
        return None, f"TensorFlow {tf.__version__} ships no XLA headers ({missing[0]} is missing)"
    if not os.path.exists(os.path.join(lib, XLA_LINK_LIBRARY[3:])):
        return None, f"TensorFlow {tf.__version__} has no {XLA_LINK_LIBRARY[3:]} in {lib}"
    return ["-I" + os.path.join(include, d) for d in XLA_INCLUDE_SUBDIRS], [XLA_LINK_LIBRARY]


def _compile_and_link(compile_commands, link_command, what, hint):
    """Runs the compile commands on all cores, then the link command; on a failure,
    SystemExit with the compiler's error, what was being built and `hint`."""

    def run(command):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(
                f"nestad_tf: compiling {what} failed.\n  command: " + " ".join(command)
                + "\n" + result.stderr[-4000:] + "\n" + hint
            )

    workers = min(len(compile_commands), os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, compile_commands))
    run(link_command)


def _tensorflow_build_flags():
    try:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
    except ImportError as error:
        raise SystemExit(
            "nestad_tf compiles its kernels against the installed TensorFlow, but "
            f"`import tensorflow` failed in {sys.executable} ({error}). Install TensorFlow "
            "first (pip install -r requirements.txt) and build with "
            "`pip install --no-build-isolation .` so the build sees it, or set "
            "NESTAD_TF_NO_KERNELS=1 for a pure-TF install."
        )
    include = tf.sysconfig.get_include()
    if not os.path.exists(os.path.join(include, "tensorflow", "core", "framework", "op_kernel.h")):
        raise SystemExit(
            f"TensorFlow {tf.__version__} has no C++ headers under {include}; the kernels "
            "cannot be built. Set NESTAD_TF_NO_KERNELS=1 for a pure-TF install."
        )
    return tf.__version__, tf.sysconfig.get_compile_flags(), tf.sysconfig.get_link_flags()


GPU_LIBRARY_NAME = "_nestad_ops_gpu.so"
CUDA_DIR = os.path.join(ROOT, "kernels", "cuda")
# kernels/cuda/*.cu: the kernels (nvcc, no TF headers); kernels/cuda/*_ops.cc: their TF op
# glue (the C++ compiler, against TF's CUDA headers). .ci/cuda_check.sh uses the same rule.
GPU_GLUE_SUFFIX = "_ops.cc"
# kernels/cuda/*_ffi.cc: the XLA FFI handlers (the C++ compiler, XLA's header-only FFI API),
# built into the GPU library when the CPU library gets its XLA lowering.
GPU_FFI_SUFFIX = "_ffi.cc"


def _find_nvcc():
    candidates = [os.environ.get("NVCC"), shutil.which("nvcc")]
    candidates += [os.path.join(d, "bin", "nvcc")
                   for d in (os.environ.get("CUDA_HOME"), "/usr/local/cuda") if d]
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)),
                None)


def _cuda_build_plan():
    """(nvcc, TF's CUDA include dir) when the GPU kernels can be built, else (None, reason)."""
    if os.environ.get("NESTAD_TF_NO_CUDA"):
        return None, "NESTAD_TF_NO_CUDA is set"
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not tf.sysconfig.get_build_info().get("is_cuda_build"):
        return None, f"TensorFlow {tf.__version__} is not a CUDA build"
    cuda_include = os.path.join(tf.sysconfig.get_include(), "third_party", "gpus", "cuda",
                                "include")
    if not os.path.exists(os.path.join(cuda_include, "cuda_runtime.h")):
        return None, f"TensorFlow ships no CUDA headers under {cuda_include}"
    nvcc = _find_nvcc()
    if nvcc is None:
        return None, "nvcc was not found (set NVCC)"
    return (nvcc, cuda_include), ""


FRAMEWORK_CUDA_LIBRARY_NAME = "_nestad_cuda.so"
# The C interface of the CUDA kernels for torch (host C++ compiled by nvcc).
FRAMEWORK_CUDA_C_API = "c_api_gpu.cc"


def _framework_cuda_wanted():
    """"" when torch or JAX here can run CUDA kernels (or NESTAD_FRAMEWORK_CUDA=1), else why not."""
    forced = os.environ.get("NESTAD_FRAMEWORK_CUDA", "")
    if forced:
        return "" if forced == "1" else f"NESTAD_FRAMEWORK_CUDA={forced}"
    import importlib.util  # pylint: disable=g-import-not-at-top
    if any(importlib.util.find_spec(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin")):
        return ""
    if importlib.util.find_spec("torch") is not None:
        import torch  # pylint: disable=g-import-not-at-top
        if torch.version.cuda:
            return ""
    return "neither a CUDA build of torch nor a CUDA plugin of JAX is installed"


def _framework_cuda_plan():
    """(nvcc, XLA FFI include flags) when _nestad_cuda.so is to be built, else (None, reason)."""
    if os.environ.get("NESTAD_TF_NO_CUDA"):
        return None, "NESTAD_TF_NO_CUDA is set"
    why_not = _framework_cuda_wanted()
    if why_not:
        return None, why_not
    nvcc = _find_nvcc()
    if nvcc is None:
        return None, "nvcc was not found (set NVCC)"
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not os.path.exists(os.path.join(tf.sysconfig.get_include(), "xla", "ffi", "api", "ffi.h")):
        return None, f"TensorFlow {tf.__version__} ships no XLA FFI headers"
    return (nvcc, ["-I" + tf.sysconfig.get_include()]), ""


def _nvcc_flags():
    """kernels/cuda/nvcc_flags.txt (shared with .ci/cuda_check.sh) plus the architectures."""
    with open(os.path.join(CUDA_DIR, "nvcc_flags.txt")) as f:
        flags = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    archs = sorted({a.strip() for a in os.environ.get("NESTAD_CUDA_ARCHS", "80;90")
                    .replace(",", ";").split(";") if a.strip()}, key=int)
    codes = ",".join([f"sm_{a}" for a in archs] + [f"compute_{archs[0]}"])
    return flags + [f"-gencode=arch=compute_{archs[0]},code=[{codes}]"]


def _build_gpu_library(output, compiler, compile_flags, link_flags, nvcc, cuda_include, temp,
                       xla_link_flags):
    """Compiles kernels/cuda/*.cu with nvcc (no TF headers), the op glue with the C++
    compiler against TF's CUDA headers and, with `xla_link_flags`, the XLA FFI handlers, in
    parallel, and links them into `output`. The CUDA runtime is not linked: CUDA
    TensorFlow's framework library exports it."""
    os.makedirs(temp, exist_ok=True)
    include = ["-I" + os.path.join(ROOT, "kernels")]
    jobs = []
    for name in sorted(os.listdir(CUDA_DIR)):
        if name.endswith(".cu"):
            obj = os.path.join(temp, name + ".o")
            jobs.append(([nvcc] + _nvcc_flags() + include
                         + ["-c", os.path.join(CUDA_DIR, name), "-o", obj], obj))
    for name in sorted(os.listdir(CUDA_DIR)):
        if name.endswith(GPU_GLUE_SUFFIX):
            glue_obj = os.path.join(temp, name + ".o")
            jobs.append(([compiler, "-c"] + CXX_FLAGS + compile_flags + include
                         + ["-I" + cuda_include, "-DGOOGLE_CUDA=1", os.path.join(CUDA_DIR, name),
                            "-o", glue_obj], glue_obj))
        if name.endswith(GPU_FFI_SUFFIX) and xla_link_flags:
            ffi_obj = os.path.join(temp, name + ".o")
            jobs.append(([compiler, "-c"] + CXX_FLAGS + compile_flags + include
                         + [os.path.join(CUDA_DIR, name), "-o", ffi_obj], ffi_obj))
    _compile_and_link(
        [command for command, _ in jobs],
        [compiler, "-shared", "-fPIC"] + [obj for _, obj in jobs] + ["-o", output] + link_flags
        + xla_link_flags,
        "the GPU kernels",
        "Fix the error above, or set NESTAD_TF_NO_CUDA=1 to install the CPU kernels only.")
    return {"library": os.path.basename(output), "nvcc": nvcc, "nvcc_flags": _nvcc_flags(),
            "xla": bool(xla_link_flags)}


def _build_framework_cuda_library(output, compiler, nvcc, ffi_include, temp):
    """Compiles kernels/cuda/*.cu and c_api_gpu.cc with nvcc and the XLA:GPU handlers with
    the C++ compiler (not registered with TensorFlow: JAX registers them), and links them
    with the CUDA runtime (static) into `output`, which needs no TensorFlow."""
    os.makedirs(temp, exist_ok=True)
    include = ["-I" + os.path.join(ROOT, "kernels")]
    jobs = []
    for name in sorted(os.listdir(CUDA_DIR)):
        obj = os.path.join(temp, name + ".o")
        if name.endswith(".cu") or name == FRAMEWORK_CUDA_C_API:
            jobs.append(([nvcc] + _nvcc_flags() + include
                         + ["-c", os.path.join(CUDA_DIR, name), "-o", obj], obj))
        elif name.endswith(GPU_FFI_SUFFIX):
            jobs.append(([compiler, "-c"] + CXX_FLAGS + ["--std=c++17"] + ffi_include + include
                         + ["-DNESTAD_XLA_FFI_UNREGISTERED", os.path.join(CUDA_DIR, name),
                            "-o", obj], obj))
    _compile_and_link(
        [command for command, _ in jobs],
        [nvcc, "-shared", "-cudart=static"] + _nvcc_flags()[-1:] + [obj for _, obj in jobs]
        + ["-o", output],
        "the CUDA kernels for torch/JAX",
        "Fix the error above, or set NESTAD_FRAMEWORK_CUDA=0 to build without them.")
    return {"library": os.path.basename(output), "nvcc": nvcc, "nvcc_flags": _nvcc_flags()}


class BuildKernels(build_ext):
    """Compiles kernels/ into nestad_tf/_nestad_ops.so and records the TF version."""

    def build_extensions(self):
        if os.environ.get("NESTAD_TF_NO_KERNELS"):
            print("nestad_tf: NESTAD_TF_NO_KERNELS is set: installing without kernels")
            return
        compiler = os.environ.get("CXX", "g++")
        if shutil.which(compiler) is None:
            raise SystemExit(
                f"nestad_tf: the C++ compiler '{compiler}' was not found. Install one "
                "(e.g. `apt-get install g++`), point CXX at it, or set NESTAD_TF_NO_KERNELS=1 "
                "for a pure-TF install."
            )
        tf_version, compile_flags, link_flags = _tensorflow_build_flags()
        for ext in self.extensions:
            output = self.get_ext_fullpath(ext.name)
            os.makedirs(os.path.dirname(output), exist_ok=True)
            xla_compile_flags, xla_link_flags = _xla_build_flags()
            sources = list(ext.sources)
            if xla_compile_flags is None:
                print(f"nestad_tf: no XLA lowering ({xla_link_flags}): under jit_compile the "
                      "ops fall back to the pure-TF path")
                xla_compile_flags, xla_link_flags = [], []
            else:
                sources += XLA_SOURCES
            temp = os.path.join(self.build_temp, "kernels")
            os.makedirs(temp, exist_ok=True)
            objects = [os.path.join(temp, os.path.basename(s) + ".o") for s in sources]
            compile_commands = [
                [compiler, "-c"] + CXX_FLAGS + compile_flags + xla_compile_flags
                + ["-I" + os.path.join(ROOT, "kernels"), os.path.join(ROOT, source), "-o", obj]
                for source, obj in zip(sources, objects)
            ]
            link_command = ([compiler, "-shared", "-fPIC"] + objects + ["-o", output] + link_flags
                            + xla_link_flags + ["-lmvec", "-lm"])
            print("nestad_tf: compiling kernels against TensorFlow", tf_version)
            _compile_and_link(compile_commands, link_command, "the kernels",
                              "Fix the compiler error above, or set NESTAD_TF_NO_KERNELS=1 for a "
                              "pure-TF install.")
            info = {
                "tensorflow_version": tf_version,
                "compiler": compiler,
                "flags": CXX_FLAGS,
                "machine": platform.machine(),
                "xla": bool(xla_link_flags),
            }
            info["cuda"] = self._build_optional_library(
                output, GPU_LIBRARY_NAME, "GPU kernels for TensorFlow", _cuda_build_plan(),
                lambda path, nvcc, cuda_include: _build_gpu_library(
                    path, compiler, compile_flags, link_flags, nvcc, cuda_include,
                    os.path.join(self.build_temp, "cuda"), xla_link_flags))
            info["framework_cuda"] = self._build_optional_library(
                output, FRAMEWORK_CUDA_LIBRARY_NAME, "CUDA kernels for torch/JAX",
                _framework_cuda_plan(),
                lambda path, nvcc, ffi_include: _build_framework_cuda_library(
                    path, compiler, nvcc, ffi_include,
                    os.path.join(self.build_temp, "framework_cuda")))
            info_path = os.path.join(os.path.dirname(output), "_build_info.json")
            with open(info_path, "w") as f:
                json.dump(info, f, indent=2)
            self._build_infos = getattr(self, "_build_infos", []) + [info_path]

    def _build_optional_library(self, output, name, what, plan_and_reason, build):
        """build(path, *plan) of an optional library `name` beside `output`, or a line saying
        why not; returns its build-info entry (None when not built)."""
        plan, reason = plan_and_reason
        if plan is None:
            print(f"nestad_tf: no {what} ({reason})")
            return None
        print(f"nestad_tf: compiling {what} with", plan[0])
        path = os.path.join(os.path.dirname(output), name)
        entry = build(path, *plan)
        self._gpu_libraries = getattr(self, "_gpu_libraries", []) + [path]
        return entry

    def copy_extensions_to_source(self):
        # Editable installs: the build info travels with the library.
        super().copy_extensions_to_source()
        for built in getattr(self, "_build_infos", []):
            shutil.copy(built, os.path.join(ROOT, "nestad_tf", "_build_info.json"))
        for built in getattr(self, "_gpu_libraries", []):
            shutil.copy(built, os.path.join(ROOT, "nestad_tf", os.path.basename(built)))

    def get_ext_filename(self, ext_name):
        # A plain `.so`, loaded with tf.load_op_library (not a Python extension module).
        return os.path.join(*ext_name.split(".")) + ".so"


setup(
    name="nestad_tf",
    version="0.1.0",
    description="Memory-efficient activations for TensorFlow/Keras: keep only f'(x) for backprop",
    long_description=open(os.path.join(ROOT, "README.md")).read()
    if os.path.exists(os.path.join(ROOT, "README.md")) else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["nestad_tf", "nestad_tf.*"]),
    package_data={"nestad_tf": ["fewbit_tables.json"]},
    python_requires=">=3.9",
    # TensorFlow itself is not listed: `tensorflow` and `tensorflow-cpu` are
    # different distributions and either one works; see requirements.txt.
    install_requires=["keras>=3.0", "numpy"],
    # Keras 3's other backends (nestad_tf.frameworks): `pip install .[torch]` / `.[jax]`.
    # CI installs the versions in requirements-frameworks.txt first (torch's CPU wheel).
    extras_require={"torch": ["torch>=2.4"], "jax": ["jax>=0.5"]},
    ext_modules=[Extension("nestad_tf._nestad_ops", sources=KERNEL_SOURCES)],
    cmdclass={"build_ext": BuildKernels},
    zip_safe=False,
)
