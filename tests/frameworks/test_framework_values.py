"""Values and derivatives on Keras' torch and JAX backends: every activation, dtype and
path, every `derivative=` form, bad inputs and second-order gradients.

Expected y is `keras.activations.<name>` on this backend in float64 (the kernel
path) or in Keras' own compute dtype (the pure forward-AD path), and expected f'
is the framework's reverse-mode autodiff of it (tests/activation_cases.py's rules
for breakpoints and limits at +-inf). nestad's f' is read through the same
autodiff, so the custom autograd Function / custom_vjp is what is checked.
"""

import pytest

from framework_helpers import FRAMEWORK, SKIP_REASON

if FRAMEWORK is None:
    pytest.skip(SKIP_REASON, allow_module_level=True)

import warnings  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import nestad_tf  # noqa: E402
from nestad_tf import registry, storage  # noqa: E402
from activation_cases import activation_cases, case_id, expected_y_d, sample_inputs  # noqa: E402
from conftest import tolerance  # noqa: E402
from framework_helpers import (  # noqa: E402
    FLOAT_DTYPES, reference_y_d, rounded, tensor, to_float64, value_and_grad)

CASES = activation_cases()
BACKENDS = ("kernel", "tf")
_INPUT_SIZE = 352  # one shape for every case: JAX compiles each op once per shape


def case_inputs(name, params, seed=0):
    """activation_cases.sample_inputs (random, edge values, breakpoints), float64,
    padded to _INPUT_SIZE."""
    values = np.asarray(sample_inputs(name, params, tf.float64, seed=seed, size=256))
    return np.concatenate([values, np.linspace(-4.0, 4.0, _INPUT_SIZE - values.size)])


def nestad_y_d(name, params, x, **options):
    return value_and_grad(lambda t: nestad_tf.activation(t, name, **options, **params), x)


def keras_dtype(name, params, dtype):
    """The dtype keras.activations.<name> computes a `dtype` input in on this backend.

    Keras' JAX tanh computes float64 in float32 (keras.src.backend.jax.numpy.tanh casts
    to result_type(float64, float), which is float32), so its float64 reference is
    only float32-accurate.
    """
    spec = registry.get(name)
    return keras.backend.standardize_dtype(spec.reference(tensor([0.5], dtype), **params).dtype)


def looser(*dtypes):
    """The dtype with the loosest tolerance."""
    return max(dtypes, key=lambda d: tolerance(d)["rtol"])


def assert_close(actual, expected, dtype, what, **tol):
    tol = tol or tolerance(dtype)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected),
                                  err_msg=f"{what}: NaN positions differ")
    ok = ~np.isnan(expected)
    np.testing.assert_allclose(actual[ok], expected[ok], err_msg=what, **tol)


