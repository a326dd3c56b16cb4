"""Driver for test_resume_kill_anywhere (run as a script, in its own process because it forks).

For every k, a forked child runs a checkpointed prune and SIGKILLs itself at the k-th file-system step
inside RunCheckpoint.save (before the step, or for a file write, after writing half of it); the
parent then resumes the run in the same directory and compares the model, bit for bit, with an
uninterrupted run. Prints one JSON object: {"steps": n, "failures": [...]}.
"""
import json
import os
import pathlib
import signal
import sys
import tempfile

import torch

torch.set_num_threads(1)

import safetensors.torch  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit.hf.loading import load_model  # noqa: E402
from sparsekit.pipeline import checkpoint as ckpt_module  # noqa: E402

MODEL, METHOD = sys.argv[1], sys.argv[2]
IDS = torch.randint(0, 256, (6, 16), generator=torch.Generator().manual_seed(1))


def config(run_dir=None):
    return sparsekit.PruneConfig(method=METHOD, sparsity=0.6, batch_size=2, checkpoint_dir=run_dir)


def bits(model):
    return {k: v.detach().contiguous().view(torch.uint8).clone() for k, v in model.state_dict().items()}


class Killer:
    """Counts file-system steps inside RunCheckpoint.save; at step `at` kills the process."""

    def __init__(self, at=None, torn=False):
        self.at, self.torn, self.count, self.inside = at, torn, 0, False

    def step(self, write_half=None):
        if not self.inside:
            return
        self.count += 1
        if self.count == self.at:
            if self.torn and write_half is not None:
                write_half()
            os.kill(os.getpid(), signal.SIGKILL)

    def install(self):
        killer = self

        def wrap(owner, name, torn_writer=None):
            original = getattr(owner, name)

            def patched(*args, **kwargs):
                killer.step(torn_writer(original, args, kwargs) if torn_writer else None)
                return original(*args, **kwargs)

            setattr(owner, name, patched)

        def half_save_file(original, args, kwargs):
            def write_half():
                original(*args, **kwargs)
                path = args[1]
                size = os.path.getsize(path)
                with open(path, "r+b") as fh:
                    fh.truncate(size // 2)
            return write_half

        def half_write_bytes(original, args, kwargs):
            def write_half():
                path, data = args[0], args[1]
                with open(path, "wb") as fh:
                    fh.write(data[: len(data) // 2])
            return write_half

        wrap(safetensors.torch, "save_file", half_save_file)
        wrap(pathlib.Path, "write_bytes", half_write_bytes)
        for name in ("replace", "fsync", "unlink", "chmod", "rename"):
            wrap(os, name)
        wrap(pathlib.Path, "unlink")
        wrap(tempfile, "mkstemp")

        original_save = ckpt_module.RunCheckpoint.save

        def save(self, *args, **kwargs):
            killer.inside = True
            try:
                return original_save(self, *args, **kwargs)
            finally:
                killer.inside = False

        ckpt_module.RunCheckpoint.save = save


def run_child(run_dir, at, torn):
    Killer(at, torn).install()
    model, _ = load_model(MODEL, dtype="float32")
    sparsekit.prune(model, IDS, config(run_dir))
    os._exit(0)  # finished without reaching step `at`


def main():
    reference, _ = load_model(MODEL, dtype="float32")
    sparsekit.prune(reference, IDS, config())
    expected = bits(reference)

    counter = Killer()
    with tempfile.TemporaryDirectory() as tmp:  # count the steps of a whole checkpointed run
        pid = os.fork()
        if pid == 0:
            counter.install()
            model, _ = load_model(MODEL, dtype="float32")
            sparsekit.prune(model, IDS, config(os.path.join(tmp, "count")))
            with open(os.path.join(tmp, "n"), "w") as fh:
                fh.write(str(counter.count))
            os._exit(0)
        os.waitpid(pid, 0)
        steps = int(open(os.path.join(tmp, "n")).read())

    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for at in range(1, steps + 1):
            for torn in (False, True):
                run_dir = os.path.join(tmp, f"run-{at}-{int(torn)}")
                pid = os.fork()
                if pid == 0:
                    try:
                        run_child(run_dir, at, torn)
                    finally:
                        os._exit(3)
                _, status = os.waitpid(pid, 0)
                if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                    failures.append({"step": at, "torn": torn, "error": f"child was not killed (status {status})"})
                    continue
                model, _ = load_model(MODEL, dtype="float32")
                try:
                    report = sparsekit.prune(model, IDS, config(run_dir))
                except Exception as exc:  # noqa: BLE001 - reported to the test
                    failures.append({"step": at, "torn": torn, "error": repr(exc)})
                    continue
                got = bits(model)
                differ = [k for k in expected if not torch.equal(expected[k], got[k])]
                layers = len(report.layers)
                if differ or layers != len(set(r.name for r in report.layers)):
                    failures.append({"step": at, "torn": torn, "differ": differ[:5], "report_layers": layers})
    print(json.dumps({"steps": steps, "failures": failures}))


if __name__ == "__main__":
    main()
