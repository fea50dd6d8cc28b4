"""tf.distribute across processes on this machine, training a converted model:
MultiWorkerMirroredStrategy with two local workers, ParameterServerStrategy with
local server processes. (MirroredStrategy in one process: tests/test_ecosystem.py.)

Every cluster runs on 127.0.0.1 ports that were free a moment before, each process
writes its output to a file, the whole cluster has a time limit, and whatever still
runs at the end of a test is killed.

Keras 3's model.fit runs under neither strategy (the tests below pin how it fails),
so the workers train with a custom loop: one step per global batch, the loss and
optimizer that model.fit would use.
"""

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import keras

import nestad_tf
from nestad_tf._loader import OP_NAMESPACE, op_type

from test_ecosystem import REPO, _data, _model

sys.path.insert(0, os.path.join(REPO, "examples"))
from distributed import free_ports, wait_for  # noqa: E402  (the example's own helpers)

TIME_LIMIT_S = 240  # for a whole cluster
BATCH_SIZE = 8      # global: split between the workers
EPOCHS = 3

# --- what the processes run (they import this module) ---


def _per_example_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")


def _converted(strategy):
    """The converted _model() with _model()'s initial weights, built inside `strategy.scope()`."""
    weights = _model().get_weights()
    with strategy.scope():
        model = nestad_tf.convert(_model())
        model.set_weights(weights)
        optimizer = keras.optimizers.SGD(0.1)
    return model, optimizer


def _nestad_op_types(concrete_function):
    graph = concrete_function.graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return sorted({n.op for n in nodes if n.op.startswith(OP_NAMESPACE + ">")})


def train_mirrored(strategy):
    """EPOCHS epochs over _data(32) in global batches of BATCH_SIZE; returns per-epoch losses,
    the trained weights and what the model is made of."""
    model, optimizer = _converted(strategy)
    # Every worker passes the same data; sharding by DATA gives each worker its part of every
    # global batch, so a step of the cluster sees the examples of a step of one process.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = tf.data.Dataset.from_tensor_slices(_data(32)).batch(BATCH_SIZE)
    batches = strategy.experimental_distribute_dataset(dataset.with_options(options))
    per_example_loss = _per_example_loss()

    def replica_step(x, labels):
        with tf.GradientTape() as tape:
            loss = tf.nn.compute_average_loss(per_example_loss(labels, model(x, training=True)),
                                              global_batch_size=BATCH_SIZE)
        gradients = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(gradients, model.trainable_weights))  # sums over replicas
        return loss

    @tf.function
    def train_step(x, labels):
        return strategy.reduce("SUM", strategy.run(replica_step, args=(x, labels)), axis=None)

    losses = []
    for _ in range(EPOCHS):
        step_losses = [train_step(x, labels) for x, labels in batches]
        losses.append(float(np.mean(step_losses)))
    x, labels = next(iter(batches))
    return {"losses": losses,
            "weights": [w.tolist() for w in model.get_weights()],
            "gelu_is_nestad": isinstance(model.get_layer("gelu"), nestad_tf.layers.Activation),
            "nestad_ops": _nestad_op_types(train_step.get_concrete_function(x, labels))}


def model_fit_error(strategy, convert):
    """What model.fit under `strategy` raises (None if it trains)."""
    with strategy.scope():
        model = nestad_tf.convert(_model()) if convert else _model()
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, labels = _data(32)
    try:
        model.fit(tf.data.Dataset.from_tensor_slices((x, labels)).batch(BATCH_SIZE).repeat(),
                  epochs=1, steps_per_epoch=2, verbose=0)
    except ValueError as error:
        return f"{type(error).__name__}: {error}"
    return None