def assert_close_any(actual, alternatives, dtype, what, **tol):
    """Each element matches one alternative (one-sided derivatives at breakpoints)."""
    tol = tol or tolerance(dtype)
    matches = np.zeros(actual.shape, bool)
    for expected in alternatives:
        with np.errstate(invalid="ignore"):
            matches |= np.isclose(actual, expected, **tol) | (np.isnan(actual) & np.isnan(expected))
    if not matches.all():
        bad = np.flatnonzero(~matches)[:5]
        raise AssertionError(f"{what}: {np.count_nonzero(~matches)} mismatches, e.g. "
                             f"{[(actual[i], [a[i] for a in alternatives]) for i in bad]}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_values_and_derivatives_match_keras(case, dtype, backend):
    """The kernel against the float64 truth; the pure path against Keras' own numerics
    (finite inputs: forward-mode AD of a composite inherits its NaNs at +-inf)."""
    name, params = case
    x = tensor(case_inputs(name, params), dtype)
    xs = to_float64(x)
    y, d = nestad_y_d(name, params, x, backend=backend)
    reference = "float64" if backend == "kernel" or dtype == "float64" else "float32"
    y_ref, _, d_alternatives = expected_y_d(name, params, xs, getattr(tf, reference),
                                            y_and_d=reference_y_d(reference))
    if backend == "tf":
        finite = np.isfinite(xs)
        y, y_ref, d = y[finite], y_ref[finite], d[finite]
        d_alternatives = [a[finite] for a in d_alternatives]
    y_ref = rounded(y_ref, dtype)
    d_alternatives = [rounded(a, dtype) for a in d_alternatives]
    tol_dtype = looser(dtype, keras_dtype(name, params, reference))  # JAX's tanh: keras_dtype
    assert_close(y, y_ref, tol_dtype, f"{case_id(case)} y")
    assert_close_any(d, d_alternatives, tol_dtype, f"{case_id(case)} f'")
    # Without a gradient to compute, y comes from the forward-only path: the same values.
    y_alone = to_float64(nestad_tf.activation(x, name, backend=backend, **params))
    if backend == "tf":
        y_alone = y_alone[np.isfinite(xs)]
    np.testing.assert_array_equal(y_alone, y, err_msg=f"{case_id(case)} y without gradient")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kernel_and_pure_path_agree_in_float64(case):
    name, params = case
    x = tensor(case_inputs(name, params, seed=1), "float64")
    xs = to_float64(x)
    spec = registry.get(name)
    points = np.asarray(spec.breakpoints(**spec.bind(params)) or [np.inf])
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(xs) & (np.min(np.abs(xs[:, None] - points[None, :]), axis=1) > 1e-6)
    y_kernel, d_kernel = nestad_y_d(name, params, x, backend="kernel")
    y_pure, d_pure = nestad_y_d(name, params, x, backend="tf")
    tol_dtype = keras_dtype(name, params, "float64")  # the pure path computes what Keras does
    assert_close(y_kernel[keep], y_pure[keep], tol_dtype, f"{case_id(case)} y")
    assert_close(d_kernel[keep], d_pure[keep], tol_dtype, f"{case_id(case)} f'")


# --- derivative= forms (kernel path) ---


def _plan(name, params, derivative, dtype):
    spec = registry.get(name)
    return storage.plan(spec, spec.bind(params), derivative, dtype)


FULL_FORM_CASES = [c for c in CASES if _plan(*c, "exact", "float32").form == "full"]
OTHER_CASES = [c for c in CASES if c not in FULL_FORM_CASES]
LOSSY = ("bfloat16", "uint8", "bits4", "bits3", "bits2", "bits1")


def test_full_form_cases_are_the_composites():
    assert sorted({name for name, _ in FULL_FORM_CASES}) == [
        "gelu", "hard_silu", "mish", "silu", "tanh_shrink"]


def _true_derivative(name, params, xs):
    _, d, alternatives = expected_y_d(name, params, xs, tf.float64,
                                      y_and_d=reference_y_d("float64"))
    return d, alternatives


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("derivative", ("full",) + LOSSY)
@pytest.mark.parametrize("case", FULL_FORM_CASES, ids=case_id)
def test_derivative_forms_of_the_composites(case, derivative, dtype):
    """full: exact. bfloat16: f' rounded to bfloat16. uint8: within the table's max error.
    bitsK: exactly the FewBit table's piecewise-constant f' (decoded here from the
    table), within its max error of f'. y never changes."""
    name, params = case
    x = tensor(case_inputs(name, params, seed=2), dtype)
    xs = to_float64(x)
    y_exact, _ = nestad_y_d(name, params, x, backend="kernel")
    y, d = nestad_y_d(name, params, x, backend="kernel", derivative=derivative)
    np.testing.assert_array_equal(y, y_exact, err_msg=f"{case_id(case)} {derivative}: y changed")
    d_true, alternatives = _true_derivative(name, params, xs)
    plan = _plan(name, params, derivative, dtype)
    what = f"{case_id(case)} {derivative} {dtype}"
    tol = tolerance(dtype)
    if plan.form == "full":  # "full", and "bfloat16" of a half type (already 2 bytes)
        assert derivative == "full" or (derivative == "bfloat16" and dtype == "bfloat16")
        assert_close_any(d, [rounded(a, dtype) for a in alternatives], dtype, what)
        return
    finite = np.isfinite(xs)
    if plan.format == "bfloat16":
        bound = 2.0 ** -8 * np.abs(d_true) + tol["atol"]
    elif plan.format == "uniform8":
        lo, hi = plan.range  # 254 steps over [lo, hi]: max error (hi - lo) / 508
        bound = (hi - lo) / 508 * 1.001 + tol["atol"] + tol["rtol"] * np.abs(d_true)
    else:
        assert plan.format == "buckets" and plan.bits == int(derivative[4:])
        code = np.sum(xs.astype(np.float32)[:, None] >= np.float32(plan.breakpoints)[None, :],
                      axis=1)  # NaN: code 0, as kernels/storage.h
        np.testing.assert_array_equal(d, rounded(np.float32(plan.levels)[code], dtype),
                                      err_msg=f"{what}: not the table's levels")
        kernel_name, _ = registry.get(name).kernel_attrs(registry.get(name).bind(params))
        table = storage.quantization_table(kernel_name, plan.bits)
        bound = table["max_abs_error"] * 1.001 + tol["atol"] + tol["rtol"] * np.abs(d_true)
    error = np.abs(d - d_true)
    assert np.all(error[finite] <= np.broadcast_to(bound, error.shape)[finite]), (
        f"{what}: max error {np.max(error[finite])}")


@pytest.mark.parametrize("derivative", ["full", "bits1"])
@pytest.mark.parametrize("case", OTHER_CASES, ids=case_id)
def test_derivative_forms_of_the_others_are_exact(case, derivative):
    """Activations whose exact form is y or a 1-2 bit code: "full" keeps f', lossy forms
    keep that exact form; f' is exact either way."""
    name, params = case
    x = tensor(case_inputs(name, params, seed=3), "float32")
    y, d = nestad_y_d(name, params, x, backend="kernel", derivative=derivative)
    y_exact, d_exact = nestad_y_d(name, params, x, backend="kernel")
    np.testing.assert_array_equal(y, y_exact)
    _, alternatives = _true_derivative(name, params, to_float64(x))
    assert_close_any(d, [rounded(a, "float32") for a in alternatives], "float32",
                     f"{case_id(case)} {derivative}")
    if derivative == "bits1":
        np.testing.assert_array_equal(d, d_exact)


def test_lossy_derivative_on_the_pure_path_warns_and_stays_exact():
    x = tensor(np.linspace(-3, 3, 41))
    with pytest.warns(RuntimeWarning, match="derivative='uint8' is not applied to 'mish'"):
        y, d = nestad_y_d("mish", {}, x, backend="tf", derivative="uint8")
    y_exact, d_exact = nestad_y_d("mish", {}, x, backend="tf")
    np.testing.assert_array_equal(y, y_exact)
    np.testing.assert_array_equal(d, d_exact)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        nestad_y_d("mish", {}, x, backend="kernel", derivative="uint8")


# --- shapes, layouts, transformations ---


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (2, 3, 1, 2, 1, 2)], ids=str)
def test_empty_scalar_and_high_rank_shapes(shape, backend):
    values = np.random.default_rng(4).normal(size=shape)
    y, d = nestad_y_d("mish", {}, tensor(values), backend=backend)
    y_ref, d_ref = value_and_grad(keras.activations.mish, tensor(values))
    assert y.shape == shape and d.shape == shape
    np.testing.assert_allclose(y, y_ref, **tolerance("float32"))
    np.testing.assert_allclose(d, d_ref, **tolerance("float32"))


