"""Does training still converge when f' is kept lossily? (derivative= modes, issue 8)

Trains two small models on scikit-learn's digits data set (1797 8x8 images of
handwritten digits shipped inside scikit-learn: no download) with every
saved-derivative storage mode of nestad_tf, plus the plain Keras model as the
reference, over fixed seeds, and reports the final test accuracy per model and
mode (mean +- std over seeds) and its difference to derivative="exact" (paired
by seed: same initial weights, same batch order; only the kept f' differs).

  mlp: 64 -> Dense(128) gelu -> Dense(128) mish -> Dense(10)
  cnn: 8x8x1 -> Conv(16, 3x3) gelu -> Conv(32, 3x3) mish -> MaxPool 2x2
       -> Conv(32, 3x3) silu -> GlobalAveragePooling -> Dense(10)

gelu, mish and silu keep f'(x) itself in the exact mode, so every lossy mode
(bfloat16, uint8, bits4 ... bits1) actually applies to them. Before training,
the script checks that each lossy mode changes the first-step gradients (i.e.
that the mode is really in effect) and records by how much.

Output (default directory docs/): convergence.json (all raw numbers: per-epoch
train and test loss and test accuracy per model, mode and seed), convergence.png
(mean loss curves), and the markdown table on stdout.

  python tools/convergence_study.py                      # full study (~10 min on 2 cores)
  python tools/convergence_study.py --epochs 2 --seeds 0 --modes exact bits4   # smoke run
"""

import argparse
import inspect
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import nestad_tf  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERAS_REFERENCE = "keras"  # the plain Keras model, next to the nestad modes
MODES = ("exact", "bfloat16", "uint8", "bits4", "bits3", "bits2", "bits1")
MODELS = ("mlp", "cnn")
SEEDS = (0, 1, 2)
ACCEPTANCE = {"uint8": 1.0, "bits4": 1.0}  # max accuracy drop vs exact, in points


def supported_modes():
    """The derivative= modes nestad_tf.layers.Activation accepts in this checkout."""
    if "derivative" not in inspect.signature(nestad_tf.layers.Activation.__init__).parameters:
        return ("exact",)
    from nestad_tf import storage  # present together with derivative=
    return tuple(m for m in MODES if m in storage.DERIVATIVE_MODES)


def activation_layer(name, mode):
    if mode == KERAS_REFERENCE:
        return keras.layers.Activation(name)
    if mode == "exact" and supported_modes() == ("exact",):
        return nestad_tf.layers.Activation(name)
    return nestad_tf.layers.Activation(name, derivative=mode)


def build_model(kind, mode, seed):
    """The model `kind` with its activations kept by `mode`; weights depend on `seed` only."""
    keras.utils.set_random_seed(seed)
    if kind == "mlp":
        inputs = keras.Input((64,))
        h = keras.layers.Dense(128)(inputs)
        h = activation_layer("gelu", mode)(h)
        h = keras.layers.Dense(128)(h)
        h = activation_layer("mish", mode)(h)
    elif kind == "cnn":
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(16, 3, padding="same")(inputs)
        h = activation_layer("gelu", mode)(h)
        h = keras.layers.Conv2D(32, 3, padding="same")(h)
        h = activation_layer("mish", mode)(h)
        h = keras.layers.MaxPooling2D(2)(h)
        h = keras.layers.Conv2D(32, 3, padding="same")(h)
        h = activation_layer("silu", mode)(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
    else:
        raise ValueError(kind)
    outputs = keras.layers.Dense(10)(h)
    return keras.Model(inputs, outputs, name=f"{kind}_{mode}")


def load_data():
    """Digits scaled to [0, 1]; a fixed stratified 75/25 split."""
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=0, stratify=digits.target)
    return x_train, x_test, y_train, y_test


def shaped(kind, x):
    return x.reshape(-1, 8, 8, 1) if kind == "cnn" else x


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def first_gradients(kind, mode, x, y):
    """Gradients of the loss at the initial weights (seed 0) on a batch, in a tf.function."""
    model = build_model(kind, mode, 0)

    @tf.function(jit_compile=False)
    def gradients(x, y):
        with tf.GradientTape() as tape:
            loss = LOSS(y, model(x, training=True))
        return tape.gradient(loss, model.trainable_weights)

    return np.concatenate([g.numpy().ravel() for g in gradients(x, y)])


