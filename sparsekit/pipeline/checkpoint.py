"""Resumable runs: after each block, its pruned tensors and the next block's inputs are saved durably.

Layout of a run directory:
    run.json                                  fingerprint, last finished block, report so far, and the
                                              files that hold that state (written last)
    blocks/<index>.safetensors                the pruned tensors of each finished block
    inputs/after-<index>.rank<r>.safetensors  calibration activations leaving block <index> (one per process)
`save(index)` writes the new inputs and block files under new names (never over a file that run.json
points to), fsyncs them, then replaces run.json, then removes inputs no longer referenced. A run
killed at any instruction therefore finds a run.json whose files are all complete, and resumes to
the same final model. The directory is locked (fcntl) while a run uses it, so two runs cannot mix.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from sparsekit._io import atomic_save_safetensors, atomic_write_json, file_lock, fsync_dir
from sparsekit.pipeline import distributed
from sparsekit.pipeline.report import PruneReport

FORMAT = 2


def _digest_file(path: Path, cache: dict) -> str:
    """sha256 of a file, streamed; reused while its size and mtime are unchanged."""
    stat = path.stat()
    key = str(path.resolve())
    hit = cache.get(key)
    if hit and hit["size"] == stat.st_size and hit["mtime_ns"] == stat.st_mtime_ns:
        return hit["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}
    return cache[key]["sha256"]


def _hash_cache_file() -> Path:
    from sparsekit.data.cache import cache_dir

    return cache_dir() / "file-hashes.json"


def model_files_digest(directory: Path) -> str | None:
    """One sha256 over the checkpoint's weights and config (names and contents); None if it has no safetensors."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and (p.suffix == ".safetensors" or p.name == "config.json"))
    if not any(p.suffix == ".safetensors" for p in files):
        return None
    cache_path = _hash_cache_file()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    before = dict(cache)
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{_digest_file(path, cache)}\0".encode())
    for key in [k for k in cache if not os.path.exists(k)]:  # files deleted since (e.g. temporary checkpoints)
        del cache[key]
    if cache != before:
        with contextlib.suppress(OSError):
            atomic_write_json(cache_path, cache, indent=None)
    return digest.hexdigest()


