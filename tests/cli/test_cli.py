"""The `sparsekit` command line on a tiny local checkpoint and local text files."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from sparsekit.cli import build_parser, main, method_options
from tests.helpers import save_tiny_checkpoint

TEXT = " ".join(f"The river {i} flows past the old mill and into the sea." for i in range(400))


@pytest.fixture
def workspace(tmp_path):
    save_tiny_checkpoint(tmp_path / "model")
    (tmp_path / "calib.txt").write_text(TEXT)
    (tmp_path / "eval.txt").write_text(TEXT[::-1])
    return tmp_path


def base_args(ws, *extra):
    return ["prune", "--model", str(ws / "model"), "--nsamples", "4", "--seqlen", "32", "--device", "cpu",
            "--calib", str(ws / "calib.txt"), "--eval-text", str(ws / "eval.txt"), *extra]


@pytest.mark.parametrize("method, pattern", [("magnitude", "unstructured"), ("wanda", "2:4"), ("sparsegpt", "4:8")])
def test_prune_eval_save(workspace, method, pattern, capsys):
    out, js = workspace / "out", workspace / "summary.json"
    rc = main(base_args(workspace, "--method", method, "--pattern", pattern, "--eval", "--save", str(out), "--json", str(js)))
    assert rc == 0
    summary = json.loads(js.read_text())
    assert summary["sparsity_reached"] == pytest.approx(0.5)
    assert summary["dense_ppl"] > 1 and summary["pruned_ppl"] > 1
    assert {"load", "capture", "eval_dense", "eval_pruned", "save", "total"} <= set(summary["seconds"])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (model.model.layers[0].mlp.up_proj.weight == 0).float().mean() == pytest.approx(0.5, abs=0.02)
    printed = capsys.readouterr().out
    assert "pruned ppl" in printed and "up_proj" in printed


def test_paper_spellings_are_accepted():
    args = build_parser().parse_args(["prune", "--prune_method", "wanda", "--sparsity_ratio", "0.6",
                                      "--sparsity_type", "4:8", "--save_model", "x"])
    assert (args.method, args.sparsity, args.pattern, args.save) == ("wanda", 0.6, "4:8", "x")


def test_method_options_flags(workspace):
    args = build_parser().parse_args(base_args(workspace, "--method", "sparsegpt", "--sparsegpt-blocksize", "64"))
    assert method_options(args, "sparsegpt") == {"blocksize": 64}


@pytest.mark.parametrize("extra, message", [
    (["--sparsity", "1.5"], "[0, 1)"),
    (["--pattern", "3:3"], "n < m"),
    (["--pattern", "banana"], "unknown sparsity pattern"),
    (["--sparsity", "0.7", "--pattern", "2:4"], "contradicts"),
    (["--calib", "/nonexistent/file.txt"], "neither"),
])
def test_bad_input_exits_with_message(workspace, extra, message, capsys):
    assert main(base_args(workspace, *extra)) == 2
    assert message in capsys.readouterr().err


def test_too_short_calibration_text(workspace, capsys):
    (workspace / "short.txt").write_text("too short")
    assert main(base_args(workspace, "--calib", str(workspace / "short.txt"))) == 2
    assert "fewer than seqlen" in capsys.readouterr().err


def test_unknown_method_is_rejected_by_argparse(workspace):
    with pytest.raises(SystemExit):
        build_parser().parse_args(base_args(workspace, "--method", "obs"))


def test_eval_subcommand(workspace, capsys):
    rc = main(["eval", "--model", str(workspace / "model"), "--seqlen", "32", "--device", "cpu",
               "--eval-text", str(workspace / "eval.txt"), "--eval-windows", "3"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["ppl"] > 1


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "sparsekit", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "prune" in result.stdout


def test_disk_offload_with_checkpoint_matches_in_memory(workspace):
    common = ["--method", "sparsegpt", "--eval", "--eval-windows", "4"]
    a, b = workspace / "a.json", workspace / "b.json"
    assert main(base_args(workspace, *common, "--save", str(workspace / "mem"), "--json", str(a))) == 0
    assert main(base_args(workspace, *common, "--offload", "disk", "--checkpoint-dir", str(workspace / "run"),
                          "--save", str(workspace / "disk"), "--json", str(b))) == 0
    sa, sb = json.loads(a.read_text()), json.loads(b.read_text())
    assert "disk-stream" in sb["placement"]
    assert sb["dense_ppl"] == pytest.approx(sa["dense_ppl"], rel=1e-5)
    assert sb["pruned_ppl"] == pytest.approx(sa["pruned_ppl"], rel=1e-5)
    mem = AutoModelForCausalLM.from_pretrained(workspace / "mem").state_dict()
    disk = AutoModelForCausalLM.from_pretrained(workspace / "disk").state_dict()
    for k in mem:
        assert torch.equal(mem[k], disk[k]), k


def test_disk_offload_needs_checkpoint_dir(workspace, capsys):
    assert main(base_args(workspace, "--offload", "disk")) == 2
    assert "--checkpoint-dir" in capsys.readouterr().err
