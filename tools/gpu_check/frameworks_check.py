"""nestad's CUDA kernels through the interfaces of Keras' torch and JAX backends, on a GPU.

    python tools/gpu_check/frameworks_check.py [--library PATH] [--only torch|jax]
    python tools/gpu_check/frameworks_check.py --self-check    no GPU: the same checks on
        the CPU (torch: CPU tensors through kernels/c_api.cc; JAX: the Host handlers; needs
        nestad_tf and TensorFlow), which checks this script's calls, references, tolerances

Needs a CUDA GPU and a CUDA build of torch and/or JAX; no TensorFlow or Keras (the
library, nestad_tf/_nestad_cuda.so, links neither: build it with
`NESTAD_FRAMEWORK_CUDA=1 pip install --no-build-isolation -e .` anywhere nvcc is, and
carry it). What nestad_tf/frameworks does on CUDA tensors, checked against each
framework's own activations and autodiff in float64 on the same rounded inputs:

- torch: nestad_cuda_fused_forward / _fused_backward (f' kept exactly),
  _forward_only / _backward_from_output (y kept: sigmoid, tanh), _quantized_forward /
  _quantized_backward (f' in 8 bits), every dtype, on a stream of its own (not the
  default one), and on the last GPU while another is current.
- JAX: the XLA:GPU handlers (nestad_xla_ffi_cuda_handler) registered with jax.ffi for
  "CUDA", inside jax.jit, float32 and bfloat16.

One line per check, then a summary; exit status 1 on any mismatch, 2 if nothing ran
(no usable device: the reason is printed).
The kernels' accuracy over every activation and their bandwidth: tools/gpu_check/run.sh.
"""

import argparse
import ast
import ctypes
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# (kernel name, torch reference); parameterless activations of kernels/activations.def.
ACTIVATIONS = {
    "silu": lambda t, F: F.silu(t),
    "gelu": lambda t, F: F.gelu(t),
    "gelu_approximate": lambda t, F: F.gelu(t, approximate="tanh"),
    "mish": lambda t, F: F.mish(t),
    "sigmoid": lambda t, F: t.sigmoid(),
    "tanh": lambda t, F: t.tanh(),
    "softplus": lambda t, F: F.softplus(t),
    "softsign": lambda t, F: F.softsign(t),
    "hard_silu": lambda t, F: F.hardswish(t),
    "hard_sigmoid": lambda t, F: F.hardsigmoid(t),
    "selu": lambda t, F: F.selu(t),
    "log_sigmoid": lambda t, F: F.logsigmoid(t),
}
FROM_OUTPUT = ("sigmoid", "tanh")  # f' is a function of y: only y is kept


