"""Resumable runs: after each block, its pruned tensors and the next block's inputs are saved atomically.

Layout of a run directory:
    run.json                         fingerprint of the run, last finished block, report so far
    blocks/<index>.safetensors       the pruned tensors of each finished block
    inputs.rank<r>.safetensors       calibration activations entering the next block (one per process)
Each file is written to a temp name and renamed; run.json is written last, so a run killed at any
moment resumes from the last block whose files are all complete and gives the same final model.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from sparsekit.pipeline import distributed
from sparsekit.pipeline.report import PruneReport

FORMAT = 1


def fingerprint(config, calibration: torch.Tensor, model: nn.Module) -> dict:
    """What must match for a checkpoint to be resumed: the model, the calibration and the settings."""
    digest = hashlib.sha256(calibration.cpu().numpy().tobytes()).hexdigest()[:16]
    return {
        "format": FORMAT,
        "model": str(getattr(model, "name_or_path", "")),
        "method": config.method,
        "method_options": json.loads(json.dumps(config.method_options, default=str)),
        "sparsity": config.sparsity if not isinstance(config.sparsity, dict) else dict(config.sparsity),
        "pattern": config.pattern,
        "targets": list(config.targets),
        "ignore": list(config.ignore),
        "calibration": [list(calibration.shape), digest],
        "batch_size": config.batch_size,
        "world_size": distributed.world()[1],
    }


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunCheckpoint:
    def __init__(self, directory: str | Path, fingerprint: dict):
        self.dir = Path(directory)
        self.fingerprint = fingerprint
        (self.dir / "blocks").mkdir(parents=True, exist_ok=True)

    @property
    def _run_file(self) -> Path:
        return self.dir / "run.json"

    def block_file(self, index: int) -> Path:
        return self.dir / "blocks" / f"{index:05d}.safetensors"

    def _inputs_file(self) -> Path:
        return self.dir / f"inputs.rank{distributed.world()[0]}.safetensors"

    def finished(self) -> tuple[int, PruneReport | None]:
        """(last finished block or -1, report so far); refuses a directory from a different run."""
        if not self._run_file.exists():
            return -1, None
        state = json.loads(self._run_file.read_text())
        if state["fingerprint"] != self.fingerprint:
            differ = sorted(k for k in set(state["fingerprint"]) | set(self.fingerprint)
                            if state["fingerprint"].get(k) != self.fingerprint.get(k))
            raise ValueError(f"checkpoint directory {self.dir} belongs to a different run (differs in {differ}); "
                             "use a new directory or the original settings")
        return state["finished"], PruneReport.from_dict(state["report"])

    def save(self, index: int, block: nn.Module, next_inputs: torch.Tensor | None, report: PruneReport) -> None:
        if next_inputs is not None:
            _atomic_save({"hidden": next_inputs}, self._inputs_file())
        if distributed.is_main():
            _atomic_save(block.state_dict(), self.block_file(index))
        distributed.barrier()
        if distributed.is_main():
            _atomic_write_text(json.dumps({"fingerprint": self.fingerprint, "finished": index,
                                           "report": report.to_dict()}, indent=1), self._run_file)
        distributed.barrier()

    def block_tensors(self, index: int, device="cpu") -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.block_file(index)), device=str(device))

    def streamer(self, device, dtype=None):
        """A DiskStream placement that serves the pruned blocks from this checkpoint."""
        from sparsekit.pipeline.placement import DiskStream

        return DiskStream(lambda index, names, dev: self.block_tensors(index, dev), device, dtype)

    def load_inputs(self, device) -> torch.Tensor:
        from safetensors.torch import load_file

        return load_file(str(self._inputs_file()), device=str(device))["hidden"]
