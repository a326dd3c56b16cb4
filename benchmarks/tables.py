"""Regenerate the README's benchmark tables from the results files, so the README never drifts.

In README.md, each table lives between two markers; everything between them is replaced:

    <!-- bench:NAME [device=SLUG] [ms=1,16,64] [key=value ...] -->
    ...generated...
    <!-- /bench:NAME -->

NAME is one of TABLES (kernels, kernel-ops, decode, prune-time, accuracy, zeroshot, presets). Kernel and
decode tables use GPU results only (the newest GPU device unless device= picks one); the others
show each device's results under its own heading, CPU labelled as such. Every table ends with
where its numbers come from (device, versions, commit, date, command). The accuracy table takes
filters on its rows' params (calibration=32x256 eval_windows=64), methods="A;B" (these rows, in this
order), sparsities=0.5,2:4 (these columns) and relative_to=Wanda (each cell also shows its change vs that row).
The zeroshot table takes methods=, sparsities= and mean_without=boolq (a second mean without those tasks);
prune-time takes methods= and relative_to= (ratios of process CPU seconds where the rows have them); presets
shows each `--preset` recipe (sparsekit/presets.py) at sparsities= with the accuracy table's filters.

    python -m benchmarks tables --readme README.md           # rewrite in place (atomic)
    python -m benchmarks tables --readme README.md --check   # exit 1 if the README is stale
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Callable

from benchmarks.schema import DEFAULT_RESULTS, BenchRow, latest, load_rows
from sparsekit._io import atomic_write_text

MARKER = re.compile(r"<!-- bench:(?P<name>[\w-]+)(?P<opts>[^>]*?)-->(?P<body>.*?)<!-- /bench:(?P=name) -->", re.S)
DEFAULT_MS = (1, 16, 64, 256, 4096)
OURS = ("triton", "cuda")
MATMUL_PROVIDER_ORDER = ("triton", "cuda", "cusparselt", "cusparselt-search", "cutlass", "torch")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--readme", default="README.md", help="file holding <!-- bench:NAME --> markers")
    p.add_argument("--results-dir", default=str(DEFAULT_RESULTS))
    p.add_argument("--quick", action="store_true", help="use the --quick rows (for testing the generator)")
    p.add_argument("--check", action="store_true", help="do not write; exit 1 if the file would change")
    p.add_argument("--print", dest="print_name", default=None, help="print one table (NAME) instead of editing a file")


# ------------------------------------------------------------------------------------------------
# loading and provenance
# ------------------------------------------------------------------------------------------------

def load_results(root, quick: bool = False) -> dict[str, list[BenchRow]]:
    """{device slug: newest row per key} from <root>/<slug>/[quick/]*.jsonl."""
    root = Path(root)
    pattern = "*/quick/*.jsonl" if quick else "*/*.jsonl"
    out: dict[str, list[BenchRow]] = {}
    for path in sorted(root.glob(pattern)):
        slug = path.parent.parent.name if quick else path.parent.name
        try:
            rows = load_rows(path)
        except ValueError:  # a file some other script wrote in its own format
            print(f"note: skipping {path}: not in the benchmarks.schema row format", file=sys.stderr)
            continue
        out.setdefault(slug, []).extend(rows)
    return {slug: latest(rows) for slug, rows in out.items()}


def _rows(results, benchmark: str, device: str | None = None, gpu_only: bool = False) -> dict[str, list[BenchRow]]:
    out = {}
    for slug, rows in results.items():
        if device and slug != device:
            continue
        chosen = [r for r in rows if r.benchmark == benchmark and (not gpu_only or r.device_kind == "cuda")]
        if chosen:
            out[slug] = chosen
    return out


def _newest_device(by_device: dict[str, list[BenchRow]]) -> str | None:
    if not by_device:
        return None
    return max(by_device, key=lambda slug: max(r.timestamp for r in by_device[slug]))


def provenance(rows: list[BenchRow]) -> str:
    ok = [r for r in rows if r.status == "ok"] or rows
    newest = max(ok, key=lambda r: r.timestamp)
    label = newest.device if newest.device.startswith("CPU") else f"GPU: {newest.device}"
    versions = f"torch {newest.torch}" + (f", triton {newest.triton}" if newest.triton else "") + (f", CUDA {newest.cuda}" if newest.cuda else "")
    commits = sorted({r.git_commit[:12] + ("+dirty" if r.git_commit.endswith("+dirty") else "") for r in ok})
    dates = sorted({r.timestamp[:10] for r in ok})
    span = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    commands = {r.command for r in ok}
    how = f"`{newest.command}`" if len(commands) == 1 else f"{len(commands)} commands, the newest `{newest.command}`"
    return f"<sub>{label}; {versions}; commit {', '.join(commits)}; {span}; {how}</sub>"


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _notes(rows: list[BenchRow]) -> str:
    reasons = sorted({f"{r.provider}: {r.status} ({r.reason})" for r in rows if r.status != "ok"})
    return "\n".join(f"- {reason}" for reason in reasons)


def _fmt(value, digits=2, suffix="") -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}{suffix}"


def _join(*parts: str) -> str:
    """Markdown blocks separated by blank lines (empty parts dropped)."""
    return "\n\n".join(p for p in parts if p)


PHASE_ORDER = ("capture", "statistics", "masks", "forward")


def _no_results(what: str, hint: str) -> str:
    return f"_No {what} results yet: {hint}._"


# ------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------

def table_kernels(results, opts) -> str:
    by_device = _rows(results, "kernels", opts.get("device"), gpu_only="device" not in opts)
    slug = opts.get("device") or _newest_device(by_device)
    if not slug or slug not in by_device:
        return _no_results("GPU kernel", "run `FULL=1 bash benchmarks/gpu_check.sh` on a GPU")
    rows = [r for r in by_device[slug] if r.case.startswith("sparse24_matmul/")]
    if not rows:
        return _no_results("2:4 matmul", "run `python -m benchmarks kernels --ops matmul` on a GPU")
    ms = [int(m) for m in opts["ms"].split(",")] if "ms" in opts else list(DEFAULT_MS)
    providers = [p for p in MATMUL_PROVIDER_ORDER if any(r.provider == p for r in rows)]
    index = {(r.params.get("N"), r.params.get("K"), r.params.get("M"), r.provider): r for r in rows}
    shapes = list(dict.fromkeys((r.params.get("N"), r.params.get("K")) for r in rows))
    body = []
    for n, k in shapes:
        for m in ms:
            dense = index.get((n, k, m, "dense"))
            if dense is None:
                continue
            cells = [f"{n}×{k}", str(m), _fmt(dense.median * 1e3 if dense.status == "ok" else None, 1)]
            for p in providers:
                r = index.get((n, k, m, p))
                if r is None or r.status != "ok":
                    cells.append(r.status if r is not None else "–")
                else:
                    speedup = r.derived.get("speedup_vs_dense")
                    cells.append(f"**{speedup:.2f}×** ({r.median * 1e3:.1f}, {r.derived.get('pct_copy_bw', 0):.0f}%)" if speedup else _fmt(r.median * 1e3, 1))
            body.append(cells)
    header = ["W (N×K)", "M", "dense µs"] + [f"{p}" for p in providers]
    return _join(_md_table(header, body),
                 "Cells: speedup vs cuBLAS dense bf16 (µs, % of the copy bandwidth measured in the same run). "
                 "Bandwidth ceiling for 2:4 at small M: 1.78× (2 bytes vs 1.125 bytes per weight).",
                 _notes([r for r in rows if r.params.get("M") in ms]), provenance(by_device[slug]))


def table_kernel_ops(results, opts) -> str:
    by_device = _rows(results, "kernels", opts.get("device"), gpu_only="device" not in opts)
    slug = opts.get("device") or _newest_device(by_device)
    if not slug or slug not in by_device:
        return _no_results("GPU kernel", "run `FULL=1 bash benchmarks/gpu_check.sh` on a GPU")
    rows = [r for r in by_device[slug] if r.case.split("/")[0] in ("wanda_mask", "select_mask", "activation_stats", "dsnot")]
    cases = list(dict.fromkeys(r.case for r in rows))
    index = {(r.case, r.provider): r for r in rows}
    body = []
    for case in cases:
        torch_row, triton_row = index.get((case, "torch")), index.get((case, "triton"))
        cell = lambda r: _fmt(r.median, 3) if r is not None and r.status == "ok" else (r.status if r is not None else "–")  # noqa: E731
        speedup = triton_row.derived.get("speedup_vs_torch") if triton_row is not None and triton_row.status == "ok" else None
        ok = triton_row is not None and triton_row.status == "ok"
        gbps = triton_row.derived.get("gbps") if ok else None
        pct = triton_row.derived.get("pct_copy_bw") if ok else None
        body.append([f"`{case}`", cell(torch_row), cell(triton_row), _fmt(speedup, 2, "×"), _fmt(gbps, 0), _fmt(pct, 0, "%")])
    if not body:
        return _no_results("pruning-kernel", "run `python -m benchmarks kernels --ops wanda,select,stats,dsnot` on a GPU")
    return _join(_md_table(["case", "torch ms", "triton ms", "speedup", "triton GB/s", "% copy BW"], body),
                 _notes(rows), provenance(by_device[slug]))


def table_decode(results, opts) -> str:
    by_device = _rows(results, "decode", opts.get("device"), gpu_only="device" not in opts)
    slug = opts.get("device") or _newest_device(by_device)
    if not slug or slug not in by_device:
        return _no_results("GPU decode", "run `FULL=1 bash benchmarks/gpu_check.sh` on a GPU")
    rows = by_device[slug]
    cases = list(dict.fromkeys(r.case for r in rows))
    index = {(r.case, r.provider): r for r in rows}
    body = []
    for case in cases:
        dense, sparse = index.get((case, "dense")), index.get((case, "sparse24"))
        ok = lambda r: r is not None and r.status == "ok"  # noqa: E731
        gb = lambda r: _fmt(r.derived["peak_memory_bytes"] / 1e9, 1) if ok(r) and r.derived.get("peak_memory_bytes") else "–"  # noqa: E731
        ref = dense if ok(dense) else sparse
        body.append([str(ref.params.get("batch")),
                     _fmt(dense.median, 1) if ok(dense) else "–", _fmt(sparse.median, 1) if ok(sparse) else (sparse.status if sparse else "–"),
                     _fmt(sparse.derived.get("speedup_vs_dense"), 2, "×") if ok(sparse) else "–",
                     _fmt(dense.derived.get("per_token_ms"), 2) if ok(dense) else "–", _fmt(sparse.derived.get("per_token_ms"), 2) if ok(sparse) else "–",
                     f"{gb(dense)} / {gb(sparse)}", (sparse if ok(sparse) else ref).derived.get("mode", "–")])
    first = rows[0].params
    header = ["batch", "dense tok/s", "2:4 tok/s", "speedup", "dense ms/token", "2:4 ms/token", "peak GB dense / 2:4", "mode"]
    return _join(f"{first.get('model')}, bf16, prompt {first.get('prompt_len')} → {first.get('new_tokens')} new tokens, greedy, static KV cache.",
                 _md_table(header, body), _notes(rows), provenance(rows))


def _ordered(rows: list[BenchRow], methods: str | None) -> list[BenchRow]:
    """methods="A;B": only these providers, in this order (the dense row first where there is one)."""
    if not methods:
        return rows
    order = {m: i for i, m in enumerate(["dense", *methods.split(";")])}
    return sorted((r for r in rows if r.provider in order), key=lambda r: order[r.provider])


def table_prune_time(results, opts) -> str:
    """Seconds per phase; methods="A;B" picks and orders rows, relative_to=SparseGPT adds each total's
    ratio to that method's on the same model and sparsity."""
    by_device = _rows(results, "prune-time", opts.get("device"))
    if not by_device:
        return _no_results("pruning-time", "run `python -m benchmarks prune-time`")
    base = opts.get("relative_to")
    parts = []
    for slug, rows in by_device.items():
        rows = _ordered(rows, opts.get("methods"))
        if not rows:
            continue
        ok = [r for r in rows if r.status == "ok"]
        seen = {k for r in ok for k in r.derived.get("phases", {})}
        phases = [p for p in PHASE_ORDER if p in seen] + sorted(seen - set(PHASE_ORDER))
        cpu = any("cpu_seconds" in r.derived for r in ok) and rows[0].device_kind == "cpu"
        references = {(r.params.get("model"), r.case.rsplit("/", 1)[-1]): r for r in ok if r.provider == base}

        def ratio(r):  # process CPU seconds where both rows have them (a shared CPU's wall time varies with load)
            reference = references.get((r.params.get("model"), r.case.rsplit("/", 1)[-1]))
            if reference is None:
                return "–"
            if "cpu_seconds" in r.derived and "cpu_seconds" in reference.derived:
                return _fmt(r.derived["cpu_seconds"] / reference.derived["cpu_seconds"], 2, "×")
            return _fmt(r.median / reference.median, 2, "×")
        body = [[r.params.get("model", ""), r.provider, r.case.rsplit("/", 1)[-1], r.params.get("calibration", ""), _fmt(r.median, 1)]
                + ([_fmt(r.derived.get("cpu_seconds"), 2)] if cpu else []) + ([ratio(r)] if base else [])
                + [_fmt(r.derived["phases"].get(p), 1) for p in phases] for r in ok]
        name = rows[0].device if rows[0].device_kind == "cpu" else f"GPU: {rows[0].device}"
        header = (["model", "method", "sparsity", "calibration", "total"] + (["CPU s"] if cpu else [])
                  + ([f"vs {base}"] if base else []) + phases)
        parts.append(_join(f"**{name}** (seconds)", _md_table(header, body), _notes(rows), provenance(rows)))
    return _join(*parts)