def train_on_parameter_servers(strategy, steps):
    """`steps` steps on batches of BATCH_SIZE of _data(32); under a ParameterServerStrategy each
    is scheduled on a worker by a ClusterCoordinator. Returns per-step losses and the weights."""
    model, optimizer = _converted(strategy)
    per_example_loss = _per_example_loss()

    def dataset_fn():
        return tf.data.Dataset.from_tensor_slices(_data(32)).batch(BATCH_SIZE).repeat()

    @tf.function
    def train_step(iterator):
        def replica_step(x, labels):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(per_example_loss(labels, model(x, training=True)))
            gradients = tape.gradient(loss, model.trainable_weights)
            optimizer.apply_gradients(zip(gradients, model.trainable_weights))
            return loss
        return strategy.run(replica_step, args=next(iterator))

    if isinstance(strategy, tf.distribute.ParameterServerStrategy):
        coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
        iterator = iter(coordinator.create_per_worker_dataset(dataset_fn))
        scheduled = [coordinator.schedule(train_step, args=(iterator,)) for _ in range(steps)]
        coordinator.join()
        losses = [float(result.fetch()) for result in scheduled]
    else:
        iterator = iter(dataset_fn())
        losses = [float(train_step(iterator)) for _ in range(steps)]
    return {"losses": losses, "weights": [w.tolist() for w in model.get_weights()],
            "gelu_is_nestad": isinstance(model.get_layer("gelu"), nestad_tf.layers.Activation)}


MULTI_WORKER = """
    import json, sys
    import tensorflow as tf
    # a worker whose peer died fails after 120 s instead of waiting in a collective op forever
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=120)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    from test_distributed import model_fit_error, train_mirrored

    result = train_mirrored(strategy)
    result["fit_error"] = model_fit_error(strategy, convert=True)
    result["keras_fit_error"] = model_fit_error(strategy, convert=False)
    with open(sys.argv[1], "w") as f:
        json.dump(result, f)
    """

SERVER = """
    import json, os, sys
    import tensorflow as tf
    if sys.argv[3] == "with_nestad":
        import nestad_tf  # registers nestad's ops and kernels in this server
    cluster, job = json.loads(sys.argv[1]), sys.argv[2]
    server = tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name=job, task_index=0,
                                  protocol="grpc", start=True)
    sys.stdin.read()  # serves until the test closes stdin (or ends)
    os._exit(0)  # a tf.distribute.Server cannot be stopped; a normal exit would wait for it
    """

COORDINATOR = """
    import json, sys
    import tensorflow as tf
    cluster = tf.train.ClusterSpec(json.loads(sys.argv[1]))
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        cluster, task_type="chief", task_id=0, rpc_layer="grpc")
    strategy = tf.distribute.ParameterServerStrategy(resolver)
    from test_distributed import model_fit_error, train_on_parameter_servers

    result = train_on_parameter_servers(strategy, steps=int(sys.argv[3]))
    if sys.argv[4] == "try_fit":
        result["fit_error"] = model_fit_error(strategy, convert=True)
        result["keras_fit_error"] = model_fit_error(strategy, convert=False)
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)
    """

# --- starting and stopping processes ---


@contextlib.contextmanager
def _processes(tmp_path):
    """Yields start(name, script, *args, env={}, stdin=None); kills what still runs at the end."""
    started = []
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
            if p and os.path.abspath(p) != REPO]
    env["PYTHONPATH"] = os.pathsep.join([REPO, os.path.join(REPO, "tests")] + path)

    def start(name, script, *args, extra_env=None, stdin=None):
        with open(tmp_path / f"{name}.log", "w") as log:
            started.append(subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(script)] + [str(a) for a in args],
                cwd=tmp_path, env=dict(env, **(extra_env or {})), stdin=stdin, stdout=log,
                stderr=subprocess.STDOUT))
        return started[-1]

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait()


def _wait(processes, timeout=TIME_LIMIT_S):
    """Exit codes once all have exited, one has failed or `timeout` has passed (None: running)."""
    return wait_for(processes, timeout)


def _logs(tmp_path):
    return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}"
                     for log in sorted(tmp_path.glob("*.log")))


