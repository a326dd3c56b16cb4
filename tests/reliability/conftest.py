import pytest

from tests.helpers import save_tiny_checkpoint

TEXT = " ".join(f"The river {i} flows past the old mill and into the sea." for i in range(400))


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A tiny checkpoint, calibration and eval text; the working directory is a separate empty folder."""
    save_tiny_checkpoint(tmp_path / "model")
    (tmp_path / "calib.txt").write_text(TEXT)
    (tmp_path / "eval.txt").write_text(TEXT[::-1])
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the CLI gets as far as loading the model (the error had to come first)."""
    import sparsekit.hf.loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input error was reported")

    monkeypatch.setattr(sparsekit.hf.loading, "load_model", refuse)


def prune_args(ws, *extra):
    return ["prune", "--model", str(ws / "model"), "--nsamples", "2", "--seqlen", "16", "--device", "cpu",
            "--method", "magnitude", "--calib", str(ws / "calib.txt"), "--eval-text", str(ws / "eval.txt"), *extra]