def conftest_tolerances():
    """TOLERANCES of tests/conftest.py as {dtype name: (rtol, atol)}, read with ast (the file
    imports TensorFlow), as tools/gpu_check/run.sh reads them."""
    with open(os.path.join(ROOT, "tests", "conftest.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "TOLERANCES":
            return {key.attr: tuple(ast.literal_eval(k.value) for k in value.keywords
                                    if k.arg in ("rtol", "atol"))
                    for key, value in zip(node.value.keys, node.value.values)}
    raise SystemExit("frameworks_check: no TOLERANCES in tests/conftest.py")


TOLERANCE = conftest_tolerances()  # dtype name -> (rtol, atol)
DTYPE_CODES = {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3}
UINT8_RANGE = (-0.25, 1.25)  # covers f' of silu, gelu and mish
N = 1 << 16


class Report:
    def __init__(self):
        self.failed = self.passed = 0

    def check(self, what, actual, expected, tolerance):
        """actual vs expected (float64 numpy, NaN where expected is NaN) within
        tolerance = (rtol, atol)."""
        rtol, atol = tolerance
        error = np.abs(actual - expected)
        bad = ~((error <= atol + rtol * np.abs(expected))
                | (np.isnan(actual) & np.isnan(expected)) | (actual == expected))
        ok = not bad.any()
        self.passed += ok
        self.failed += not ok
        worst = float(np.nanmax(np.where(np.isfinite(error), error, 0.0))) if error.size else 0.0
        detail = "" if ok else f"  {int(bad.sum())} of {bad.size} off, first at x index {int(np.argmax(bad))}"
        print(f"{'ok  ' if ok else 'FAIL'} {what}: max |error| {worst:.3g} (rtol {rtol:g}, atol {atol:g}){detail}")


def load_library(path):
    lib = ctypes.CDLL(path)
    error = ctypes.create_string_buffer(512)
    if lib.nestad_cuda_device_error(error, ctypes.c_int64(len(error))):
        print(f"frameworks_check: {path}: no usable CUDA device ({error.value.decode()})",
              file=sys.stderr)
        sys.exit(2)
    return lib


def sample(seed=0):
    """Inputs over [-8, 8] plus edge values (float64 numpy)."""
    rng = np.random.default_rng(seed)
    edges = [0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 1e4, -1e4, np.inf, -np.inf, np.nan]
    return np.concatenate([edges, rng.uniform(-8.0, 8.0, N - len(edges))])


# --- torch ---


def check_torch(lib, report, self_check=False):
    """lib: _nestad_cuda.so; with self_check, the CPU library and CPU tensors instead."""
    import torch  # pylint: disable=g-import-not-at-top
    import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

    if not self_check and not torch.cuda.is_available():
        print("torch: no CUDA device visible to torch, skipped")
        return
    error = ctypes.create_string_buffer(512)

    def call(name, *args, device):
        if device.type == "cpu":  # kernels/c_api.cc: the thread count where CUDA has device, stream
            function, tail = "nestad_" + name, (1,)
        else:
            function = "nestad_cuda_" + name
            tail = (device.index, ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream))
        if getattr(lib, function)(*args, *tail, error, ctypes.c_int64(len(error))):
            raise RuntimeError(f"{function}: {error.value.decode()}")

    def synchronize(device):
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def ptr(t):
        return ctypes.c_void_p(t.data_ptr())

    no_params = (ctypes.c_float * 1)(0.0)
    n = ctypes.c_int64(N)

    def reference(name, x):
        """(y, f') in float64 by torch's autograd of its own activation, as numpy."""
        x64 = x.double().detach().requires_grad_(True)
        y = ACTIVATIONS[name](x64, F)
        (d,) = torch.autograd.grad(y.sum(), x64)
        return y.detach().cpu().numpy(), d.cpu().numpy()

    def run_dtype(name, dtype_name, device, label):
        dtype = getattr(torch, dtype_name)
        x = torch.as_tensor(sample(), device=device).to(dtype)
        y_ref, d_ref = reference(name, x)
        dy = torch.linspace(-2.0, 2.0, N, device=device).to(dtype)
        code = DTYPE_CODES[dtype_name]
        tolerance = TOLERANCE[dtype_name]
        y, d, dx = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
        call("fused_forward", name.encode(), no_params, 0, code, ptr(x), ptr(y), ptr(d), n,
             device=device)
        call("fused_backward", code, ptr(dy), ptr(d), ptr(dx), n, device=device)
        synchronize(device)
        # where torch's own y or f' is not finite (x*sigmoid(x) at -inf is NaN there) the
        # kernels take the limits the tests check; compared here where both are finite
        finite = np.isfinite(y_ref) & np.isfinite(d_ref)
        report.check(f"torch {label} {name} {dtype_name} y", y.double().cpu().numpy()[finite],
                     y_ref[finite], tolerance)
        report.check(f"torch {label} {name} {dtype_name} f'", d.double().cpu().numpy()[finite],
                     d_ref[finite], tolerance)
        dx_ref = dy.double().cpu().numpy() * d.double().cpu().numpy()
        report.check(f"torch {label} {name} {dtype_name} dx = dy f'", dx.double().cpu().numpy(),
                     dx_ref.astype(np.float64), tolerance)
        if name in FROM_OUTPUT:
            y_only, dx_from_y = torch.empty_like(x), torch.empty_like(x)
            call("forward_only", name.encode(), no_params, 0, code, ptr(x), ptr(y_only), n,
                 device=device)
            call("backward_from_output", name.encode(), no_params, 0, code, ptr(dy), ptr(y_only),
                 ptr(dx_from_y), n, device=device)
            synchronize(device)
            report.check(f"torch {label} {name} {dtype_name} forward_only y",
                         y_only.double().cpu().numpy()[finite], y_ref[finite], tolerance)
            expected = (dy.double().cpu().numpy() * d_ref)[finite]
            report.check(f"torch {label} {name} {dtype_name} dx from y",
                         dx_from_y.double().cpu().numpy()[finite], expected,
                         tuple(2 * t for t in tolerance))

    def run_uint8(name, device):
        x = torch.as_tensor(sample(), device=device, dtype=torch.float32)
        _, d_ref = reference(name, x)
        dy = torch.ones_like(x)
        y, dx = torch.empty_like(x), torch.empty_like(x)
        packed = torch.empty(N, dtype=torch.uint8, device=device)  # 8 bits per element
        lo_hi = (ctypes.c_float * 2)(*UINT8_RANGE)
        empty = (ctypes.c_float * 1)(0.0)
        quantizer = [b"uniform8", 8, empty, 0, empty, 0, lo_hi, 2]
        call("quantized_forward", name.encode(), no_params, 0, *quantizer, 2, ptr(x), ptr(y),
             ptr(packed), n, device=device)
        call("quantized_backward", *quantizer, 2, ptr(dy), ptr(packed), ptr(dx), n, device=device)
        synchronize(device)
        step = (UINT8_RANGE[1] - UINT8_RANGE[0]) / 254  # kernels/storage.h: 254 steps, 255 = NaN
        finite = np.isfinite(d_ref)
        report.check(f"torch {name} uint8 f' (half a step)", dx.double().cpu().numpy()[finite],
                     d_ref[finite], (0.0, step / 2 + 1e-6))

    def run_all(device, label):
        for name in ACTIVATIONS:
            for dtype_name in TOLERANCE:
                run_dtype(name, dtype_name, device, label)
        for name in ("silu", "gelu", "mish"):
            run_uint8(name, device)

    if self_check:
        run_all(torch.device("cpu"), "cpu")
        return
    device = torch.device("cuda", 0)
    with torch.cuda.stream(torch.cuda.Stream(device)):  # a current stream not the default one
        run_all(device, "stream")
    if torch.cuda.device_count() > 1:
        last = torch.device("cuda", torch.cuda.device_count() - 1)
        with torch.cuda.device(0):  # another device is current: the call switches and back
            run_dtype("mish", "float32", last, f"on {last} while cuda:0 is current")
            report.check("torch current device restored", np.array([torch.cuda.current_device()]),
                         np.array([0.0]), (0.0, 0.0))


# --- JAX ---


def check_jax(lib, report, self_check=False):
    """lib: _nestad_cuda.so; with self_check, the CPU library's Host handlers on JAX's CPU."""
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    if not self_check and jax.default_backend() != "gpu":
        print(f"jax: runs on {jax.default_backend()}, skipped")
        return
    lookup = lib.nestad_xla_ffi_host_handler if self_check else lib.nestad_xla_ffi_cuda_handler
    lookup.argtypes, lookup.restype = [ctypes.c_char_p], ctypes.c_void_p
    handler_type = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
    for target in ("nestad_fused_activation", "nestad_fused_activation_grad"):
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler_type(lookup(target.encode()))),
                                    platform="cpu" if self_check else "CUDA")
    references = {
        "silu": jax.nn.silu,
        "gelu": lambda t: jax.nn.gelu(t, approximate=False),
        "mish": lambda t: t * jnp.tanh(jax.nn.softplus(t)),
    }
    no_params = np.zeros(0, np.int32)
    for name, fn in references.items():
        for dtype_name in ("float32", "bfloat16"):
            x = jnp.asarray(np.clip(sample(), -30, 30)[11:], dtype_name)  # finite inputs

            @jax.jit
            def fused(x, name=name):
                like = jax.ShapeDtypeStruct(x.shape, x.dtype)
                y, d = jax.ffi.ffi_call("nestad_fused_activation", (like, like))(
                    x, activation=name, params=no_params)
                dx = jax.ffi.ffi_call("nestad_fused_activation_grad", like)(jnp.ones_like(x), d)
                return y, d, dx

            y, d, dx = fused(x)
            x32 = x.astype(jnp.float32)
            y_ref, d_ref = jax.jvp(fn, (x32,), (jnp.ones_like(x32),))
            scale = 10 if dtype_name == "float32" else 1  # the reference is float32 too
            tolerance = tuple(scale * t for t in TOLERANCE[dtype_name])
            for what, actual, expected in (("y", y, y_ref), ("f'", d, d_ref), ("dx", dx, d)):
                report.check(f"jax {name} {dtype_name} {what}", np.asarray(actual, np.float64),
                             np.asarray(expected, np.float64), tolerance)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", default=os.path.join(ROOT, "nestad_tf", "_nestad_cuda.so"))
    parser.add_argument("--only", choices=("torch", "jax"))
    parser.add_argument("--self-check", action="store_true")
    args = parser.parse_args(argv)
    report = Report()
    if args.self_check:
        from nestad_tf import _loader  # pylint: disable=g-import-not-at-top
        cpu = ctypes.CDLL(_loader.load().path)
        for framework, check in (("torch", check_torch), ("jax", check_jax)):
            if args.only in (None, framework):
                check(cpu, report, self_check=True)
        print(f"frameworks_check --self-check: {report.passed} passed, {report.failed} failed")
        return 1 if report.failed else 0
    lib = load_library(args.library)
    for framework, check in (("torch", check_torch), ("jax", check_jax)):
        if args.only in (None, framework):
            try:
                check(lib, report)
            except ImportError as error:
                print(f"{framework}: not installed ({error}), skipped")
    print(f"frameworks_check: {report.passed} passed, {report.failed} failed")
    return 1 if report.failed else (0 if report.passed else 2)


if __name__ == "__main__":
    sys.exit(main())