# --- MultiWorkerMirroredStrategy ---


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """Runs MULTI_WORKER on two local workers; returns each worker's result."""
    tmp_path = tmp_path_factory.mktemp("two_workers")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    with _processes(tmp_path) as start:
        workers = [start(f"worker{i}", MULTI_WORKER, tmp_path / f"worker{i}.json", extra_env={
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
            for i in range(2)]
        codes = _wait(workers)
    assert codes == [0, 0], _logs(tmp_path)
    return [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]


@pytest.mark.subprocess
def test_multi_worker_mirrored_two_local_workers_match_one_process(two_workers):
    one = train_mirrored(tf.distribute.get_strategy())
    for worker in two_workers:
        assert worker["gelu_is_nestad"]
        if nestad_tf.backend_info()["kernel_available"]:
            assert {op_type("FusedActivation"), op_type("FusedActivationGrad")} <= set(
                worker["nestad_ops"]), worker["nestad_ops"]
        np.testing.assert_allclose(worker["losses"], one["losses"], rtol=1e-5, atol=1e-6)
        for trained, expected in zip(worker["weights"], one["weights"]):
            np.testing.assert_allclose(trained, expected, rtol=1e-5, atol=1e-6)
    # all-reduced: both workers hold the same bits
    assert two_workers[0]["losses"] == two_workers[1]["losses"]
    assert two_workers[0]["weights"] == two_workers[1]["weights"]
    assert one["losses"][-1] < one["losses"][0]

    # and the loop is what model.fit does in one process
    model, _ = _converted(tf.distribute.get_strategy())
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, labels = _data(32)
    history = model.fit(x, labels, batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=False, verbose=0)
    np.testing.assert_allclose(history.history["loss"], one["losses"], rtol=1e-5, atol=1e-6)


@pytest.mark.subprocess
def test_keras_model_fit_fails_under_multi_worker_mirrored_with_or_without_nestad(two_workers):
    """Keras 3 (3.15) Trainer._maybe_symbolic_build passes an (x, y) tuple to strategy.reduce,
    which MultiWorkerMirroredStrategy does not take: keras-team/keras#20585. When this test
    fails, model.fit works: use it in examples/distributed.py and say so in README.md."""
    expected = "ValueError: Attempt to convert a value (PerReplica:"
    for worker in two_workers:
        for error in worker["fit_error"], worker["keras_fit_error"]:
            assert error and error.startswith(expected), error


# --- ParameterServerStrategy ---


def _parameter_server_cluster(tmp_path, servers_import_nestad, steps, try_fit):
    """1 coordinator (chief) + 1 worker + 1 ps, each a process; returns (exit codes, result)."""
    ports = free_ports(3)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{ports[1]}"],
               "ps": [f"127.0.0.1:{ports[2]}"]}
    nestad = "with_nestad" if servers_import_nestad else "without_nestad"
    result_file = tmp_path / "coordinator.json"
    with _processes(tmp_path) as start:
        servers = [start(job, SERVER, json.dumps(cluster), job, nestad, stdin=subprocess.PIPE)
                   for job in ("worker", "ps")]
        coordinator = start("coordinator", COORDINATOR, json.dumps(cluster), result_file, steps,
                            "try_fit" if try_fit else "no_fit")
        codes = _wait([coordinator])
        for server in servers:
            server.stdin.close()  # the servers exit by themselves
        codes += _wait(servers, timeout=30)
    result = json.loads(result_file.read_text()) if result_file.exists() else None
    return codes, result


@pytest.mark.subprocess
def test_parameter_server_strategy_custom_loop_matches_one_process(tmp_path):
    """With one worker, the scheduled steps run one after another: one process's steps."""
    steps = 6
    codes, result = _parameter_server_cluster(tmp_path, servers_import_nestad=True, steps=steps,
                                              try_fit=True)
    assert codes == [0, 0, 0], _logs(tmp_path)
    one = train_on_parameter_servers(tf.distribute.get_strategy(), steps)
    assert result["gelu_is_nestad"]
    np.testing.assert_allclose(result["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    for trained, expected in zip(result["weights"], one["weights"]):
        np.testing.assert_allclose(trained, expected, rtol=1e-5, atol=1e-6)
    assert one["losses"][-1] < one["losses"][0]
    # Keras 3's model.fit has no ClusterCoordinator support (and Keras 3 no DatasetCreator)
    expected = ("ValueError: To use this dataset, you need to pass this dataset to "
                "ClusterCoordinator.create_per_worker_dataset.")
    assert result["fit_error"] == result["keras_fit_error"] == expected, (
        result["fit_error"], result["keras_fit_error"])


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not nestad_tf.backend_info()["kernel_available"],
                    reason="the TF fallback holds no nestad op")
def test_parameter_server_without_nestad_says_op_not_registered(tmp_path):
    """The step runs on the worker: its process must import nestad_tf, or the step fails."""
    codes, _ = _parameter_server_cluster(tmp_path, servers_import_nestad=False, steps=1,
                                         try_fit=False)
    assert codes[0] not in (0, None) and codes[1:] == [0, 0], codes
    log = (tmp_path / "coordinator.log").read_text()
    assert f"Op type not registered '{op_type('FusedActivation')}'" in log, _logs(tmp_path)
