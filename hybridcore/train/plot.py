"""`hybridcore plot RUN_DIR [RUN_DIR ...] [--out PNG]`: loss, learning rate, throughput and gradient norm.

One colour per run, overlaid: train loss (raw faint, EMA-smoothed solid) and validation loss (dashed, dots)
share the first panel. Reads only metrics.jsonl, so it works on a run that is still going.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..io.files import atomic_file
from .metrics import METRICS_FILE, read_metrics


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (holding metrics.jsonl)")
    parser.add_argument("--out", default=None, help="PNG to write (default: RUN_DIR/metrics.png for one run, "
                        "./metrics.png for several)")
    parser.add_argument("--smooth", type=float, default=None,
                        help="EMA factor for the smoothed train loss, 0 = none (default: by run length, "
                        "1 - 20/steps, at most 0.95)")
    parser.add_argument("--log-x", action="store_true", help="logarithmic step axis")


def ema(values: list[float], factor: float) -> list[float]:
    """Bias-corrected exponential moving average (the first points are not pulled toward zero)."""
    out, average, weight = [], 0.0, 0.0
    for value in values:
        average = factor * average + (1 - factor) * value
        weight = factor * weight + (1 - factor)
        out.append(average / weight)
    return out


def auto_smoothing(num_points: int) -> float:
    """Short runs barely smoothed (an EMA lags behind a falling loss), long ones up to 0.95."""
    return min(0.95, max(0.0, 1.0 - 20.0 / max(num_points, 1)))


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records
              if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [s for s, _ in points], [v for _, v in points]


def _labels(runs: list[Path]) -> list[str]:
    names = [run.resolve().name for run in runs]
    if len(set(names)) == len(names):
        return names
    return [str(run) for run in runs]  # the same last component twice: show the paths


def plot_runs(runs: list[str | Path], out: str | Path, smooth: float | None = None, log_x: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [Path(r) for r in runs]
    data = []
    for run in runs:
        if not (run / METRICS_FILE).is_file():
            raise ValueError(f"{run}: no {METRICS_FILE} (not a training run directory)")
        data.append(read_metrics(run))
    if not any(_series(records, "loss")[0] for records in data):
        raise ValueError("no train loss to plot yet in " + ", ".join(map(str, runs)))

    figure, axes = plt.subplots(2, 2, figsize=(13, 8.5), constrained_layout=True)
    loss_ax, lr_ax, speed_ax, norm_ax = axes.flat
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, records) in enumerate(zip(_labels(runs), data)):
        colour = colours[index % len(colours)]
        steps, loss = _series(records, "loss")
        factor = auto_smoothing(len(steps)) if smooth is None else smooth
        if steps:
            if factor > 0:
                loss_ax.plot(steps, loss, color=colour, alpha=0.25, linewidth=0.8)
                loss_ax.plot(steps, ema(loss, factor), color=colour, linewidth=1.8, label=f"{label} train")
            else:
                loss_ax.plot(steps, loss, color=colour, linewidth=1.5, label=f"{label} train")
        val_steps, val_loss = _series(records, "val_loss")
        if val_steps:
            loss_ax.plot(val_steps, val_loss, color=colour, linestyle="--", marker="o", markersize=4,
                         linewidth=1.5, label=f"{label} validation")
        for ax, key in ((lr_ax, "lr"), (speed_ax, "tokens_per_s"), (norm_ax, "grad_norm")):
            x, y = _series(records, key)
            if x:
                ax.plot(x, y, color=colour, linewidth=1.5, label=label)

    loss_ax.set(title="loss (cross entropy, nats per token)", ylabel="loss")
    lr_ax.set(title="learning rate", ylabel="lr")
    speed_ax.set(title="throughput", ylabel="tokens / s")
    norm_ax.set(title="gradient norm (before clipping)", ylabel="norm")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in axes.flat:
        ax.set_xlabel("optimizer step")
        ax.grid(True, alpha=0.3)
        if log_x:
            ax.set_xscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
    figure.suptitle(", ".join(_labels(runs)), fontsize=12)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, "wb") as handle:
        figure.savefig(handle, dpi=110, format="png")
    plt.close(figure)
    return out


def run(args) -> int:
    if args.smooth is not None and not 0 <= args.smooth < 1:
        raise ValueError(f"--smooth must be in [0, 1), got {args.smooth}")
    out = args.out or (Path(args.runs[0]) / "metrics.png" if len(args.runs) == 1 else Path("metrics.png"))
    path = plot_runs(args.runs, out, args.smooth, args.log_x)
    print(f"wrote {path}")
    return 0