def _sparsity_key(label: str):
    return (1, label) if ":" in label else (0, float(label))


def _matches(row: BenchRow, filters: dict[str, str]) -> bool:
    """Marker filters on params (calibration=32x256 eval_windows=64 ...); the dense row has no calibration."""
    return all(row.provider == "dense" and key == "calibration" or str(row.params.get(key)) == value
               for key, value in filters.items())


DEFAULT_ACCURACY_MODEL = "smollm2-135m"  # `python -m benchmarks accuracy`'s --model default


def _one_model(rows: list[BenchRow]) -> list[BenchRow]:
    """Rows of one model only: a marker picks it with model=..., else the harness's default model is shown."""
    models = list(dict.fromkeys(r.params.get("model") for r in rows))
    if len(models) <= 1:
        return rows
    shown = DEFAULT_ACCURACY_MODEL if DEFAULT_ACCURACY_MODEL in models else models[0]
    return [r for r in rows if r.params.get("model") == shown]


def table_accuracy(results, opts) -> str:
    by_device = _rows(results, "accuracy", opts.get("device"))
    if not by_device:
        return _no_results("accuracy", "run `python -m benchmarks accuracy`")
    slug = opts.get("device") or max(by_device, key=lambda s: len(by_device[s]))
    filters = {k: v for k, v in opts.items() if k not in ("device", "ms", "methods", "sparsities", "relative_to")}
    rows = _one_model([r for r in by_device[slug] if _matches(r, filters)])
    if "methods" in opts:  # "Wanda;DSnoT (official)": these rows, in this order
        order = {m: i for i, m in enumerate(["dense", *opts["methods"].split(";")])}
        rows = sorted((r for r in rows if r.provider in order), key=lambda r: order[r.provider])
    if "sparsities" in opts:
        rows = [r for r in rows if r.provider == "dense" or r.params["sparsity"] in opts["sparsities"].split(",")]
    ok = [r for r in rows if r.status == "ok"]
    if not ok:
        return _no_results("accuracy", "every configuration failed; see the results file")
    dense = next((r for r in reversed(ok) if r.provider == "dense"), None)
    labels = sorted({r.params["sparsity"] for r in ok if r.provider != "dense"}, key=_sparsity_key)
    methods = list(dict.fromkeys(r.provider for r in ok if r.provider != "dense"))
    index = {(r.provider, r.params["sparsity"]): r for r in ok}
    base = opts.get("relative_to")

    def cell(m, s):
        if (m, s) not in index:
            return "–"
        text = _fmt(index[(m, s)].median, 2)
        if base and m != base and (base, s) in index:
            text += f" ({(index[(m, s)].median / index[(base, s)].median - 1) * 100:+.1f}%)"
        return text

    body = [[m] + [cell(m, s) for s in labels] for m in methods]
    p = next(r for r in ok if r.provider != "dense").params if len(ok) > 1 else ok[0].params
    head = (f"Perplexity of {p.get('model')} ({p.get('dtype')}) on {p.get('eval_windows')} windows × {p.get('eval_seqlen')} tokens of "
            f"{p.get('eval_text')}; calibration {p.get('calibration')}." + (f" Dense: **{dense.median:.2f}**." if dense else ""))
    return _join(head, _md_table(["method"] + labels, body), _reached(ok), _notes(rows), provenance(rows))