def test_non_contiguous_input():
    values = np.arange(-12.0, 12.0).reshape(4, 6) / 4
    x = tensor(values).T[::2]  # on torch a strided view
    if FRAMEWORK == "torch":
        assert not x.is_contiguous()
    y, d = nestad_y_d("gelu", {}, x, backend="kernel")
    y_ref, d_ref = value_and_grad(keras.activations.gelu, x)
    np.testing.assert_allclose(y, y_ref, **tolerance("float32"))
    np.testing.assert_allclose(d, d_ref, **tolerance("float32"))


@pytest.mark.skipif(FRAMEWORK != "torch", reason="torch tensors have strides")
@pytest.mark.parametrize("name,derivative", [("mish", "exact"), ("gelu", "uint8"),
                                             ("sigmoid", "exact"), ("relu", "bits2")])
def test_permuted_views_run_without_a_copy(name, derivative):
    """Keras' torch convolutions return a NHWC view of NCHW memory: the kernels run on
    that memory in its own order (y, f' and dx in x's layout), bit-identical to the same
    values made contiguous, whatever layout the upstream gradient has."""
    import torch  # pylint: disable=g-import-not-at-top

    rng = np.random.default_rng(8)
    memory = torch.as_tensor(rng.normal(0, 3, (2, 5, 3, 4)).astype(np.float32))
    view = memory.permute(0, 2, 3, 1)  # (2, 3, 4, 5), not contiguous
    cotangent = torch.as_tensor(rng.normal(size=view.shape).astype(np.float32))
    assert not view.is_contiguous()

    def run(x, upstream):
        x = x.detach().requires_grad_(True)
        y = getattr(nestad_tf, name)(x, backend="kernel", derivative=derivative)
        (dx,) = torch.autograd.grad(y, x, upstream)
        return y, dx

    y, dx = run(view, cotangent)  # a contiguous upstream gradient
    assert y.stride() == view.stride() and dx.stride() == view.stride()
    y_ref, dx_ref = run(view.contiguous(), cotangent)
    np.testing.assert_array_equal(y.detach().numpy(), y_ref.detach().numpy())
    np.testing.assert_array_equal(dx.numpy(), dx_ref.numpy())
    _, dx_permuted = run(view, cotangent.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2))
    np.testing.assert_array_equal(dx_permuted.numpy(), dx_ref.numpy())


