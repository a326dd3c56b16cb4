"""Big-model paths: disk-streamed blocks, resumable runs, several processes (gloo on CPU)."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM

import sparsekit
from sparsekit import PruneConfig
from sparsekit.eval.streamed import placement_for
from sparsekit.hf.loading import load_model
from sparsekit.pipeline.placement import DiskStream
from tests.helpers import save_tiny_checkpoint, tiny_gpt2

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def calib(n=8, seqlen=16):
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(1))


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def checkpoint(tmp_path):
    save_tiny_checkpoint(tmp_path / "dense")
    return tmp_path / "dense"


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_disk_streaming_equals_in_memory(checkpoint, tmp_path, method):
    config = dict(method=method, sparsity=0.5, batch_size=3)
    model, tok = load_model(str(checkpoint))
    sparsekit.prune(model, calib(), PruneConfig(**config))

    skeleton, _ = load_model(str(checkpoint), offload="disk")
    assert all(p.is_meta for p in skeleton.model.layers.parameters())
    report = sparsekit.prune(skeleton, calib(), PruneConfig(**config, checkpoint_dir=str(tmp_path / "run")))
    assert "disk-stream" in report.placement
    assert all(p.is_meta for p in skeleton.model.layers.parameters())  # never all in memory
    out = sparsekit.save_pruned(skeleton, tok, tmp_path / "out", report, checkpoint_dir=tmp_path / "run")
    assert (out / "model.safetensors.index.json").exists()
    assert_same_weights(state(AutoModelForCausalLM.from_pretrained(out)), state(model))


def test_disk_streaming_needs_a_checkpoint_dir(checkpoint):
    skeleton, _ = load_model(str(checkpoint), offload="disk")
    with pytest.raises(ValueError, match="checkpoint_dir"):
        sparsekit.prune(skeleton, calib(), PruneConfig(method="wanda", sparsity=0.5))


def test_streamed_perplexity_equals_in_memory(checkpoint, tmp_path):
    model, tok = load_model(str(checkpoint))
    text = "Streams of text for a tiny model to predict, repeated many times. " * 40
    expected = sparsekit.perplexity(model, tok, text, seqlen=32, batch_size=2, progress=False)
    skeleton, _ = load_model(str(checkpoint), offload="disk")
    assert placement_for(model, "cpu") is None  # wholly on the device: one forward of the whole model
    placement = placement_for(skeleton, "cpu")
    assert isinstance(placement, DiskStream)
    got = sparsekit.perplexity(skeleton, tok, text, seqlen=32, batch_size=2, progress=False, placement=placement, device="cpu")
    assert got == pytest.approx(expected, rel=1e-5)
    # and the pruned model, served from the run checkpoint
    sparsekit.prune(model, calib(), PruneConfig(method="wanda", sparsity=0.5))
    report = sparsekit.prune(skeleton, calib(), PruneConfig(method="wanda", sparsity=0.5, checkpoint_dir=str(tmp_path / "run")))
    pruned_expected = sparsekit.perplexity(model, tok, text, seqlen=32, batch_size=2, progress=False)
    assert report.sparsity == pytest.approx(0.5)
    got = sparsekit.perplexity(skeleton, tok, text, seqlen=32, batch_size=2, progress=False,
                               placement=placement_for(skeleton, "cpu", tmp_path / "run"), device="cpu")
    assert got == pytest.approx(pruned_expected, rel=1e-5)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    import sparsekit
    from sparsekit.pipeline.checkpoint import RunCheckpoint
    from sparsekit.hf.loading import load_model
    ckpt, run, die_after, offload = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    original = RunCheckpoint.save
    def save_then_die(self, index, *args):
        original(self, index, *args)
        if index == die_after:
            os.kill(os.getpid(), signal.SIGKILL)   # killed mid-run, no cleanup
    RunCheckpoint.save = save_then_die
    model, _ = load_model(ckpt, offload=offload)
    ids = torch.randint(0, 256, (8, 16), generator=torch.Generator().manual_seed(1))
    sparsekit.prune(model, ids, sparsekit.PruneConfig(method="sparsegpt", sparsity=0.6, batch_size=3, checkpoint_dir=run))
""")


@pytest.mark.parametrize("offload", ["none", "disk"])
def test_killed_run_resumes_to_identical_model(tmp_path, offload):
    ckpt = tmp_path / "dense"
    save_tiny_checkpoint(ckpt, lambda: tiny_gpt2(layers=4))
    run = tmp_path / "run"
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(ckpt), str(run), "1", offload], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert json.loads((run / "run.json").read_text())["finished"] == 1

    model, tok = load_model(str(ckpt), offload=offload)
    report = sparsekit.prune(model, calib(), PruneConfig(method="sparsegpt", sparsity=0.6, batch_size=3, checkpoint_dir=str(run)))
    assert len(report.layers) == 4 * 4  # the report spans the killed and the resumed part
    resumed = sparsekit.save_pruned(model, tok, tmp_path / "resumed", report, checkpoint_dir=run)

    reference, _ = load_model(str(ckpt))
    sparsekit.prune(reference, calib(), PruneConfig(method="sparsegpt", sparsity=0.6, batch_size=3))
    assert_same_weights(state(AutoModelForCausalLM.from_pretrained(resumed)), state(reference))


def test_resume_refuses_a_different_run(checkpoint, tmp_path):
    model, _ = load_model(str(checkpoint))
    sparsekit.prune(model, calib(), PruneConfig(method="wanda", sparsity=0.5, checkpoint_dir=str(tmp_path / "run")))
    model, _ = load_model(str(checkpoint))
    with pytest.raises(ValueError, match="different run.*sparsity"):
        sparsekit.prune(model, calib(), PruneConfig(method="wanda", sparsity=0.6, checkpoint_dir=str(tmp_path / "run")))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


DIST_SCRIPT = textwrap.dedent("""
    import datetime, sys, torch, torch.distributed as dist
    import sparsekit
    from sparsekit.hf.loading import load_model
    ckpt, method, out = sys.argv[1], sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    model, _ = load_model(ckpt)
    ids = torch.randint(0, 256, (10, 16), generator=torch.Generator().manual_seed(1))
    sparsekit.prune(model, ids, sparsekit.PruneConfig(method=method, sparsity=0.5, batch_size=2))
    if dist.get_rank() == 0:
        torch.save({k: v == 0 for k, v in model.state_dict().items()}, out)
    dist.destroy_process_group()
""")


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_two_process_gloo_gives_the_same_masks(checkpoint, tmp_path, method):
    script = tmp_path / "dist.py"
    script.write_text(DIST_SCRIPT)
    out = tmp_path / "masks.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(script), str(checkpoint), method, str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, _ = load_model(str(checkpoint))
    ids = torch.randint(0, 256, (10, 16), generator=torch.Generator().manual_seed(1))
    sparsekit.prune(model, ids, PruneConfig(method=method, sparsity=0.5, batch_size=2))
    two = torch.load(out)
    for k, v in model.state_dict().items():
        assert torch.equal(two[k], v == 0), k