def _reached(rows: list[BenchRow]) -> str:
    """Per method, how far the reached sparsity is from the target (N:M is exact by construction)."""
    gaps: dict[str, float] = {}
    for r in rows:
        if r.provider != "dense" and ":" not in r.params["sparsity"] and "sparsity_reached" in r.derived:
            gap = abs(r.derived["sparsity_reached"] - float(r.params["sparsity"]))
            gaps[r.provider] = max(gap, gaps.get(r.provider, 0.0))
    if not gaps:
        return ""
    exact = [m for m, g in gaps.items() if g < 5e-7]
    near = [f"{m} {g:.1e}" for m, g in gaps.items() if g >= 5e-7]
    parts = ([f"exactly the target (to 6 decimals) for {', '.join(exact)}"] if exact else []) + (
        [f"within {', '.join(near)} of the target (whole weights per row or column block: int(in·s))"] if near else [])
    return "Sparsity reached: " + "; ".join(parts) + "."


def table_zeroshot(results, opts) -> str:
    by_device = _rows(results, "zeroshot", opts.get("device"))
    if not by_device:
        return _no_results("zero-shot", "run `python -m benchmarks accuracy --zeroshot all`")
    slug = opts.get("device") or max(by_device, key=lambda s: len(by_device[s]))
    rows = _ordered(by_device[slug], opts.get("methods"))
    if "sparsities" in opts:
        rows = [r for r in rows if r.provider == "dense" or r.params.get("sparsity") in opts["sparsities"].split(",")]
        wanted = opts["sparsities"].split(",")  # grouped by sparsity in the marker's order (stable: methods' order kept)
        rows = sorted(rows, key=lambda r: -1 if r.provider == "dense" else wanted.index(r.params.get("sparsity")))
    ok = [r for r in rows if r.status == "ok"]
    if not ok:
        return _no_results("zero-shot", "no row matches the marker's methods/sparsities")
    tasks = list(dict.fromkeys(r.params["task"] for r in ok))
    configs = list(dict.fromkeys((r.params.get("model"), r.provider, r.params.get("sparsity")) for r in ok))
    index = {(r.params.get("model"), r.provider, r.params.get("sparsity"), r.params["task"]): r for r in ok}

    def score(r):  # acc_norm where lm-eval reports it, else acc
        return r.derived.get("acc_norm", r.median)
    left_out = [t for t in opts.get("mean_without", "").split(",") if t in tasks]  # e.g. a task at chance for every row

    def mean(cells, names):
        values = [score(c) for c, t in zip(cells, tasks) if c is not None and t in names]
        return _fmt(sum(values) / len(values) * 100, 1) if len(values) == len(names) else "–"
    body = []
    for model, method, sparsity in configs:
        cells = [index.get((model, method, sparsity, t)) for t in tasks]
        body.append([model, method, sparsity] + [_fmt(score(c) * 100, 1) if c is not None else "–" for c in cells]
                    + [mean(cells, tasks)] + ([mean(cells, [t for t in tasks if t not in left_out])] if left_out else []))
    limits = sorted({str(r.params.get("limit") or "all") for r in ok})
    chance = ", ".join(f"{t} {ok[[r.params['task'] for r in ok].index(t)].derived.get('chance', 0) * 100:.0f}" for t in tasks)
    head = (f"Zero-shot accuracy (%; acc_norm where lm-eval reports it, else acc), first {'/'.join(limits)} validation "
            f"documents per task, scored as lm-evaluation-harness does. Chance: {chance}.")
    errors = [r.derived.get("acc_norm_stderr", r.derived.get("acc_stderr")) for r in ok]
    errors = [e for e in errors if e is not None]
    spread = ""
    if errors:  # with a few dozen documents per task the differences between rows are mostly noise
        mean_error = (sum(e * e for e in errors) / len(errors)) ** 0.5 / len(tasks) ** 0.5
        spread = (f"Standard error (sample std / √n) per task: {min(errors) * 100:.1f} to {max(errors) * 100:.1f} points; "
                  f"of the mean over the {len(tasks)} tasks: about {mean_error * 100:.1f} points.")
    header = ["model", "method", "sparsity"] + tasks + ["mean"] + ([f"mean without {', '.join(left_out)}"] if left_out else [])
    return _join(head, _md_table(header, body), spread, _notes(rows), provenance(rows))


