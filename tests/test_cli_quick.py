"""`sparsekit prune --quick` (the README's first-run demo) on a tiny checkpoint: the demo sizes, explicit sizes
win, and the final summary shows dense and pruned perplexity side by side, their ratio and where the time went."""
import json
import re

from sparsekit.cli import QUICK, build_parser, main
from tests.helpers import save_tiny_checkpoint

TEXT = " ".join(f"Window {i} of a text about rivers, mills and the sea." for i in range(900))


def test_quick_fills_unset_sizes_and_turns_on_eval(tmp_path, capsys):
    save_tiny_checkpoint(tmp_path / "model")
    (tmp_path / "text.txt").write_text(TEXT)
    out = tmp_path / "summary.json"
    rc = main(["prune", "--model", str(tmp_path / "model"), "--device", "cpu", "--dtype", "float32", "--quick",
               "--nsamples", "4", "--calib", str(tmp_path / "text.txt"), "--eval-text", str(tmp_path / "text.txt"),
               "--json", str(out)])
    assert rc == 0
    summary = json.loads(out.read_text())
    assert summary["calibration"]["nsamples"] == 4  # given explicitly
    assert summary["calibration"]["seqlen"] == QUICK["seqlen"]
    assert (summary["eval"]["seqlen"], summary["eval"]["windows"]) == (QUICK["eval_seqlen"], QUICK["eval_windows"])
    assert summary["dense_ppl"] > 1 and summary["pruned_ppl"] > 1
    assert {"download_convert", "load", "calibration_text", "eval_dense", "capture", "eval_pruned", "total"} <= set(summary["seconds"])
    printed = capsys.readouterr().out
    tail = printed[printed.rindex("\nmodel "):]  # the summary table is the last thing printed
    ratio = summary["pruned_ppl"] / summary["dense_ppl"]
    assert re.search(rf"pruned / dense +{ratio:.2f}x", tail) and "dense ppl" in tail and "seconds: eval_dense" in tail
    assert "%)" in tail  # each phase's share of the total


def test_without_quick_the_paper_sizes_stay():
    args = build_parser().parse_args(["prune"])
    from sparsekit.cli import _apply_quick

    _apply_quick(args)
    assert (args.nsamples, args.seqlen, args.eval_windows, args.eval) == (128, None, None, False)
