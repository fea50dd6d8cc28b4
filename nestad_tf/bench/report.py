"""Derived figures, the stdout tables and the PNG charts of a benchmark run."""

import os
import platform
import statistics
from typing import Dict, List, Optional

from . import models as _models
from . import targets as _targets

MIB = 2 ** 20


def machine_info() -> dict:
    """CPU model, core count, load average and OS of this machine."""
    info = {"platform": platform.platform(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "cpu_model": None, "load_average": None}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return info


# --- model runs -----------------------------------------------------------------


def _add_step_statistics(run: dict) -> None:
    """step_median/min/max_seconds of a successful run, from its step_seconds."""
    seconds = run["step_seconds"]
    run["step_median_seconds"] = statistics.median(seconds)
    run["step_min_seconds"] = min(seconds)
    run["step_max_seconds"] = max(seconds)


def derive(runs: List[dict]) -> Dict[str, Dict[str, Dict[str, dict]]]:
    """Adds step-time statistics, activation memory and per-sample slopes to each run.

    Activation memory is peak minus the floor peak of the same model and XLA
    setting; per-sample figures are (peak(batch) - peak(slope_batch)) /
    (batch - slope_batch). Returns model -> "xla"/"graph" -> mode -> run.
    """
    table: Dict[str, Dict[str, Dict[str, dict]]] = {}
    for run in runs:
        table.setdefault(run["model"], {}).setdefault(_setting(run["xla"]), {})[run["mode"]] = run
        if run.get("status") != "ok":
            continue
        _add_step_statistics(run)
        if run.get("slope_peak_bytes") is not None and run["batch"] != run["slope_batch"]:
            run["peak_bytes_per_sample"] = ((run["peak_bytes"] - run["slope_peak_bytes"])
                                            / (run["batch"] - run["slope_batch"]))
        else:
            run["peak_bytes_per_sample"] = None
    for settings in table.values():
        for modes in settings.values():
            floor = modes.get("floor")
            floor_ok = floor is not None and floor.get("status") == "ok"
            for run in modes.values():
                if run.get("status") != "ok":
                    continue
                run["activation_bytes"] = (run["peak_bytes"] - floor["peak_bytes"]) if floor_ok else None
                per_sample, floor_per_sample = run["peak_bytes_per_sample"], (
                    floor.get("peak_bytes_per_sample") if floor_ok else None)
                run["activation_bytes_per_sample"] = (
                    per_sample - floor_per_sample
                    if per_sample is not None and floor_per_sample is not None else None)
    return table


def _setting(xla: bool) -> str:
    return "xla" if xla else "graph"


def model_comparisons(table) -> Dict[str, Dict[str, Dict[str, float]]]:
    """model -> setting -> ratios (see targets.comparisons)."""
    out = {}
    for model, settings in table.items():
        for setting, modes in settings.items():
            figures = {mode: {"peak": run["peak_bytes"], "activation": run.get("activation_bytes"),
                              "time": run["step_median_seconds"]}
                       for mode, run in modes.items() if run.get("status") == "ok"}
            out.setdefault(model, {})[setting] = _targets.comparisons(figures)
        graph, xla = settings.get("graph", {}), settings.get("xla", {})
        cross = {}
        for mode in ("nestad", "nestad-tf"):
            keras_xla = xla.get("keras")
            ours = graph.get(mode)
            if _ok(keras_xla) and _ok(ours):
                for metric, key in (("time", "step_median_seconds"), ("peak", "peak_bytes")):
                    value = _targets.ratio(ours[key], keras_xla[key])
                    if value is not None:
                        cross[f"{metric} {mode}(graph)/keras(xla)"] = value
        if cross:
            out[model]["graph_vs_xla"] = cross
    return out


def _ok(run: Optional[dict]) -> bool:
    return run is not None and run.get("status") == "ok"


def _fmt_ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mib(value, digits=1) -> str:
    return "-" if value is None else f"{value / MIB:.{digits}f}"


def model_table(table, comparisons) -> str:
    """The stdout table of a model run."""
    lines = []
    header = (f"{'mode':<15} {'XLA':<4} {'peak MiB':>9} {'x keras':>8} {'act MiB':>8} "
              f"{'resid MiB':>9} {'MiB/sample':>10} {'act/sample':>10} {'step s (min-max)':>22} "
              f"{'x keras':>8}  activations rewritten")
    for model, settings in table.items():
        first = next(run for modes in settings.values() for run in modes.values())
        lines.append("")
        lines.append(f"{model}: batch {first['batch']} (slope from batch {first.get('slope_batch')}), "
                     f"size {first['size']}")
        lines.append(header)
        for setting in ("graph", "xla"):
            modes = settings.get(setting, {})
            keras_run = modes.get("keras")
            for mode, run in modes.items():
                xla = "on" if setting == "xla" else "off"
                if run.get("status") != "ok":
                    lines.append(f"{mode:<15} {xla:<4} {run.get('status')}: {run.get('reason', '')}")
                    continue
                peak_ratio = time_ratio = "-"
                if _ok(keras_run):
                    peak_ratio = _fmt_ratio(_targets.ratio(keras_run["peak_bytes"], run["peak_bytes"]))
                    time_ratio = _fmt_ratio(_targets.ratio(run["step_median_seconds"],
                                                           keras_run["step_median_seconds"]))
                step = (f"{run['step_median_seconds']:.3f} ({run['step_min_seconds']:.3f}-"
                        f"{run['step_max_seconds']:.3f})")
                summary = run.get("activations", {})
                acts = f"{summary.get('replaced', 0)}/{summary.get('total', 0)}"
                lines.append(
                    f"{mode:<15} {xla:<4} {_mib(run['peak_bytes']):>9} {peak_ratio:>8} "
                    f"{_mib(run.get('activation_bytes')):>8} {_mib(run['resident_bytes']):>9} "
                    f"{_mib(run.get('peak_bytes_per_sample'), 2):>10} "
                    f"{_mib(run.get('activation_bytes_per_sample'), 2):>10} {step:>22} "
                    f"{time_ratio:>8}  {acts}")
        ratios = comparisons.get(model, {}).get("graph", {})
        shown = ["peak keras/nestad", "activation keras/nestad", "peak nestad/recompute",
                 "time nestad/keras", "time recompute/nestad", "peak keras/floor"]
        parts = [f"{name} {ratios[name]:.2f}" for name in shown if name in ratios]
        if parts:
            lines.append("ratios (XLA off): " + ", ".join(parts))
        cross = comparisons.get(model, {}).get("graph_vs_xla", {})
        if cross:
            lines.append("vs Keras+XLA: " + ", ".join(f"{k} {v:.2f}" for k, v in cross.items()))
    lines.append("")
    lines.append("x keras: peak keras/mode (higher is better); step time mode/keras (lower is "
                 "better). act = peak - floor peak (same XLA setting).")
    return "\n".join(lines)


def targets_table(records: List[dict], title: str = "issue-7 targets (XLA off):",
                  digits: int = 2) -> str:
    if not records:
        return ""
    lines = ["", title]
    for record in records:
        name = record.get("model") or f"{record['activation']} {record['direction']}"
        lines.append(f"  {'met    ' if record['met'] else 'NOT met'}  {name:<22} "
                     f"{record['target']:<36} measured {record['value']:.{digits}f}")
    return "\n".join(lines)


def model_chart(table, path: str) -> None:
    """PNG: peak memory (floor part shaded) and step time (min-max bars) per model and mode."""
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    models = list(table)
    figure, axes = plt.subplots(len(models), 2, figsize=(12, 3.2 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        labels, peaks, floors, times, low, high = [], [], [], [], [], []
        for setting in ("graph", "xla"):
            for mode, run in table[model].get(setting, {}).items():
                if not _ok(run):
                    continue
                labels.append(mode + (" +XLA" if setting == "xla" else ""))
                peaks.append(run["peak_bytes"] / MIB)
                floor = table[model][setting].get("floor")
                floors.append(floor["peak_bytes"] / MIB if _ok(floor) else 0.0)
                times.append(run["step_median_seconds"])
                low.append(run["step_median_seconds"] - run["step_min_seconds"])
                high.append(run["step_max_seconds"] - run["step_median_seconds"])
        _memory_and_time(axes[row], labels, (peaks, "peak"),
                         ([min(f, p) for f, p in zip(floors, peaks)],
                          "floor peak (no activation memory)"),
                         "peak allocator memory of a training step (MiB)", (times, low, high),
                         model)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --- model runs on Keras' torch and JAX backends (issue 14) ---------------------


def derive_frameworks(runs: List[dict], backend: str) -> Dict[str, Dict[str, dict]]:
    """Step-time statistics and activation bytes (figure minus the floor's) per run.

    Returns model -> mode -> run. activation_bytes is the backend's primary memory
    figure (torch: saved_bytes; JAX: temp_bytes) minus the floor run's;
    activation_<metric>_bytes the same for every memory figure.
    """
    from . import frameworks as _frameworks  # pylint: disable=g-import-not-at-top

    table: Dict[str, Dict[str, dict]] = {}
    for run in runs:
        table.setdefault(run["model"], {})[run["mode"]] = run
        if run.get("status") != "ok":
            continue
        _add_step_statistics(run)
    primary = _frameworks.PRIMARY[backend]
    for modes in table.values():
        floor = modes.get("floor")
        for run in modes.values():
            if not _ok(run):
                continue
            for metric, key, _ in _frameworks.METRICS[backend]:
                value = (run[key] - floor[key] if _ok(floor) and run.get(key) is not None
                         and floor.get(key) is not None else None)
                run[f"activation_{metric}_bytes"] = value
                if metric == primary:
                    run["activation_bytes"] = value
    return table


FRAMEWORK_PAIRS = (("keras", "nestad"), ("nestad", "keras"), ("nestad", "recompute"),
                   ("recompute", "nestad"), ("keras", "recompute"), ("keras", "nestad-auto"),
                   ("nestad-auto", "keras"), ("nestad-auto", "recompute"), ("keras", "nestad-tf"),
                   ("nestad-tf", "keras"), ("nestad-tf", "nestad"), ("keras", "nestad-fused"),
                   ("nestad-fused", "keras"), ("keras", "floor"), ("nestad", "floor"))
FRAMEWORK_PAIRS += tuple(pair for mode in _models.STORAGE_MODES
                         for pair in (("keras", mode), (mode, "recompute"), (mode, "keras")))


def framework_comparisons(table, backend: str) -> Dict[str, Dict[str, float]]:
    """model -> ratios ("saved keras/nestad", "temp nestad/recompute", "time nestad/keras", ...)."""
    from . import frameworks as _frameworks  # pylint: disable=g-import-not-at-top

    out = {}
    metrics = [metric for metric, _, _ in _frameworks.METRICS[backend]] + ["act", "time",
                                                                          "time-min"]
    for model, modes in table.items():
        figures = {mode: _frameworks.figures(run, backend) for mode, run in modes.items()
                   if _ok(run)}
        out[model] = _targets.comparisons(figures, pairs=FRAMEWORK_PAIRS, metrics=metrics)
    return out


def framework_table(table, comparisons, backend: str, settings: Dict[str, dict]) -> str:
    """The stdout table of a `model --backend torch|jax` run."""
    from . import frameworks as _frameworks  # pylint: disable=g-import-not-at-top

    metrics = _frameworks.METRICS[backend]
    primary = _frameworks.PRIMARY[backend]
    columns = []
    for metric, _, _ in metrics:
        columns.append(f"{metric + ' MiB':>12}")
        if metric == primary:
            columns += [f"{'x keras':>8}", f"{'act MiB':>8}", f"{'x keras':>8}"]
    header = (f"{'mode':<15} " + " ".join(columns) + f" {'tensors':>7} "
              f"{'step s (min-max)':>22} {'x keras':>8}"
              + (f" {'compile s':>9}" if backend == "jax" else "") + "  activations rewritten")
    lines = []
    for model, modes in table.items():
        setting = settings.get(model, {})
        first = next(iter(modes.values()))
        layers = f", {setting['bert_layers']} layers" if setting.get("bert_layers") else ""
        lines.append("")
        lines.append(f"{model} on KERAS_BACKEND={backend}: batch {first['batch']}, size "
                     f"{first['size']} {setting.get('size_unit', '')}{layers}, "
                     f"{setting.get('optimizer', '')}; "
                     f"step: {_frameworks.STEP_DESCRIPTION[backend]}")
        lines.append(header)
        keras_run = modes.get("keras")
        for mode, run in modes.items():
            if not _ok(run):
                lines.append(f"{mode:<15} {run.get('status')}: {run.get('reason', '')}")
                continue
            cells = []
            for metric, key, _ in metrics:
                cells.append(f"{_mib(run.get(key)):>12}")
                if metric == primary:
                    ratio = act_ratio = None
                    if _ok(keras_run):
                        ratio = _targets.ratio(keras_run.get(key), run.get(key))
                        act_ratio = _targets.ratio(keras_run.get("activation_bytes"),
                                                   run.get("activation_bytes"))
                    cells += [f"{_fmt_ratio(ratio):>8}", f"{_mib(run.get('activation_bytes')):>8}",
                              f"{_fmt_ratio(act_ratio):>8}"]
            tensors = run.get("saved_tensors", run.get("residual_tensors"))
            time_ratio = (_targets.ratio(run["step_median_seconds"],
                                         keras_run["step_median_seconds"])
                          if _ok(keras_run) else None)
            step = (f"{run['step_median_seconds']:.3f} ({run['step_min_seconds']:.3f}-"
                    f"{run['step_max_seconds']:.3f})")
            summary = run.get("activations", {})
            acts = f"{summary.get('replaced', 0)}/{summary.get('total', 0)}"
            compile_cell = (f" {run.get('compile_seconds', 0):>9.1f}" if backend == "jax" else "")
            tensors = "-" if tensors is None else tensors
            lines.append(f"{mode:<15} " + " ".join(cells) + f" {tensors:>7} "
                         f"{step:>22} {_fmt_ratio(time_ratio):>8}{compile_cell}  {acts}")
        ratios = comparisons.get(model, {})
        shown = [f"{primary} keras/nestad", "act keras/nestad", f"{primary} recompute/nestad",
                 f"{primary} keras/nestad-auto", "time nestad/keras", "time recompute/nestad",
                 "time nestad-tf/keras", "time-min nestad/keras", "time-min recompute/nestad"]
        if backend == "jax":
            shown[3:3] = ["residual keras/nestad", "residual recompute/nestad"]
        shown += [f"{primary} {mode}/recompute" for mode in _models.STORAGE_MODES]
        parts = [f"{name} {ratios[name]:.2f}" for name in shown if name in ratios]
        if parts:
            lines.append("ratios: " + ", ".join(parts))
    lines.append("")
    descriptions = "; ".join(f"{metric} = {text}" for metric, _, text in metrics)
    lines.append(f"x keras: keras/mode for memory (higher is better), mode/keras for step time "
                 f"(median; lower is better; time-min: of the fastest steps); {descriptions}; "
                 f"act = {primary} minus the floor's; "
                 f"tensors = distinct {'storages saved' if backend == 'torch' else 'residuals'}.")
    return "\n".join(lines)


def framework_chart(table, backend: str, path: str) -> None:
    """PNG: the primary memory figure (floor part shaded) and step time per model and mode."""
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    from . import frameworks as _frameworks  # pylint: disable=g-import-not-at-top

    primary = _frameworks.PRIMARY[backend]
    key, label = next((k, text) for m, k, text in _frameworks.METRICS[backend] if m == primary)
    models = list(table)
    figure, axes = plt.subplots(len(models), 2, figsize=(12, 3.2 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        runs = [(mode, run) for mode, run in table[model].items() if _ok(run)]
        floor = table[model].get("floor")
        labels = [mode for mode, _ in runs]
        values = [run[key] / MIB for _, run in runs]
        floors = [min(floor[key] / MIB, v) if _ok(floor) else 0.0 for v in values]
        times = [run["step_median_seconds"] for _, run in runs]
        low = [run["step_median_seconds"] - run["step_min_seconds"] for _, run in runs]
        high = [run["step_max_seconds"] - run["step_median_seconds"] for _, run in runs]
        _memory_and_time(axes[row], labels, (values, primary), (floors, "floor"), label,
                         (times, low, high), f"{model} ({backend})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _memory_and_time(axes, labels, values, floors, memory_label, times, title):
    """One chart row: memory bars (values over the floor's) and step-time bars with
    min-max error bars. values, floors: (numbers, legend label); times: (median, low, high)."""
    positions = range(len(labels))
    memory, speed = axes
    memory.barh(positions, values[0], color="tab:blue", label=values[1])
    memory.barh(positions, floors[0], color="tab:gray", alpha=0.6, label=floors[1])
    memory.set_xlabel(memory_label)
    memory.set_title(f"{title}: memory")
    memory.legend(loc="lower right", fontsize=7)
    median, low, high = times
    speed.barh(positions, median, xerr=[low, high], color="tab:orange")
    speed.set_xlabel("step time (s), median with min-max")
    speed.set_title(f"{title}: step time")
    for chart in (memory, speed):
        chart.set_yticks(list(positions), labels)
        chart.invert_yaxis()


# --- kernel runs ----------------------------------------------------------------


def kernel_table(copy: Dict[str, dict], results: List[dict]) -> str:
    lines = ["", "streaming baselines (TF ops unless said; GB/s of bytes read + written):"]
    for name, figure in copy.items():
        lines.append(f"  {name:<11} {figure['gb_per_s']:7.1f} GB/s (median {figure['median_seconds'] * 1e3:.1f} "
                     f"ms, best {figure['best_gb_per_s']:.1f} GB/s)")
    lines.append("")
    lines.append(f"{'activation':<12} {'dir':<9} {'impl':<8} {'ms (median)':>11} {'GB/s':>7} "
                 f"{'x copy':>7} {'x copy_2to1':>12}")
    for result in results:
        for direction in ("forward", "backward"):
            for name, figure in result[direction].items():
                lines.append(f"{result['activation']:<12} {direction:<9} {name:<8} "
                             f"{figure['median_seconds'] * 1e3:11.1f} {figure['gb_per_s']:7.1f} "
                             f"{figure['fraction_of_copy']:7.2f} "
                             f"{figure['fraction_of_copy_2to1']:12.2f}")
    lines.append("")
    lines.append("x copy: GB/s over the copy's GB/s (y = x * s, 1 read + 1 write); x copy_2to1: "
                 "over x * z (2 reads + 1 write, the backward's pattern). copy_1to2 is two ops "
                 "reading x twice: a reference, not a bound.")
    return "\n".join(lines)


def kernel_chart(copy: Dict[str, dict], results: List[dict], path: str) -> None:
    """PNG: forward and backward GB/s per activation and implementation, copy as a line."""
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    figure, axes = plt.subplots(1, 2, figsize=(12, 3.5), squeeze=False)
    for ax, direction in zip(axes[0], ("forward", "backward")):
        implementations = list(results[0][direction]) if results else []
        width = 0.8 / max(len(implementations), 1)
        for i, name in enumerate(implementations):
            values = [r[direction][name]["gb_per_s"] for r in results]
            ax.bar([k + i * width for k in range(len(results))], values, width, label=name)
        ax.axhline(copy["copy"]["gb_per_s"], color="black", linestyle="--", label="copy (x*s)")
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(results))],
                      [r["activation"] for r in results])
        ax.set_ylabel("GB/s (bytes read + written)")
        ax.set_title(f"{direction}: {results[0]['elements'] if results else 0:,} "
                     f"{results[0]['dtype'] if results else ''} elements")
        ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