def model_state_digest(model: nn.Module) -> str:
    """sha256 over the model's (non-meta) tensors: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if tensor.is_meta:
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def model_digest(model: nn.Module) -> str:
    """What identifies the model's weights: the content of the checkpoint files it was loaded from
    (cached by size and mtime), or of its tensors when it has no local checkpoint."""
    source = str(getattr(model, "name_or_path", "") or "")
    if source and Path(source).is_dir():
        files = model_files_digest(Path(source))
        if files is not None:
            return "files:" + files
    return "tensors:" + model_state_digest(model)


def _model_dtype(model: nn.Module) -> str:
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.is_floating_point()})
    return ",".join(dtypes)


def fingerprint(config, calibration: torch.Tensor, model: nn.Module) -> dict:
    """Everything that changes the result of a run: the model (by content), the calibration and the settings."""
    digest = hashlib.sha256(calibration.cpu().numpy().tobytes()).hexdigest()[:16]
    plain = lambda value: json.loads(json.dumps(value, default=str, sort_keys=True))  # noqa: E731
    return {
        "format": FORMAT,
        "model": model_digest(model),
        "model_class": type(model).__name__,
        "dtype": _model_dtype(model),
        "method": config.method,
        "method_options": plain(config.method_options),
        "sparsity": plain(config.sparsity),
        "pattern": config.pattern,
        "targets": list(config.targets),
        "ignore": list(config.ignore),
        "allocation": config.allocation,
        "allocation_options": plain(config.allocation_options),
        "backend": config.backend,
        "blocks": config.blocks,
        "calibration": [list(calibration.shape), digest],
        "batch_size": config.batch_size,
        "world_size": distributed.world()[1],
    }


def _describe(value) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


@contextlib.contextmanager
def run_lock(directory):
    """Hold the run directory exclusively (rank 0 of a run); a second run on it fails at once, by name."""
    if not directory or not distributed.is_main():
        yield
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with file_lock(directory, what=f"checkpoint directory {directory}"):
        yield


class RunCheckpoint:
    def __init__(self, directory: str | Path, fingerprint: dict):
        self.dir = Path(directory)
        self.fingerprint = fingerprint
        (self.dir / "blocks").mkdir(parents=True, exist_ok=True)
        (self.dir / "inputs").mkdir(parents=True, exist_ok=True)

    @property
    def _run_file(self) -> Path:
        return self.dir / "run.json"

    def block_file(self, index: int) -> Path:
        return self.dir / "blocks" / f"{index:05d}.safetensors"

    def inputs_file(self, index: int, rank: int | None = None) -> Path:
        """Activations leaving block `index` (entering block index + 1) of process `rank`."""
        rank = distributed.world()[0] if rank is None else rank
        return self.dir / "inputs" / f"after-{index:05d}.rank{rank}.safetensors"

    def _state(self) -> dict | None:
        if not self._run_file.exists():
            return None
        try:
            return json.loads(self._run_file.read_text())
        except ValueError:
            raise ValueError(f"{self._run_file} is not valid JSON; the checkpoint was edited or damaged: "
                             "use a new --checkpoint-dir") from None

    def finished(self) -> tuple[int, PruneReport | None]:
        """(last finished block or -1, report so far); refuses a directory from a different run."""
        state = self._state()
        if state is None:
            self.remove_stale()
            return -1, None
        theirs = state.get("fingerprint", {})
        differ = sorted(k for k in set(theirs) | set(self.fingerprint) if theirs.get(k) != self.fingerprint.get(k))
        if differ:
            detail = "; ".join(f"{k}: checkpoint {_describe(theirs.get(k))}, now {_describe(self.fingerprint.get(k))}"
                               for k in differ)
            raise ValueError(f"checkpoint directory {self.dir} belongs to a different run ({detail}); "
                             "use a new --checkpoint-dir or the original model and settings")
        missing = [name for name in [*state.get("blocks", []), state.get("inputs") or ""] if name and not (self.dir / name).is_file()]
        if missing:
            raise ValueError(f"checkpoint directory {self.dir} is incomplete: run.json names {missing[:3]}, which do not exist; "
                             "use a new --checkpoint-dir")
        self.remove_stale(keep=state.get("inputs"))
        return state["finished"], PruneReport.from_dict(state["report"])

    def remove_stale(self, keep: str | None = None) -> None:
        """Remove this process's inputs files that run.json does not reference, and temp files of killed writers."""
        rank = distributed.world()[0]
        for path in (self.dir / "inputs").glob(f"after-*.rank{rank}.safetensors"):
            if keep is None or path != self.dir / keep.replace(".rank0.", f".rank{rank}."):
                path.unlink(missing_ok=True)
        if distributed.is_main():
            for folder in (self.dir, self.dir / "blocks", self.dir / "inputs"):
                for tmp in folder.glob(".*.tmp-*"):
                    tmp.unlink(missing_ok=True)

    def save(self, index: int, block: nn.Module, next_inputs: torch.Tensor | None, report: PruneReport) -> None:
        inputs = None
        if next_inputs is not None:
            atomic_save_safetensors({"hidden": next_inputs}, self.inputs_file(index))
            inputs = str(self.inputs_file(index, 0).relative_to(self.dir))
        if distributed.is_main():
            atomic_save_safetensors(block.state_dict(), self.block_file(index))
        distributed.barrier()
        if distributed.is_main():
            blocks = [str(self.block_file(i).relative_to(self.dir)) for i in range(index + 1)]
            atomic_write_json(self._run_file, {"fingerprint": self.fingerprint, "finished": index, "blocks": blocks,
                                               "inputs": inputs, "report": report.to_dict()}, indent=1)
        distributed.barrier()
        for previous in (self.dir / "inputs").glob(f"after-*.rank{distributed.world()[0]}.safetensors"):
            if next_inputs is None or previous != self.inputs_file(index):
                previous.unlink(missing_ok=True)
        fsync_dir(self.dir / "inputs")

    def block_tensors(self, index: int, device="cpu") -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.block_file(index)), device=str(device))

    def streamer(self, device, dtype=None):
        """A DiskStream placement that serves the pruned blocks from this checkpoint."""
        from sparsekit.pipeline.placement import DiskStream

        return DiskStream(lambda index, names, dev: self.block_tensors(index, dev), device, dtype)

    def load_inputs(self, device) -> torch.Tensor:
        """The activations entering the first unfinished block, from the file run.json names."""
        from safetensors.torch import load_file

        state = self._state()
        if not state:
            raise ValueError(f"checkpoint directory {self.dir} has no run.json to resume from; use a new --checkpoint-dir")
        if not state.get("inputs"):  # every block is finished: nothing left to feed
            return None
        path = self.inputs_file(state["finished"])
        return load_file(str(path), device=str(device))["hidden"]
