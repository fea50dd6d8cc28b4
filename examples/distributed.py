"""Train a converted model with tf.distribute (no engine of nestad's own).

    python examples/distributed.py               # MirroredStrategy: 2 replicas on 2 logical CPUs
    python examples/distributed.py --workers 2   # MultiWorkerMirroredStrategy: 2 local processes

Create (or convert) the model and compile it inside `strategy.scope()` so that its variables
are mirrored; nestad's activations hold no variables and need nothing else. On GPUs use
`tf.distribute.MirroredStrategy()` (all visible GPUs).

With `--workers N` this script plays a cluster on one machine: it picks free ports on
127.0.0.1, starts N copies of itself with `--worker` and TF_CONFIG set, waits for them (with a
time limit), then trains the same model with `model.fit` in one process and prints whether the
losses match. On a real cluster, set TF_CONFIG on every machine and run the `--worker` part:

    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 0}}' python train.py   # index 1 on host1

Every worker is its own TensorFlow process: nestad_tf (with its C++ kernels) must be installed
and imported on every worker.

Keras 3's `model.fit` does not run under MultiWorkerMirroredStrategy, for any model (Keras
3.15, keras-team/keras#20585: `ValueError: Attempt to convert a value (PerReplica:{...}) with
an unsupported type`), so the workers train with `fit_with_a_loop` below: the few lines of a
training step that `model.fit` runs, with the same loss, optimizer and batches.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import nestad_tf

TIME_LIMIT_S = 300          # for the whole cluster: the workers are stopped after this
COLLECTIVE_TIMEOUT_S = 120  # a worker whose peer died fails after this instead of waiting forever
BATCH_SIZE = 32             # global: each step, every replica (or worker) gets its share
EPOCHS = 3


def build_model(strategy, verbose=False):
    keras.utils.set_random_seed(0)  # the same initial weights in every process
    with strategy.scope():
        inputs = keras.Input((16,))
        h = keras.layers.Dense(64, activation="gelu")(inputs)
        h = keras.layers.Dense(64, activation="mish")(h)
        outputs = keras.layers.Dense(4)(h)
        model = nestad_tf.convert(keras.Model(inputs, outputs), verbose=verbose)
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def data():
    rng = np.random.RandomState(0)
    return rng.randn(256, 16).astype("float32"), rng.randint(0, 4, 256)


def fit_with_a_loop(strategy, model, x, y, verbose=True):
    """model.fit(x, y, batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=False), written out."""
    # Every worker passes the same arrays; sharding by DATA gives each worker its part of every
    # global batch, so one step of the cluster sees the same examples as one step of `fit`.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH_SIZE).with_options(options)
    batches = strategy.experimental_distribute_dataset(dataset)
    per_example_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                  reduction="none")

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.nn.compute_average_loss(per_example_loss(y, model(x, training=True)),
                                              global_batch_size=BATCH_SIZE)
        gradients = tape.gradient(loss, model.trainable_weights)
        # the optimizer sums the gradients of all replicas before it updates the weights
        model.optimizer.apply_gradients(zip(gradients, model.trainable_weights))
        return loss

    @tf.function
    def train_step(x, y):
        return strategy.reduce("SUM", strategy.run(replica_step, args=(x, y)), axis=None)

    losses = []
    for epoch in range(EPOCHS):
        losses.append(float(np.mean([train_step(x, y) for x, y in batches])))
        if verbose:
            print(f"epoch {epoch + 1}/{EPOCHS} - loss: {losses[-1]:.4f}", flush=True)
    return losses


def run_mirrored():
    # Split the CPU into two logical devices before TensorFlow initialises its devices
    # (importing keras and nestad_tf does not).
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    print("replicas:", strategy.num_replicas_in_sync)
    model = build_model(strategy, verbose=True)
    x, y = data()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=EPOCHS, verbose=2)  # 16 per replica


def run_worker(losses_file):
    """One worker of the cluster in TF_CONFIG (what every machine of a real cluster runs)."""
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_S)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    is_chief = json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0
    model = build_model(strategy, verbose=is_chief)
    losses = fit_with_a_loop(strategy, model, *data(), verbose=is_chief)
    with open(losses_file, "w") as f:
        json.dump(losses, f)


def free_ports(count):
    """Ports that are free on 127.0.0.1 now (the OS picks them)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def wait_for(processes, timeout):
    """Waits until all have exited, one has failed or `timeout` has passed; returns exit codes."""
    deadline = time.monotonic() + timeout
    while (any(p.poll() is None for p in processes) and not any(p.poll() for p in processes)
           and time.monotonic() < deadline):
        time.sleep(0.1)
    return [p.poll() for p in processes]


def run_cluster(num_workers):
    """Starts `num_workers` local worker processes, then compares with one process."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(num_workers)]}
    with tempfile.TemporaryDirectory() as tmp:
        files = [os.path.join(tmp, f"worker{i}.json") for i in range(num_workers)]
        workers = []
        try:
            for i, losses_file in enumerate(files):
                tf_config = {"cluster": cluster, "task": {"type": "worker", "index": i}}
                env = dict(os.environ, TF_CONFIG=json.dumps(tf_config))
                workers.append(subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), "--worker", losses_file], env=env))
            codes = wait_for(workers, TIME_LIMIT_S)
        finally:  # stop whatever still runs: after a failure, the time limit or Ctrl-C
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
        if codes != [0] * num_workers:
            sys.exit(f"worker exit codes: {codes} (None: stopped after {TIME_LIMIT_S} s or "
                     "after another worker failed)")
        per_worker = []
        for i, losses_file in enumerate(files):
            with open(losses_file) as f:
                per_worker.append(json.load(f))
            print(f"worker {i} loss: {per_worker[-1]}")

    x, y = data()
    history = build_model(tf.distribute.get_strategy()).fit(
        x, y, batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=False, verbose=0)
    single = history.history["loss"]
    print(f"single process (model.fit) loss: {single}")
    difference = max(np.max(np.abs(np.subtract(losses, single))) for losses in per_worker)
    match = bool(np.allclose(per_worker, [single] * num_workers, rtol=1e-5, atol=1e-6))
    print(f"multi-worker matches single process: {match} (max abs difference {difference:.2g})")
    if not match:
        sys.exit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=0,
                        help="run MultiWorkerMirroredStrategy with this many local processes")
    parser.add_argument("--worker", metavar="LOSSES_FILE",
                        help="run as one worker of the cluster in TF_CONFIG; write losses there")
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker)
    elif args.workers:
        run_cluster(args.workers)
    else:
        run_mirrored()