@pytest.mark.skipif(FRAMEWORK != "torch", reason="torch's intra-op threads")
def test_kernels_run_on_torchs_openmp_team():
    """The loops' threads are torch's own OpenMP team (its idle threads spin, so threads
    of our own would compete with them); the result does not depend on how many."""
    import torch  # pylint: disable=g-import-not-at-top
    from nestad_tf.frameworks import torch_backend  # pylint: disable=g-import-not-at-top

    if "parallel backend: OpenMP" in torch.__config__.parallel_info():
        team = torch_backend._torch_openmp()  # pylint: disable=protected-access
        assert team is not None and all(team), "torch's OpenMP runtime was not found"
    x = torch.linspace(-6, 6, 1 << 20).requires_grad_(True)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            y = nestad_tf.mish(x, backend="kernel")
            (dx,) = torch.autograd.grad(y.sum(), x)
            results.append((y.detach().numpy(), dx.numpy()))
    finally:
        torch.set_num_threads(threads)
    for y, dx in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(dx, results[0][1])


def test_upstream_gradient_is_multiplied():
    values = np.linspace(-3, 3, 24).reshape(4, 6)
    cotangent = np.random.default_rng(5).normal(size=(4, 6))
    for derivative in ("exact", "bits2"):
        _, dx = value_and_grad(lambda t: nestad_tf.mish(t, derivative=derivative),
                               tensor(values), cotangent)
        _, d = value_and_grad(lambda t: nestad_tf.mish(t, derivative=derivative), tensor(values))
        np.testing.assert_allclose(dx, d * cotangent, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(FRAMEWORK != "jax", reason="jax.jit and jax.vmap")
@pytest.mark.parametrize("derivative", ["exact", "uint8", "bits2"])
@pytest.mark.parametrize("name,params", [("mish", {}), ("gelu", {"approximate": True}),
                                         ("relu", {"negative_slope": 0.1, "max_value": 4.0}),
                                         ("threshold", {"threshold": 0.5, "default_value": -1.0}),
                                         ("sigmoid", {})])
def test_jit_and_vmap_give_the_eager_results(name, params, derivative):
    """The kernels as XLA FFI custom calls inside jax.jit, and batched by jax.vmap."""
    import jax  # pylint: disable=g-import-not-at-top

    x = tensor(np.random.default_rng(6).normal(0, 3, (3, 40)))

    def loss(t):
        return jax.numpy.sum(nestad_tf.activation(t, name, derivative=derivative, **params) * t)

    eager_value, eager_grad = jax.value_and_grad(loss)(x)
    jit_value, jit_grad = jax.jit(jax.value_and_grad(loss))(x)
    np.testing.assert_allclose(jit_value, eager_value, rtol=1e-6)
    np.testing.assert_allclose(jit_grad, eager_grad, rtol=1e-6, atol=1e-7)
    batched = jax.vmap(jax.grad(loss))(x)
    np.testing.assert_allclose(batched, eager_grad, rtol=1e-6, atol=1e-7)
    text = jax.jit(jax.grad(loss)).lower(x).as_text()
    assert "nestad_" in text, "the kernel should be an FFI custom call in the jitted step"


# --- bad inputs ---


def test_integer_input_is_refused_by_activation():
    x = keras.ops.convert_to_tensor(np.array([-1, 0, 2], np.int32))
    with pytest.raises(TypeError, match="needs a floating-point tensor.*got int32"):
        nestad_tf.activation(x, "mish")
    with pytest.raises(TypeError, match="needs a floating-point tensor.*got complex64"):
        nestad_tf.mish(keras.ops.convert_to_tensor(np.array([1 + 1j], np.complex64)))


@pytest.mark.parametrize("name", ["mish", "relu", "gelu", "linear"])
def test_integer_input_to_a_builtin_behaves_as_keras(name):
    """No gradient, no f' to keep: Keras' result, or a TypeError where Keras refuses it."""
    x = keras.ops.convert_to_tensor(np.array([-1, 0, 2], np.int32))
    try:
        expected = getattr(keras.activations, name)(x)
    except Exception:  # pylint: disable=broad-except
        with pytest.raises(TypeError, match=f"nestad_tf.{name} needs a floating-point tensor"):
            getattr(nestad_tf, name)(x)
        return
    y = getattr(nestad_tf, name)(x)
    assert keras.backend.standardize_dtype(y.dtype) == keras.backend.standardize_dtype(
        expected.dtype)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(y),
                                  keras.ops.convert_to_numpy(expected))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_names_and_parameters_are_clear_errors(backend):
    x = tensor([-1.0, 0.0, 2.0])
    cases = [
        (ValueError, "unknown activation 'nope'", "nope", {}),
        (ValueError, "'softmax' cannot be a nestad activation", "softmax", {}),
        (TypeError, r"unexpected parameter\(s\) \['beta'\]", "elu", {"beta": 1.0}),
        (TypeError, "needs the parameter 'threshold'", "threshold", {}),
        (ValueError, "celu: alpha must be non-zero", "celu", {"alpha": 0.0}),
        (ValueError, "squareplus: b must be finite and >= 0", "squareplus", {"b": -1.0}),
        (ValueError, "parameters must not be NaN", "relu", {"negative_slope": float("nan")}),
        (ValueError, "backend must be one of", "mish", {"backend": "cuda"}),
        (ValueError, "derivative must be one of", "mish", {"derivative": "int4"}),
    ]
    for error, message, name, params in cases:
        params = dict({"backend": backend}, **params)
        with pytest.raises(error, match=message):
            nestad_tf.activation(x, name, **params)
    with pytest.raises(ValueError, match="unknown activation"):
        nestad_tf.layers.Activation("nope")
    with pytest.raises(TypeError, match="unexpected parameter"):
        nestad_tf.layers.Activation("elu", beta=2.0)


