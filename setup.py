"""Builds nestad_tf: the Python package plus its C++ kernels.

The kernels are compiled against the TensorFlow installed in the *building*
Python, with the flags `tf.sysconfig` reports, so install with

    pip install --no-build-isolation .        (or -e . for development)

The library records the TF version it was built for (nestad_tf/_build_info.json);
at import, a different TF version means the pure-TF path and one warning.

Environment:
  NESTAD_TF_NO_KERNELS=1  install without kernels (pure-TF path only).
  CXX                     the C++ compiler (default: g++ / the Python build's).
"""

import json
import os
import platform
import shutil
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
KERNEL_SOURCES = ["kernels/fused_activation_ops.cc"]

# Portable and vectorized: no -march=native, no -ffast-math; the element loops
# carry target_clones (AVX-512 / AVX2+FMA / baseline, chosen at load time) and
# call glibc's vector math (libmvec), which needs -fno-math-errno.
CXX_FLAGS = [
    "-O3", "-g0", "-fPIC", "-fno-math-errno", "-fvisibility=hidden",
    "-Wno-deprecated-declarations", "-Wno-interference-size", "-Wno-unused-function",
]


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
            command = (
                [compiler, "-shared"] + CXX_FLAGS + compile_flags
                + ["-I" + os.path.join(ROOT, "kernels")]
                + [os.path.join(ROOT, s) for s in ext.sources]
                + ["-o", output] + link_flags + ["-lmvec", "-lm"]
            )
            print("nestad_tf: compiling kernels against TensorFlow", tf_version)
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(
                    "nestad_tf: compiling the kernels failed.\n  command: "
                    + " ".join(command) + "\n" + result.stderr[-4000:]
                    + "\nFix the compiler error above, or set NESTAD_TF_NO_KERNELS=1 for a "
                    "pure-TF install."
                )
            info = {
                "tensorflow_version": tf_version,
                "compiler": compiler,
                "flags": CXX_FLAGS,
                "machine": platform.machine(),
            }
            info_path = os.path.join(os.path.dirname(output), "_build_info.json")
            with open(info_path, "w") as f:
                json.dump(info, f, indent=2)
            self._build_infos = getattr(self, "_build_infos", []) + [info_path]

    def copy_extensions_to_source(self):
        # Editable installs: the build info travels with the library.
        super().copy_extensions_to_source()
        for built in getattr(self, "_build_infos", []):
            shutil.copy(built, os.path.join(ROOT, "nestad_tf", "_build_info.json"))

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
    python_requires=">=3.9",
    # TensorFlow itself is not listed: `tensorflow` and `tensorflow-cpu` are
    # different distributions and either one works; see requirements.txt.
    install_requires=["keras>=3.0", "numpy"],
    ext_modules=[Extension("nestad_tf._nestad_ops", sources=KERNEL_SOURCES)],
    cmdclass={"build_ext": BuildKernels},
    zip_safe=False,
)
