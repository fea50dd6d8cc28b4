"""Prints the build flags for nestad_tf's kernels, one `key=value` per line.

Run by the `tensorflow_configure` repository rule with the Python whose
TensorFlow the kernels are built against:

    python query_build_flags.py <path to setup.py>

Keys (repeated keys are lists, in order):
  tf_version     tf.__version__
  compile_flag   each of tf.sysconfig.get_compile_flags()
  link_flag      each of tf.sysconfig.get_link_flags()
  cxx_flag       each entry of CXX_FLAGS in setup.py        } read with ast, not executed:
  kernel_source  each entry of KERNEL_SOURCES in setup.py   } one list for both builds.
  xla_source     each entry of XLA_SOURCES in setup.py      }
  xla_include    TF's include dir joined with each of XLA_INCLUDE_SUBDIRS (the
                 directories XLA's headers need), relative to the include dir
  xla_link_flag  XLA_LINK_LIBRARY of setup.py
"""

import ast
import os
import sys


def setup_py_list(setup_py, name):
    """The literal (list or string) assigned to the top-level `name` in setup.py."""
    with open(setup_py) as f:
        tree = ast.parse(f.read(), setup_py)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            return ast.literal_eval(node.value)
    raise SystemExit(f"no top-level `{name} = [...]` list found in {setup_py}")


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    cxx_flags = setup_py_list(sys.argv[1], "CXX_FLAGS")
    kernel_sources = setup_py_list(sys.argv[1], "KERNEL_SOURCES")
    xla_sources = setup_py_list(sys.argv[1], "XLA_SOURCES")
    xla_includes = setup_py_list(sys.argv[1], "XLA_INCLUDE_SUBDIRS")
    xla_link_flag = setup_py_list(sys.argv[1], "XLA_LINK_LIBRARY")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError as error:
        raise SystemExit(
            f"`import tensorflow` failed in {sys.executable} ({error}); the kernels are built "
            "against the TensorFlow of this Python. Install it, or point PYTHON_BIN_PATH at a "
            "Python that has it."
        )
    lines = [f"tf_version={tf.__version__}"]
    lines += [f"compile_flag={flag}" for flag in tf.sysconfig.get_compile_flags()]
    lines += [f"link_flag={flag}" for flag in tf.sysconfig.get_link_flags()]
    lines += [f"cxx_flag={flag}" for flag in cxx_flags]
    lines += [f"kernel_source={source}" for source in kernel_sources]
    lines += [f"xla_source={source}" for source in xla_sources]
    lines += [f"xla_include={subdir}" for subdir in xla_includes]
    lines += [f"xla_link_flag={xla_link_flag}"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