def test_tensor_parameters_run_forward_mode_ad():
    x = tensor(np.linspace(-3, 3, 13))
    alpha = tensor(0.5)
    y, d = nestad_y_d("elu", {"alpha": alpha}, x)
    y_ref, d_ref = value_and_grad(lambda t: keras.activations.elu(t, alpha=0.5), x)
    np.testing.assert_allclose(y, y_ref, **tolerance("float32"))
    np.testing.assert_allclose(d, d_ref, **tolerance("float32"))
    with pytest.raises(ValueError, match="fused kernel takes its parameters as Python numbers"):
        nestad_tf.activation(x, "elu", backend="kernel", alpha=alpha)
    with pytest.raises(TypeError, match="approximate chooses the formula"):
        nestad_tf.activation(x, "gelu", approximate=tensor(1.0, "bool"))


# --- second-order gradients ---


@pytest.mark.skipif(FRAMEWORK != "torch", reason="torch's create_graph=True")
@pytest.mark.parametrize("backend", BACKENDS)
def test_second_order_gradient_raises_on_torch(backend):
    """nestad keeps f', not x, so any create_graph=True backward raises (also when the
    loss adds terms that do need second derivatives, where a silently missing f'' term
    would be wrong)."""
    import torch  # pylint: disable=g-import-not-at-top

    x = tensor(np.linspace(-2, 2, 9), "float64").requires_grad_(True)
    for derivative in ("exact", "full"):
        loss = nestad_tf.mish(x, backend=backend, derivative=derivative).sum() + (x ** 2).sum()
        with pytest.raises(nestad_tf.SecondOrderGradientError, match="create_graph=True"):
            torch.autograd.grad(loss, x, create_graph=True)
    loss = nestad_tf.mish(x, backend=backend).sum()
    (gradient,) = torch.autograd.grad(loss, x)  # first order still works
    assert gradient.shape == x.shape