def _preset_flags(recipe) -> str:
    flags = [f"--method {recipe.method}"]
    for key, value in sorted(recipe.method_options.items()):
        flags.append(f"--update {value}" if key == "update" else f"--{recipe.method}-{key.replace('_', '-')} {value}")
    flags += [f"--allocation {recipe.allocation}"] if recipe.allocation else []
    flags += ["--permute"] if recipe.permute else []
    return " ".join(flags)


def table_presets(results, opts) -> str:
    """Each preset's recipe (sparsekit/presets.py) at the marker's sparsities=0.5,0.6,2:4 with its measured
    perplexity (accuracy rows, same filters as the accuracy table), the ratio to dense, the change against
    SparseGPT, and the pruning time against SparseGPT's (prune-time rows of the same device, else the
    accuracy runs' own prune seconds, marked *)."""
    from benchmarks.bench_accuracy import config_label
    from sparsekit.presets import PRESETS, resolve_preset

    by_device = _rows(results, "accuracy", opts.get("device"))
    if not by_device:
        return _no_results("accuracy", "run `python -m benchmarks accuracy`")
    slug = opts.get("device") or max(by_device, key=lambda s: len(by_device[s]))
    filters = {k: v for k, v in opts.items() if k not in ("device", "sparsities", "relative_to")}
    ok = _one_model([r for r in by_device[slug] if r.status == "ok" and _matches(r, filters)])
    dense = next((r for r in reversed(ok) if r.provider == "dense"), None)
    index = {(r.provider, r.params["sparsity"]): r for r in ok}
    times: dict[tuple, dict[str, float]] = {}  # (provider, N:M?) -> {model: seconds}
    for r in _rows(results, "prune-time", slug).get(slug, []):
        if r.status == "ok":
            seconds = ("cpu", r.derived["cpu_seconds"]) if "cpu_seconds" in r.derived else ("wall", r.median)
            times.setdefault((r.provider, ":" in r.case.rsplit("/", 1)[-1]), {})[r.params.get("model")] = seconds

    def time_ratio(names, base_names, nm):
        """Seconds of the first of `names` over the first of `base_names` measured on the same model."""
        mine = next((times[(n, nm)] for n in names if (n, nm) in times), {})
        theirs = next((times[(n, nm)] for n in base_names if (n, nm) in times), {})
        common = [model for model in mine if model in theirs and mine[model][0] == theirs[model][0]]  # CPU s if both have them
        return mine[common[0]][1] / theirs[common[0]][1] if common else None
    base = opts.get("relative_to", "SparseGPT")
    labels = opts.get("sparsities", "0.5,0.6,0.7,2:4").split(",")
    body, used = [], []
    for name in PRESETS:
        for label in labels:
            recipe = resolve_preset(name, label if ":" in label else "unstructured", None if ":" in label else float(label))
            options = {**recipe.method_options, **({"permute": True} if recipe.permute else {})}
            provider = config_label(recipe.method, recipe.allocation, options)
            row, reference = index.get((provider, label)), index.get((base, label))
            nm = ":" in label
            cpu = "prune_cpu_seconds"  # wall seconds of separate runs on a shared CPU do not compare; CPU seconds do
            # prune-time rows name plain methods by their key (sparsegpt), configurations by the table name
            ratio = time_ratio([provider] + ([recipe.method] if not options and not recipe.allocation else []),
                               [base, base.lower()], nm)
            if ratio is not None:
                cost = _fmt(ratio, 1, "×")
            elif row and reference and cpu in row.derived and cpu in reference.derived:
                cost = _fmt(row.derived[cpu] / reference.derived[cpu], 1, "×*")
            else:
                cost = recipe.cost or "–"
            body.append([name, label, f"`{_preset_flags(recipe)}`", _fmt(row.median, 2) if row else "not measured",
                         _fmt(row.median / dense.median, 2, "×") if row and dense else "–",
                         f"{(row.median / reference.median - 1) * 100:+.1f}%" if row and reference else "–", cost])
            used += [r for r in (row, reference) if r]
    head = ("`--preset NAME` resolves to these flags (explicit flags win); perplexity as in the accuracy table"
            + (f" (dense **{dense.median:.2f}**)" if dense else "") + f"; time: pruning seconds against {base}'s "
            "(the prune-time benchmark, process CPU seconds where recorded; * the accuracy runs' process CPU seconds; "
            "otherwise the preset's documented cost).")
    header = ["preset", "sparsity", "same as", "ppl", "× dense", f"vs {base}", f"time vs {base}"]
    return _join(head, _md_table(header, body), provenance(used + ([dense] if dense else [])) if used else "")


