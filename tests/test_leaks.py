"""Leaks: many small training steps keep TF's allocator and the process RSS flat.

Each run is a fresh process (RSS is per process): a Dense -> nestad activation ->
Dense model trained for STEPS steps, in a tf.function and eagerly. After a warm-up,
TF's CPU allocator `current` bytes, read after every step, must show no trend
(nothing of a step survives it: no saved f', no tape, no op outputs): the median of
the last tenth of the readings may exceed the median of the first tenth by less than
one activation-sized tensor, whatever single readings do in between (their spread
is reported). RSS, read every RSS_EVERY steps, may grow only a little (medians of
the first and last three readings).

TF's CPU allocator counts only allocations of 256 KiB and more in `current` (smaller
ones come from a cache it does not report), so every activation-sized tensor here is
512 x 256 float32 = 512 KiB. `test_the_check_sees_a_leak` keeps one f' per step on
purpose, to show the allocator check can fail.
"""

import json
import os
import statistics
import subprocess
import sys
import textwrap

import pytest

import allocator

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

STEPS = 2000
WARMUP = 50
RSS_EVERY = 100
ACTIVATION_BYTES = 512 * 256 * 4
# Generous: RSS moves with Python's and glibc's allocators, not only with leaks. A
# leak of one activation-sized tensor (512 KiB) per step would be 1 GB.
RSS_GROWTH_LIMIT_MB = 40

CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    import keras
    import nestad_tf

    mode, activation, backend, steps, warmup, rss_every, leak = sys.argv[1:8]
    steps, warmup, rss_every = int(steps), int(warmup), int(rss_every)

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((32,)),
        keras.layers.Dense(256),
        nestad_tf.layers.Activation(activation, backend=backend),
        keras.layers.Dense(256, activation=nestad_tf.get(activation, backend=backend)),
        keras.layers.Dense(1),
    ])
    optimizer = keras.optimizers.SGD(1e-3)
    x = tf.random.normal((512, 32), seed=1)
    target = tf.random.normal((512, 1), seed=2)
    leaked = []

    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - target))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        if leak == "leak":  # keeps one activation-sized tensor per step
            leaked.append(nestad_tf.activation(x @ model.layers[0].kernel, activation))
        return loss

    if mode == "graph":
        step = tf.function(step)

    current, losses, rss = [], [], []
    for i in range(steps):
        loss = step()
        losses.append(float(loss))
        del loss
        current.append(tf.config.experimental.get_memory_info("CPU:0")["current"])
        if i + 1 >= warmup and (i + 1 - warmup) % rss_every == 0:
            rss.append(rss_mb())
    print(json.dumps({
        "current_after_warmup": current[warmup - 1:],
        "rss_after_warmup_mb": rss,
        "first_loss": losses[0], "last_loss": losses[-1],
        "backend": nestad_tf.backend_info()["kernel_available"],
    }))
    """
)


def _train(mode, activation, backend, steps=STEPS, leak="no_leak"):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode, activation, backend, str(steps), str(WARMUP),
         str(RSS_EVERY), leak],
        capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _trend(readings, share=0.1):
    """Median of the last `share` of the readings minus the median of the first (>= 3 each)."""
    count = max(3, int(len(readings) * share))
    return statistics.median(readings[-count:]) - statistics.median(readings[:count])


@pytest.mark.parametrize("mode,activation,backend", [
    ("graph", "mish", "kernel"),
    ("eager", "gelu", "kernel"),
    ("graph", "silu", "tf"),
])
def test_training_steps_do_not_leak(mode, activation, backend):
    run = _train(mode, activation, backend)
    assert run["backend"], "kernels not loaded"
    assert run["last_loss"] < run["first_loss"], "the model did not train"
    current, rss = run["current_after_warmup"], run["rss_after_warmup_mb"]
    allocator_trend, rss_trend = _trend(current), _trend(rss, share=0)
    allocator.record(f"leaks/{mode}/{activation}/{backend}",
                     allocator_trend_mib=allocator_trend / allocator.MiB,
                     allocator_spread_mib=(max(current) - min(current)) / allocator.MiB,
                     allocator_levels=len(set(current)),
                     rss_trend_mb=rss_trend, rss_spread_mb=max(rss) - min(rss))
    assert allocator_trend < ACTIVATION_BYTES, (
        f"allocator bytes after a step grew by {allocator_trend / allocator.MiB:.2f} MiB over "
        f"{len(current)} steps (median of the last tenth vs the first), from "
        f"{min(current)} to {max(current)}")
    assert rss_trend < RSS_GROWTH_LIMIT_MB, f"RSS grew by {rss_trend:.1f} MB: {rss}"


def test_the_check_sees_a_leak():
    run = _train("eager", "mish", "kernel", steps=WARMUP + 20, leak="leak")
    # One tensor kept per step: 18 between the medians of the first and last 3 readings.
    assert _trend(run["current_after_warmup"]) >= 10 * ACTIVATION_BYTES