def _jax_second_order(activation, jit=False):
    """d/dx sum((d/dx sum(w * f(x)^2))^2): dy depends on x, so both the f'' term and
    the backward pass's dependence on dy are exercised."""
    import jax  # pylint: disable=g-import-not-at-top
    jnp = jax.numpy
    x = tensor(np.linspace(-2.2, 2.2, 13) + 0.05, "float64")
    w = tensor(np.linspace(0.5, 1.5, 13), "float64")

    def first(t):
        return jax.grad(lambda u: jnp.sum(w * activation(u) ** 2))(t)

    second = jax.grad(lambda t: jnp.sum(first(t) ** 2))
    return np.asarray((jax.jit(second) if jit else second)(x))


# (activation, derivative=) pairs whose kept form allows a second-order gradient, as on
# TensorFlow: f'(x) itself ("full", and "exact" where that keeps f'), or f' piecewise
# constant (f'' = 0) kept as y or as exact levels.
_SECOND_ORDER_EXACT = [("mish", "exact"), ("gelu", "full"), ("silu", "exact"),
                       ("hard_swish", "exact"), ("elu", "full"), ("softplus", "full"),
                       ("sigmoid", "full"), ("relu", "exact"), ("relu", "uint8"),
                       ("relu6", "bits2"), ("hard_sigmoid", "exact")]
_SECOND_ORDER_REFUSED = [("mish", "uint8"), ("gelu", "bits4"), ("elu", "exact"),
                         ("sigmoid", "bfloat16")]


@pytest.mark.skipif(FRAMEWORK != "jax", reason="JAX differentiates its gradients again")
@pytest.mark.parametrize("name,derivative", _SECOND_ORDER_EXACT,
                         ids=[f"{n}-{d}" for n, d in _SECOND_ORDER_EXACT])
