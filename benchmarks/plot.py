"""PNG plots from the results: one set per device, never mixing devices.

  speedup_vs_m.png      2:4 matmul speedup vs cuBLAS dense per shape, with the 1.78x bandwidth ceiling
                        and the per-M bandwidth ceiling (dense bytes / 2:4 bytes)
  decode_tokens.png     decode tokens/s, dense vs 2:4, per batch size
  ppl_vs_sparsity.png   perplexity vs sparsity per method (N:M as separate markers), dense as a line
  prune_time.png        seconds per pipeline phase per model and method

    python -m benchmarks plot [--results-dir benchmarks/results] [--out DIR]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.schema import DEFAULT_RESULTS, BenchRow
from benchmarks.tables import load_results

CEILING = 2 / 1.125  # dense bytes / 2:4 bytes per weight, the M -> 0 bandwidth ceiling


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results-dir", default=str(DEFAULT_RESULTS))
    p.add_argument("--out", default=None, help="folder for the PNGs (default <results>/<device>/plots)")
    p.add_argument("--quick", action="store_true", help="plot the --quick rows (for testing)")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _title(rows: list[BenchRow]) -> str:
    device = rows[0].device
    return device if device.startswith("CPU") else f"GPU: {device}"


def plot_speedup(rows: list[BenchRow], path: Path) -> Path | None:
    rows = [r for r in rows if r.benchmark == "kernels" and r.case.startswith("sparse24_matmul/") and r.status == "ok"]
    if not any("speedup_vs_dense" in r.derived for r in rows):
        return None
    plt = _plt()
    shapes = list(dict.fromkeys((r.params["N"], r.params["K"]) for r in rows))
    cols = min(3, len(shapes))
    nrows = (len(shapes) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False, sharey=True)
    for ax, (n, k) in zip(axes.flat, shapes):
        shape_rows = [r for r in rows if (r.params["N"], r.params["K"]) == (n, k)]
        for provider in dict.fromkeys(r.provider for r in shape_rows if r.provider != "dense"):
            pts = sorted((r.params["M"], r.derived["speedup_vs_dense"]) for r in shape_rows
                         if r.provider == provider and "speedup_vs_dense" in r.derived)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=provider)
        ceiling = sorted((r.params["M"], r.derived["bandwidth_ceiling"]) for r in shape_rows
                         if r.provider == "dense" and "bandwidth_ceiling" in r.derived)
        if ceiling:
            ax.plot(*zip(*ceiling), ls=":", color="grey", label="bandwidth ceiling")
        ax.axhline(CEILING, ls="--", color="black", lw=1, label=f"{CEILING:.2f}× (M→0)")
        ax.axhline(1.0, color="red", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(f"W {n}×{k}")
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("speedup vs dense")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shapes):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"2:4 matmul speedup vs cuBLAS dense, bf16\n{_title(rows)}", fontsize=10)
    return _save(plt, fig, path)


def plot_decode(rows: list[BenchRow], path: Path) -> Path | None:
    rows = [r for r in rows if r.benchmark == "decode" and r.status == "ok"]
    if not rows:
        return None
    plt = _plt()
    batches = sorted({r.params["batch"] for r in rows})
    providers = list(dict.fromkeys(r.provider for r in rows))
    fig, ax = plt.subplots(figsize=(6, 3.8))
    width = 0.8 / len(providers)
    for i, provider in enumerate(providers):
        values = {r.params["batch"]: r for r in rows if r.provider == provider}
        xs = [b_i + i * width for b_i, b in enumerate(batches) if b in values]
        ys = [values[b].median for b in batches if b in values]
        errs = [[values[b].median - (values[b].p20 or values[b].median) for b in batches if b in values],
                [(values[b].p80 or values[b].median) - values[b].median for b in batches if b in values]]
        ax.bar(xs, ys, width, yerr=errs, label=provider)
    ax.set_xticks([b_i + 0.4 - width / 2 for b_i in range(len(batches))], [f"batch {b}" for b in batches])
    ax.set_ylabel("decode tokens/s")
    ax.legend()
    ax.set_title(f"{rows[0].params.get('model')} decode\n{_title(rows)}", fontsize=9)
    return _save(plt, fig, path)


def accuracy_groups(rows: list[BenchRow]) -> dict[tuple, list[BenchRow]]:
    """Successful accuracy rows per (model, calibration, eval windows), each with its matching dense row."""
    rows = [r for r in rows if r.benchmark == "accuracy" and r.status == "ok"]
    groups: dict[tuple, list[BenchRow]] = {}
    for r in rows:
        if r.provider != "dense":
            groups.setdefault((r.params.get("model"), r.params.get("calibration"), r.params.get("eval_windows")), []).append(r)
    for (model, _, windows), members in groups.items():
        dense = [r for r in rows if r.provider == "dense" and (r.params.get("model"), r.params.get("eval_windows")) == (model, windows)]
        members[:0] = dense[-1:]
    return groups


def plot_ppl(rows: list[BenchRow], path: Path) -> list[Path]:
    """One plot per accuracy group; the largest keeps `path`, others get a calibration/windows suffix."""
    groups = sorted(accuracy_groups(rows).items(), key=lambda kv: -len(kv[1]))
    written = []
    for i, ((model, calibration, windows), members) in enumerate(groups):
        target = path if i == 0 else path.with_name(f"{path.stem}_{model}_{calibration}_{windows}w{path.suffix}")
        written.append(_plot_ppl_group(members, target, f"calibration {calibration}, {windows} eval windows"))
    return written


def _plot_ppl_group(rows: list[BenchRow], path: Path, subtitle: str) -> Path:
    """One line per method with at least three unstructured points (one-off variants stay in the tables)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    markers = {"2:4": "s", "4:8": "^"}
    offsets = {"2:4": 0.006, "4:8": 0.012}  # N:M points sit beside the unstructured point of equal sparsity
    methods = [m for m in dict.fromkeys(r.provider for r in rows if r.provider != "dense")
               if sum(1 for r in rows if r.provider == m and ":" not in r.params["sparsity"]) >= 3]
    colors = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    for i, method in enumerate(methods):
        mine = [r for r in rows if r.provider == method]
        unstructured = sorted((float(r.params["sparsity"]), r.median) for r in mine if ":" not in r.params["sparsity"])
        color = colors(i)
        ax.plot(*zip(*unstructured), marker="o", color=color, label=method)
        for r in mine:
            label = r.params["sparsity"]
            if ":" in label:
                n, m = (int(v) for v in label.split(":"))
                ax.scatter([n / m + offsets.get(label, 0.018)], [r.median], marker=markers.get(label, "x"), color=color,
                           s=40, label=f"{method} {label}")
    dense = next((r for r in rows if r.provider == "dense"), None)
    if dense:
        ax.axhline(dense.median, color="black", ls="--", lw=1, label=f"dense {dense.median:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (fraction pruned; squares: 2:4)")
    ax.set_ylabel("perplexity")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"{rows[-1].params.get('model')}: perplexity vs sparsity ({subtitle})\n{_title(rows)}", fontsize=9)
    return _save(plt, fig, path)


