"""Calibration / evaluation text: real Wikipedia passages, disjoint, deterministic windows."""
import pytest
import torch

from sparsekit.data.text import calibration_ids, load_text, wikipedia_passages
from tests.helpers import byte_tokenizer


def test_wikipedia_splits_are_real_and_disjoint():
    calib, evaluation = wikipedia_passages("calibration"), wikipedia_passages("evaluation")
    assert len(calib) > 2000 and len(evaluation) > 1000
    assert sum(map(len, calib)) > 1_000_000 and sum(map(len, evaluation)) > 500_000
    assert not set(calib) & set(evaluation)
    assert all(len(p) > 50 for p in evaluation)
    assert not any("Question:" in p or "Background:" in p for p in evaluation)


def test_calibration_windows_are_seeded_windows_of_the_text():
    tok = byte_tokenizer()
    a = calibration_ids(tok, 4, 64, seed=0)
    b = calibration_ids(tok, 4, 64, seed=0)
    c = calibration_ids(tok, 4, 64, seed=1)
    assert a.shape == (4, 64) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    text = "\n\n".join(load_text("wikipedia", "calibration"))
    assert tok.decode(a[0]) in text


def test_user_text_files(tmp_path):
    (tmp_path / "a.txt").write_text("plain text file")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    assert load_text(str(tmp_path / "a.txt")) == ["plain text file"]
    assert load_text(str(tmp_path / "b.jsonl")) == ["one", "two"]
    with pytest.raises(FileNotFoundError, match="neither"):
        load_text(str(tmp_path / "missing.txt"))


def test_bad_calibration_requests(tmp_path):
    tok = byte_tokenizer()
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="fewer than seqlen"):
        calibration_ids(tok, 2, 64, source=str(tmp_path / "empty.txt"))
    with pytest.raises(ValueError, match=">= 1"):
        calibration_ids(tok, 0, 64)