@pytest.mark.parametrize("backend", BACKENDS)
def test_second_order_gradient_on_jax_matches_keras(backend, name, derivative):
    """The pure path's f' is jax.jvp of the definition, which jax differentiates again;
    the kernels' FFI calls get their tangents from it (`with_higher_order`): exact f''."""
    keras_activation = getattr(keras.activations, name)
    want = _jax_second_order(keras_activation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pure path keeps f' uncompressed, and says so

        def nestad_activation(t):
            return getattr(nestad_tf, name)(t, backend=backend, derivative=derivative)

        np.testing.assert_allclose(_jax_second_order(nestad_activation), want,
                                   rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(_jax_second_order(nestad_activation, jit=True), want,
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(FRAMEWORK != "jax", reason="JAX differentiates its gradients again")
@pytest.mark.parametrize("name,derivative", _SECOND_ORDER_REFUSED,
                         ids=[f"{n}-{d}" for n, d in _SECOND_ORDER_REFUSED])
def test_second_order_gradient_on_jax_refuses_stored_forms(name, derivative):
    """f' compressed, or recovered from y where f'' is not 0: no f'' to form, so a clear
    error (never JAX's "FFI call cannot be differentiated"); first order still works."""
    import jax  # pylint: disable=g-import-not-at-top

    def activation(t):
        return getattr(nestad_tf, name)(t, backend="kernel", derivative=derivative)

    with pytest.raises(nestad_tf.SecondOrderGradientError, match="derivative='full'"):
        _jax_second_order(activation)
    x = tensor(np.linspace(-2, 2, 9))
    assert jax.grad(lambda t: jax.numpy.sum(activation(t)))(x).shape == x.shape


@pytest.mark.skipif(FRAMEWORK != "jax", reason="jax.hessian")
def test_hessian_through_the_kernels_on_jax():
    import jax  # pylint: disable=g-import-not-at-top

    x = tensor(np.linspace(-2, 2, 7), "float64")

    def hessian(activation):
        return np.asarray(jax.hessian(lambda t: jax.numpy.sum(activation(t) ** 3))(x))

    np.testing.assert_allclose(hessian(lambda t: nestad_tf.mish(t, backend="kernel")),
                               hessian(keras.activations.mish), rtol=1e-10, atol=1e-12)


def test_second_order_gradient_through_the_fused_normalization_raises():
    layer = nestad_tf.layers.BatchNormActivation("mish")
    layer.build((8, 4))
    z = tensor(np.random.default_rng(7).normal(size=(8, 4)))
    if FRAMEWORK == "jax":
        import jax  # pylint: disable=g-import-not-at-top

        def first(t):
            return jax.grad(lambda u: jax.numpy.sum(layer(u, training=True)))(t)

        assert first(z).shape == z.shape
        with pytest.raises(nestad_tf.SecondOrderGradientError, match="not implemented"):
            jax.grad(lambda t: jax.numpy.sum(first(t) ** 2))(z)
        return
    import torch  # pylint: disable=g-import-not-at-top

    z.requires_grad_(True)
    loss = layer(z, training=True).sum() + (z ** 2).sum()
    with pytest.raises(nestad_tf.SecondOrderGradientError, match="create_graph=True"):
        torch.autograd.grad(loss, z, create_graph=True)


# --- CUDA tensors: the kernels of _nestad_cuda.so where it loads, else the pure path ---


def _cuda_reason() -> str:
    from nestad_tf import _loader  # pylint: disable=g-import-not-at-top
    return _loader.load_framework_cuda().reason


@pytest.mark.skipif(FRAMEWORK != "torch", reason="torch tensors' devices")
def test_torch_chooses_the_kernels_by_the_tensors_device():
    """CPU tensors: the CPU loops; CUDA tensors: the CUDA kernels where _nestad_cuda.so
    loads and finds the device, else why not (the pure path's reason); other devices and
    the fused normalization on CUDA: why not. (Only the device is read: a stand-in.)"""
    import types  # pylint: disable=g-import-not-at-top

    import torch  # pylint: disable=g-import-not-at-top
    from nestad_tf.frameworks import torch_backend  # pylint: disable=g-import-not-at-top

    def on(device):
        return types.SimpleNamespace(device=torch.device(device))

    assert torch_backend.kernel_unavailable(on("cpu"), None) is None
    assert torch_backend.kernel_unavailable(on("cpu"), None, normalization=True) is None
    reason = _cuda_reason()
    expected = None if reason == "loaded" else f"the tensor is on cuda:0 and {reason}"
    assert torch_backend.kernel_unavailable(on("cuda:0"), None) == expected
    assert "CPU kernels only" in torch_backend.kernel_unavailable(on("cuda:0"), None,
                                                                 normalization=True)
    assert "run on CPU and CUDA tensors" in torch_backend.kernel_unavailable(on("meta"), None)


@pytest.mark.skipif(FRAMEWORK != "torch", reason="torch tensors' devices")
def test_auto_keeps_the_pure_path_on_cuda_until_the_kernels_are_verified(monkeypatch):
    """Where the CUDA kernels could run, "auto" still takes the pure path (one warning),
    as TensorFlow's "auto" does with a GPU visible; "kernel" takes them."""
    import types  # pylint: disable=g-import-not-at-top

    import torch  # pylint: disable=g-import-not-at-top
    from nestad_tf import frameworks  # pylint: disable=g-import-not-at-top
    from nestad_tf.frameworks import torch_backend  # pylint: disable=g-import-not-at-top

    monkeypatch.setattr(torch_backend, "kernel_unavailable", lambda x, library: None)
    frameworks._warn_once_unverified_cuda.cache_clear()  # pylint: disable=protected-access
    fake = types.SimpleNamespace(device=torch.device("cuda", 0))
    with pytest.warns(RuntimeWarning, match="pure path .* on CUDA"):
        assert frameworks.resolve_backend(torch_backend, fake, "auto") == "tf"
    assert frameworks.resolve_backend(torch_backend, fake, "kernel") == "kernel"
    on_cpu = tensor([1.0])
    assert not torch_backend.on_gpu(on_cpu)
    assert frameworks.resolve_backend(torch_backend, on_cpu, "auto") == "kernel"


@pytest.mark.skipif(FRAMEWORK != "jax", reason="JAX's platforms")
def test_jax_chooses_the_kernels_by_its_platform(monkeypatch):
    """On the CPU platform the Host handlers; on CUDA the XLA:GPU handlers of
    _nestad_cuda.so where it loads, else why not; on another GPU platform (ROCm) and
    for the fused normalization on CUDA: why not."""
    import types  # pylint: disable=g-import-not-at-top

    import jax  # pylint: disable=g-import-not-at-top
    import jax.extend  # pylint: disable=g-import-not-at-top
    from nestad_tf.frameworks import jax_backend  # pylint: disable=g-import-not-at-top

    assert jax_backend.kernel_unavailable(None, None) is None  # this machine: cpu
    reason = _cuda_reason()

    def platform(name, version):
        monkeypatch.setattr(jax, "default_backend", lambda: name)
        monkeypatch.setattr(jax.extend.backend, "get_backend",
                            lambda: types.SimpleNamespace(platform_version=version))

    platform("gpu", "cuda 12080")
    if reason != "loaded":  # registering the CUDA targets needs a usable device
        assert jax_backend.kernel_unavailable(None, None) == reason
    assert "CPU kernels only" in jax_backend.kernel_unavailable(None, None, normalization=True)
    platform("gpu", "rocm 60302")
    assert "the JAX kernels run on CPU and CUDA" in jax_backend.kernel_unavailable(None, None)