def gradient_deviation(kind, modes, x, y):
    """Relative L2 distance of each mode's first gradients to the exact mode's."""
    exact = first_gradients(kind, "exact", x, y)
    deviation = {}
    for mode in modes:
        grads = exact if mode == "exact" else first_gradients(kind, mode, x, y)
        deviation[mode] = float(np.linalg.norm(grads - exact) / np.linalg.norm(exact))
    lossy = [m for m in modes if m not in ("exact", KERAS_REFERENCE)]
    unchanged = [m for m in lossy if deviation[m] == 0.0]
    if unchanged:
        raise RuntimeError(f"{kind}: derivative modes {unchanged} left the gradients bit-identical "
                           "to exact: the mode is not in effect (XLA? backend='tf'?)")
    return deviation


def train(kind, mode, seed, data, args):
    x_train, x_test, y_train, y_test = data
    model = build_model(kind, mode, seed)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=LOSS,
                  metrics=["accuracy"], jit_compile=False)  # XLA would take the pure-TF path
    keras.utils.set_random_seed(seed)  # same batch order for every mode
    start = time.perf_counter()
    history = model.fit(shaped(kind, x_train), y_train, batch_size=args.batch_size,
                        epochs=args.epochs, validation_data=(shaped(kind, x_test), y_test),
                        shuffle=True, verbose=0)
    seconds = time.perf_counter() - start
    h = history.history
    return {
        "train_loss": [float(v) for v in h["loss"]],
        "test_loss": [float(v) for v in h["val_loss"]],
        "test_accuracy": [float(v) for v in h["val_accuracy"]],
        "seconds": seconds,
    }


def summarize(results, models, modes, seeds):
    """{model: {mode: {accuracy mean/std, paired delta vs exact mean/std, loss}}}, in points."""
    summary = {}
    for kind in models:
        summary[kind] = {}
        exact = np.array([results[kind]["exact"][str(s)]["test_accuracy"][-1] for s in seeds])
        for mode in modes:
            runs = [results[kind][mode][str(s)] for s in seeds]
            accuracy = 100 * np.array([r["test_accuracy"][-1] for r in runs])
            delta = accuracy - 100 * exact
            summary[kind][mode] = {
                "accuracy_mean": float(accuracy.mean()), "accuracy_std": float(accuracy.std()),
                "delta_mean": float(delta.mean()), "delta_std": float(delta.std()),
                "delta_min": float(delta.min()),
                "final_train_loss": float(np.mean([r["train_loss"][-1] for r in runs])),
                "final_test_loss": float(np.mean([r["test_loss"][-1] for r in runs])),
            }
    return summary


