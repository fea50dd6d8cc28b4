"""Malformed calls to the raw ops and the Python API raise clear errors, never crash.

Every call runs in one child process, each case isolated in try/except and reported
as one JSON line as soon as it has run: a segfault or abort in the C++ kernels kills
the child, and the cases from the crashing one on fail with the signal, instead of
taking the test process down with them.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IAE = "InvalidArgumentError"

# id: (code raising the error, accepted exception class names, fragment of the message).
# `lib` is the loaded kernel module, `X` a float32 [3] tensor; helpers below.
CASES = {
    # FusedActivation attributes.
    "unknown_activation": (
        'lib.fused_activation(X, activation="nope", params=[])',
        {IAE}, "unknown activation 'nope'; the kernels know: celu"),
    "empty_activation_name": (
        'lib.fused_activation(X, activation="", params=[])',
        {IAE}, "unknown activation ''"),
    "too_few_params": (
        'lib.fused_activation(X, activation="elu", params=[])',
        {IAE}, "activation 'elu' takes 1 parameter(s), got 0"),
    "too_many_params": (
        'lib.fused_activation(X, activation="mish", params=[1.0, 2.0])',
        {IAE}, "activation 'mish' takes 0 parameter(s), got 2"),
    "nan_param": (
        'lib.fused_activation(X, activation="elu", params=[float("nan")])',
        {IAE}, "parameters must not be NaN"),
    "infinite_relu_slope": (
        'lib.fused_activation(X, activation="relu", params=[float("inf"), 6.0, 0.0])',
        {IAE}, "negative_slope and threshold must be finite"),
    "negative_squareplus_b": (
        'lib.fused_activation(X, activation="squareplus", params=[-1.0])',
        {IAE}, "b must be finite and >= 0"),
    "infinite_squareplus_b": (
        'lib.fused_activation(X, activation="squareplus", params=[float("inf")])',
        {IAE}, "b must be finite and >= 0"),
    "zero_celu_alpha": (
        'lib.fused_activation(X, activation="celu", params=[0.0])',
        {IAE}, "alpha must be non-zero"),
    "unknown_activation_in_tf_function": (
        'tf.function(lambda t: lib.fused_activation(t, activation="nope", params=[]))(X)',
        {IAE}, "unknown activation 'nope'"),
    "activation_not_a_string": (
        'lib.fused_activation(X, activation=3, params=[])',
        {"TypeError"}, "Expected string for argument 'activation'"),
    "params_not_floats": (
        'lib.fused_activation(X, activation="elu", params=["a"])',
        {"TypeError", "ValueError"}, "Expected float for argument 'params'"),
    # Input dtypes outside {half, bfloat16, float, double}.
    "int_input": (
        'lib.fused_activation(tf.constant([1, 2]), activation="relu6", params=[])',
        {IAE, "TypeError"}, "int32"),
    "complex_input": (
        'lib.fused_activation(tf.complex(X, X), activation="relu6", params=[])',
        {IAE, "TypeError"}, "complex64"),
    "string_input": (
        'lib.fused_activation(tf.constant(["a"]), activation="relu6", params=[])',
        {IAE, "TypeError", "ValueError"}, "string"),
    # FusedActivationGrad: dy and derivative must agree exactly.
    "grad_shape_mismatch": (
        'lib.fused_activation_grad(X, tf.ones([2]))',
        {IAE}, "dy and derivative must have the same shape, got [3] and [2]"),
    "grad_same_size_other_shape": (
        'lib.fused_activation_grad(tf.ones([6]), tf.ones([2, 3]))',
        {IAE}, "dy and derivative must have the same shape, got [6] and [2,3]"),
    "grad_no_broadcasting": (
        'lib.fused_activation_grad(X, tf.ones([1]))',
        {IAE}, "must have the same shape"),
    "grad_scalar_and_vector": (
        'lib.fused_activation_grad(tf.constant(1.0), X)',
        {IAE}, "must have the same shape"),
    "grad_dtype_mismatch": (
        'lib.fused_activation_grad(X, tf.ones([3], tf.float64))',
        {IAE, "TypeError"}, "double"),
    "grad_int_inputs": (
        'lib.fused_activation_grad(tf.constant([1]), tf.constant([1]))',
        {IAE, "TypeError"}, "int32"),
    "grad_shape_mismatch_traced": (
        'tf.function(lib.fused_activation_grad)(X, tf.ones([2]))',
        {"ValueError", IAE}, "dy and derivative must have the same shape"),
    "grad_shape_mismatch_unknown_until_run": (
        'tf.function(lib.fused_activation_grad, input_signature=['
        'tf.TensorSpec(None), tf.TensorSpec(None)])(X, tf.ones([2, 2]))',
        {IAE}, "dy and derivative must have the same shape, got [3] and [2,2]"),
    # Wrong number of inputs, through the Python wrappers and in a GraphDef.
    "wrapper_extra_input": (
        'lib.fused_activation(X, X, activation="mish", params=[])',
        {"TypeError"}, "activation"),
    "wrapper_missing_input": (
        'lib.fused_activation_grad(X)',
        {"TypeError"}, "derivative"),
    "graphdef_forward_two_inputs": (
        'import_node("FusedActivation", ["x", "x"], activation=b"mish")',
        {"ValueError", IAE}, "do not match 2 inputs"),
    "graphdef_forward_missing_attr": (
        'import_node("FusedActivation", ["x"])',
        {"ValueError", IAE}, "missing attr 'activation'"),
    "graphdef_grad_one_input": (
        'import_node("FusedActivationGrad", ["x"])',
        {"ValueError", IAE}, "do not match 1 inputs"),
    "graphdef_grad_three_inputs": (
        'import_node("FusedActivationGrad", ["x", "x", "x"])',
        {"ValueError", IAE}, "do not match 3 inputs"),
    "graphdef_unknown_activation_at_run": (
        'run_node("FusedActivation", ["x"], activation=b"bogus")',
        {IAE}, "unknown activation 'bogus'"),
    # The public Python API refuses the same things before any op runs.
    "api_unknown_activation": (
        'nestad_tf.activation(X, "nope")', {"ValueError"}, "unknown activation 'nope'"),
    "api_not_elementwise": (
        'nestad_tf.activation(X, "softmax")', {"ValueError"}, "element-wise"),
    "api_integer_tensor": (
        'nestad_tf.activation(tf.constant([1, 2]), "mish")', {"TypeError"}, "floating-point"),
    "api_unknown_parameter": (
        'nestad_tf.activation(X, "elu", beta=1.0)', {"TypeError"}, "unexpected parameter"),
    "api_missing_parameter": (
        'nestad_tf.activation(X, "threshold", threshold=0.0)', {"TypeError"},
        "needs the parameter 'default_value'"),
    "api_nan_parameter_kernel": (
        'nestad_tf.activation(X, "elu", backend="kernel", alpha=float("nan"))',
        {"ValueError"}, "must not be NaN"),
    "api_nan_parameter_tf": (
        'nestad_tf.activation(X, "elu", backend="tf", alpha=float("nan"))',
        {"ValueError"}, "must not be NaN"),
    "api_negative_squareplus_b_kernel": (
        'nestad_tf.activation(X, "squareplus", backend="kernel", b=-1.0)',
        {"ValueError"}, "b must be finite and >= 0"),
    "api_negative_squareplus_b_tf": (
        'nestad_tf.activation(X, "squareplus", backend="tf", b=-1.0)',
        {"ValueError"}, "b must be finite and >= 0"),
    "api_zero_celu_alpha_tf": (
        'nestad_tf.activation(X, "celu", backend="tf", alpha=0.0)',
        {"ValueError"}, "alpha must be non-zero"),
    "api_infinite_relu_threshold_auto": (
        'nestad_tf.activation(X, "relu", threshold=float("-inf"))',
        {"ValueError"}, "must be finite"),
    "api_unknown_backend": (
        'nestad_tf.activation(X, "mish", backend="gpu")', {"ValueError"}, "backend must be one of"),
    "layer_unknown_activation": (
        'nestad_tf.layers.Activation("nope")', {"ValueError"}, "unknown activation 'nope'"),
    "function_unknown_backend": (
        'nestad_tf.ActivationFunction("mish", backend="cuda")', {"ValueError"},
        "backend must be one of"),
}

CHILD = textwrap.dedent(
    """
    import json, sys, traceback
    import numpy as np
    import tensorflow as tf
    import nestad_tf

    lib = nestad_tf._loader.load().module
    assert lib is not None, nestad_tf.backend_info()["reason"]
    X = tf.constant([-1.0, 0.0, 2.0])

    def _graph_def(op, inputs, **attrs):  # op: a name of nestad_tf._loader.OP_NAMES
        graph_def = tf.compat.v1.GraphDef()
        placeholder = graph_def.node.add(name="x", op="Placeholder")
        placeholder.attr["dtype"].type = tf.float32.as_datatype_enum
        node = graph_def.node.add(name="op", op=nestad_tf._loader.op_type(op))
        node.input.extend(inputs)
        node.attr["T"].type = tf.float32.as_datatype_enum
        for key, value in attrs.items():
            node.attr[key].s = value
        return graph_def

    def import_node(op, inputs, **attrs):
        with tf.Graph().as_default():
            tf.graph_util.import_graph_def(_graph_def(op, inputs, **attrs), name="")

    def run_node(op, inputs, **attrs):
        graph_def = _graph_def(op, inputs, **attrs)
        wrapped = tf.compat.v1.wrap_function(
            lambda: tf.graph_util.import_graph_def(graph_def, name=""), [])
        fn = wrapped.prune(wrapped.graph.get_tensor_by_name("x:0"),
                           wrapped.graph.get_tensor_by_name("op:0"))
        return fn(X)

    for case_id, code in json.loads(sys.argv[1]).items():
        record = {"case": case_id, "error": None, "message": ""}
        try:
            exec(code)
        except Exception as error:  # pylint: disable=broad-except
            record["error"] = type(error).__name__
            record["message"] = str(error)
        print(json.dumps(record), flush=True)

    # After all of that, the ops still work.
    y, d = lib.fused_activation(X, activation="relu6", params=[])
    dx = lib.fused_activation_grad(tf.ones([3]), d)
    ok = y.numpy().tolist() == [0.0, 0.0, 2.0] and dx.numpy().tolist() == [0.0, 0.0, 1.0]
    print(json.dumps({"case": "__still_works__", "error": None, "message": str(ok)}), flush=True)
    """
)


@pytest.fixture(scope="module")
def child_records():
    codes = {case_id: code for case_id, (code, _, _) in CASES.items()}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(codes)],
                            capture_output=True, text=True, timeout=300, env=env)
    records = {}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            records[record["case"]] = record
    return records, result


def _describe_exit(result):
    if result.returncode < 0:
        return f"killed by signal {-result.returncode}"
    return f"exit status {result.returncode}"


@pytest.mark.parametrize("case_id", list(CASES))
def test_malformed_call_raises_clear_error(case_id, child_records):
    records, result = child_records
    if case_id not in records:
        pytest.fail(f"the child process died before reporting '{case_id}' "
                    f"({_describe_exit(result)}):\n{result.stderr[-3000:]}")
    _, accepted, fragment = CASES[case_id]
    record = records[case_id]
    assert record["error"] is not None, f"{case_id}: no error raised"
    assert record["error"] in accepted, f"{case_id}: {record['error']}: {record['message']}"
    assert fragment in record["message"], f"{case_id}: unclear message: {record['message']}"


def test_ops_still_work_after_every_malformed_call(child_records):
    records, result = child_records
    assert result.returncode == 0, f"{_describe_exit(result)}:\n{result.stderr[-3000:]}"
    assert records.get("__still_works__", {}).get("message") == "True"
