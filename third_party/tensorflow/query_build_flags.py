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
"""

import ast
import os
import sys


def setup_py_list(setup_py, name):
    """The literal list assigned to the top-level `name` in setup.py."""
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
    print("\n".join(lines))


if __name__ == "__main__":
    main()