def markdown_table(summary, deviations, models, modes, seeds, epochs):
    lines = [
        f"Final test accuracy after {epochs} epochs, mean ± std over seeds "
        f"{', '.join(map(str, seeds))} (450 test images: 1 image = 0.22 points); "
        "Δ: paired difference to `exact` (same seed), mean ± std; "
        "grad dev.: relative L2 distance of the first step's gradients to `exact`.",
        "",
        "| model | derivative | test accuracy (%) | Δ vs exact (points) | final train loss "
        "| final test loss | grad dev. |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in models:
        for mode in modes:
            s = summary[kind][mode]
            delta = "—" if mode == "exact" else f"{s['delta_mean']:+.2f} ± {s['delta_std']:.2f}"
            label = "Keras (reference)" if mode == KERAS_REFERENCE else f"`{mode}`"
            lines.append(
                f"| {kind} | {label} | {s['accuracy_mean']:.2f} ± {s['accuracy_std']:.2f} "
                f"| {delta} | {s['final_train_loss']:.4f} | {s['final_test_loss']:.4f} "
                f"| {deviations[kind][mode]:.2e} |")
    return "\n".join(lines)


def acceptance_lines(summary, models):
    lines = []
    for kind in models:
        for mode, limit in ACCEPTANCE.items():
            if mode not in summary[kind]:
                continue
            delta = summary[kind][mode]["delta_mean"]
            verdict = "PASS" if delta >= -limit else "FAIL"
            lines.append(f"{verdict}: {kind} {mode}: mean test accuracy {delta:+.2f} points "
                         f"vs exact (acceptance: >= -{limit:g})")
    return lines


def plot(results, models, modes, seeds, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.95, len(modes)))
    for col, kind in enumerate(models):
        for row, key in enumerate(("train_loss", "test_loss")):
            ax = axes[row][col]
            for mode, color in zip(modes, colors):
                curves = np.array([results[kind][mode][str(s)][key] for s in seeds])
                epochs = np.arange(1, curves.shape[1] + 1)
                if mode == KERAS_REFERENCE:  # on top: it coincides with exact
                    style = dict(color="black", linestyle=(0, (2, 3)), zorder=10)
                else:
                    style = dict(color=color)
                ax.plot(epochs, curves.mean(axis=0), label=mode, linewidth=1.4, **style)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"{key.replace('_', ' ')} (mean of {len(seeds)} seeds)")
            ax.set_title(f"{kind}: {key.replace('_', ' ')}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("digits, nestad_tf derivative= storage modes vs Keras")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replot(out_dir):
    with open(os.path.join(out_dir, "convergence.json")) as f:
        document = json.load(f)
    settings = document["settings"]
    models, modes, seeds = settings["models"], settings["modes"], settings["seeds"]
    png = os.path.join(out_dir, "convergence.png")
    plot(document["runs"], models, modes, seeds, png)
    print(markdown_table(document["summary"], document["first_step_gradient_deviation"],
                         models, modes, seeds, settings["epochs"]))
    print()
    print("\n".join(document["acceptance"]))
    print(f"\nwrote {png}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--modes", nargs="+", default=None,
                        help=f"derivative= modes (default: those available of {MODES})")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--out-dir", default=os.path.join(REPO_ROOT, "docs"))
    parser.add_argument("--no-keras", action="store_true", help="skip the plain Keras reference")
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw the PNG and reprint the table from OUT_DIR/convergence.json")
    args = parser.parse_args(argv)
    if args.plot_only:
        return replot(args.out_dir)

    available = supported_modes()
    modes = args.modes or list(available)
    missing = [m for m in modes if m not in available]
    if missing:
        parser.error(f"modes {missing} are not available in this checkout (have {available})")
    if "exact" not in modes:
        modes = ["exact"] + modes  # the baseline of every difference
    modes = ([] if args.no_keras else [KERAS_REFERENCE]) + modes
    tf.config.experimental.enable_op_determinism()
    info = nestad_tf.backend_info()
    print(f"nestad_tf {nestad_tf.__version__}, TensorFlow {info['tensorflow']}, "
          f"kernels: {info['reason']}; modes: {', '.join(modes)}", flush=True)

    data = load_data()
    probe_x, probe_y = data[0][:256], data[2][:256]
    deviations = {kind: gradient_deviation(kind, modes, shaped(kind, probe_x), probe_y)
                  for kind in args.models}
    results = {kind: {mode: {} for mode in modes} for kind in args.models}
    start = time.perf_counter()
    for kind in args.models:
        for mode in modes:
            for seed in args.seeds:
                run = train(kind, mode, seed, data, args)
                results[kind][mode][str(seed)] = run
                print(f"{kind:4s} {mode:9s} seed {seed}: test accuracy "
                      f"{100 * run['test_accuracy'][-1]:6.2f}%, train loss "
                      f"{run['train_loss'][-1]:.4f} ({run['seconds']:.1f} s)", flush=True)
    total = time.perf_counter() - start

    summary = summarize(results, args.models, modes, args.seeds)
    table = markdown_table(summary, deviations, args.models, modes, args.seeds, args.epochs)
    verdicts = acceptance_lines(summary, args.models)
    os.makedirs(args.out_dir, exist_ok=True)
    png = os.path.join(args.out_dir, "convergence.png")
    plot(results, args.models, modes, args.seeds, png)
    document = {
        "generated_by": "tools/convergence_study.py " + " ".join(argv or sys.argv[1:]),
        "tensorflow": info["tensorflow"], "kernels": info["reason"],
        "settings": {"models": args.models, "modes": modes, "seeds": args.seeds,
                     "epochs": args.epochs, "batch_size": args.batch_size,
                     "learning_rate": args.learning_rate, "optimizer": "Adam",
                     "split": "digits, stratified 75/25, random_state=0"},
        "training_seconds": total,
        "first_step_gradient_deviation": deviations,
        "summary": summary,
        "acceptance": verdicts,
        "runs": results,
    }
    with open(os.path.join(args.out_dir, "convergence.json"), "w") as f:
        json.dump(document, f, indent=1)
        f.write("\n")
    print()
    print(table)
    print()
    print("\n".join(verdicts))
    print(f"\ntraining took {total:.0f} s; wrote {png} and convergence.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