def plot_prune_time(rows: list[BenchRow], path: Path) -> Path | None:
    rows = [r for r in rows if r.benchmark == "prune-time" and r.status == "ok"]
    if not rows:
        return None
    plt = _plt()
    phases = list(dict.fromkeys(k for r in rows for k in r.derived.get("phases", {})))
    labels = [f"{r.params.get('model')} {r.provider}" for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
    left = [0.0] * len(rows)
    for i, phase in enumerate(phases):
        values = [r.derived["phases"].get(phase, 0.0) for r in rows]
        ax.barh(labels, values, left=left, color=f"C{i}", label=phase)
        left = [a + b for a, b in zip(left, values)]
    ax.set_xlabel("seconds")
    ax.legend(fontsize=7)
    ax.set_title(f"pruning time per phase\n{_title(rows)}", fontsize=9)
    return _save(plt, fig, path)


PLOTS = {"speedup_vs_m.png": plot_speedup, "decode_tokens.png": plot_decode, "ppl_vs_sparsity.png": plot_ppl,
         "prune_time.png": plot_prune_time}


def make_plots(results_dir, out=None, quick: bool = False) -> list[Path]:
    written = []
    for slug, rows in load_results(results_dir, quick=quick).items():
        folder = Path(out) / slug if out else Path(results_dir) / slug / ("quick/plots" if quick else "plots")
        folder.mkdir(parents=True, exist_ok=True)
        for name, fn in PLOTS.items():
            paths = fn(rows, folder / name)
            written.extend(paths if isinstance(paths, list) else [paths] if paths else [])
    return written


def main_args(args) -> int:
    written = make_plots(args.results_dir, args.out, args.quick)
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"no plottable results under {args.results_dir}")
    return 0