TABLES: dict[str, Callable] = {"kernels": table_kernels, "kernel-ops": table_kernel_ops, "decode": table_decode,
                               "prune-time": table_prune_time, "accuracy": table_accuracy, "zeroshot": table_zeroshot,
                               "presets": table_presets}


# ------------------------------------------------------------------------------------------------
# README rewriting
# ------------------------------------------------------------------------------------------------

def _options(text: str) -> dict[str, str]:
    opts = {}
    for item in shlex.split(text):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"marker option {item!r} must be key=value (device=..., ms=..., methods=\"A;B\", ...)")
        opts[key] = value
    return opts


def render(text: str, results) -> str:
    """`text` with every marked table regenerated."""
    def replace(match):
        name = match["name"]
        if name not in TABLES:
            raise ValueError(f"unknown table <!-- bench:{name} -->; choose from {sorted(TABLES)}")
        table = TABLES[name](results, _options(match["opts"]))
        return f"<!-- bench:{name}{match['opts']}-->\n{table}\n<!-- /bench:{name} -->"
    unmatched = set(re.findall(r"<!-- bench:([\w-]+)", text)) - set(m["name"] for m in MARKER.finditer(text))
    if unmatched:
        raise ValueError(f"marker(s) {sorted(unmatched)} have no closing <!-- /bench:NAME --> marker")
    return MARKER.sub(replace, text)


def main_args(args) -> int:
    results = load_results(args.results_dir, quick=args.quick)
    if args.print_name:
        if args.print_name not in TABLES:
            raise ValueError(f"unknown table {args.print_name!r}; choose from {sorted(TABLES)}")
        print(TABLES[args.print_name](results, {}))
        return 0
    path = Path(args.readme)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass --readme PATH")
    old = path.read_text(encoding="utf-8")
    if not MARKER.search(old):
        raise ValueError(f"{path} has no <!-- bench:NAME --> ... <!-- /bench:NAME --> markers; tables: {sorted(TABLES)}")
    new = render(old, results)
    if args.check:
        if new != old:
            print(f"{path} is stale: run python -m benchmarks tables --readme {path}", file=sys.stderr)
            return 1
        return 0
    if new != old:
        atomic_write_text(path, new)
    print(f"{path}: {len(MARKER.findall(new))} table(s) regenerated")
    return 0
