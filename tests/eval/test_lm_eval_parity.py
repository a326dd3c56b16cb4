"""sparsekit's scores equal lm-evaluation-harness's HFLM on the same model and tokenizer (lm-eval is in
the `test` extra, so these run in CI): per-request log-likelihoods of all seven tasks' requests within
1e-4 in fp32 with identical greedy flags and identical acc / acc_norm decisions, for a tokenizer that
prepends BOS by default and for one that does not; and perplexity windows against lm-eval's rolling
log-likelihood."""
import importlib
import json
import math

import pytest
import torch

from sparsekit.eval.bos import resolve_add_bos, tokenizer_adds_bos
from sparsekit.eval.perplexity import eval_windows, next_token_nll
from sparsekit.eval.zeroshot_tasks import TASKS, Request
from tests.eval.documents import build
from tests.eval.tokenizers import BOS_VOCAB, byte_tokenizer_with_bos
from tests.helpers import byte_tokenizer, tiny_llama

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is part of the `test` extra: pip install -e '.[test]'")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

zs = importlib.import_module("sparsekit.eval.zeroshot")
TOL = 1e-4

# Both tokenizers must really differ in the convention under test.
SETUPS = {"bos": (byte_tokenizer_with_bos, BOS_VOCAB, True), "no_bos": (byte_tokenizer, 256, False)}


@pytest.fixture(scope="module", params=sorted(SETUPS))
def setup(request):
    make_tokenizer, vocab, adds_bos = SETUPS[request.param]
    tok = make_tokenizer()
    assert tokenizer_adds_bos(tok) is adds_bos
    return tiny_llama(vocab=vocab, seed=1).float(), tok, adds_bos


def _docs():
    return [build(task) for task in TASKS]


def _hflm_loglikelihoods(lm, requests):
    return lm.loglikelihood([Instance(request_type="loglikelihood", doc={}, arguments=(r.context, r.continuation), idx=i)
                             for i, r in enumerate(requests)], disable_tqdm=True)


def _decisions(docs, lls):
    out, pos = [], 0
    for doc in docs:
        values = lls[pos:pos + len(doc.requests)]
        pos += len(doc.requests)
        out.append((max(range(len(values)), key=values.__getitem__),
                    max(range(len(values)), key=lambda i: values[i] / len(doc.choices[i]))))
    return out


def _assert_same(ours, theirs):
    assert len(ours) == len(theirs)
    assert [g for _, g in ours] == [g for _, g in theirs]
    gap = max(abs(a - b) for (a, _), (b, _) in zip(ours, theirs))
    assert gap < TOL, f"largest log-likelihood gap {gap:.3g}"


def test_all_tasks_loglikelihoods_and_decisions_equal_hflm(setup):
    model, tok, adds_bos = setup
    docs = _docs()
    requests = [r for doc in docs for r in doc.requests]
    theirs = _hflm_loglikelihoods(HFLM(pretrained=model, tokenizer=tok, batch_size=4), requests)
    ours = zs.loglikelihoods(model, tok, requests, progress=False)  # add_bos="auto"
    _assert_same(ours, theirs)
    assert _decisions(docs, [ll for ll, _ in ours]) == _decisions(docs, [ll for ll, _ in theirs])
    assert zs.encode_pair(tok, requests[0].context, requests[0].continuation, adds_bos)[0][0] == tok.bos_token_id or not adds_bos


def test_bos_override_matches_hflm_add_bos_token_false(setup):
    model, tok, adds_bos = setup
    requests = [r for doc in _docs() for r in doc.requests]
    theirs = _hflm_loglikelihoods(HFLM(pretrained=model, tokenizer=tok, batch_size=4, add_bos_token=False), requests)
    ours = zs.loglikelihoods(model, tok, requests, progress=False, add_bos="no")
    _assert_same(ours, theirs)
    if adds_bos:  # the convention matters: without BOS every request scores differently
        with_bos = zs.loglikelihoods(model, tok, requests, progress=False)
        assert all(abs(a - b) > TOL for (a, _), (b, _) in zip(with_bos, ours))


def test_empty_context_and_left_truncation_equal_hflm(setup):
    model, tok, _ = setup
    requests = [Request("", "abc def"), Request("a long context " * 30, " end"), Request("x", " y")]
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=2, max_length=64)
    _assert_same(zs.loglikelihoods(model, tok, requests, max_length=64, progress=False), _hflm_loglikelihoods(lm, requests))


def test_perplexity_windows_equal_lm_eval_rolling_loglikelihood():
    """With BOS each window is BOS + seqlen - 1 text tokens, every text token predicted once: per window the
    NLL equals lm-eval's rolling log-likelihood of that window's text with BOS as the prefix token
    (HFLM(add_bos_token=False) so the text itself is encoded without a second BOS)."""
    model, tok = tiny_llama(vocab=BOS_VOCAB, seed=2).float(), byte_tokenizer_with_bos()
    text = "The quick brown fox jumps over the lazy dog. " * 12
    seqlen = 48
    windows = eval_windows(tok, text, seqlen)
    assert windows.shape[1] == seqlen and bool((windows[:, 0] == tok.bos_token_id).all())
    assert windows[:, 1:].reshape(-1).tolist() == tok.encode(text, add_special_tokens=False)[:windows.shape[0] * (seqlen - 1)]
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=2, max_length=seqlen, add_bos_token=False)
    assert lm.prefix_token_id == tok.bos_token_id
    texts = [tok.decode(w[1:].tolist()) for w in windows]
    theirs = lm.loglikelihood_rolling([Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i)
                                       for i, t in enumerate(texts)], disable_tqdm=True)
    with torch.no_grad():
        for window, ll in zip(windows, theirs):
            nll, count = next_token_nll(model(input_ids=window[None]).logits, window[None])
            assert count == seqlen - 1
            assert math.isclose(-nll, ll, abs_tol=TOL * seqlen)


def test_perplexity_without_bos_keeps_text_windows():
    tok = byte_tokenizer_with_bos()
    text = "abcdefghij" * 5
    plain = tok.encode(text, add_special_tokens=False)
    windows = eval_windows(tok, text, 10, add_bos="no")
    assert windows.reshape(-1).tolist() == plain[:50] and windows.shape == (5, 10)
    assert eval_windows(byte_tokenizer(), text, 10).reshape(-1).tolist() == plain[:50]  # no BOS by default: unchanged
    forced = eval_windows(tok, text, 10, add_bos="yes", max_windows=2)
    assert forced[:, 0].tolist() == [tok.bos_token_id] * 2 and forced[:, 1:].reshape(-1).tolist() == plain[:18]


def test_resolve_add_bos_choices_and_errors():
    with_bos, without = byte_tokenizer_with_bos(), byte_tokenizer()
    assert resolve_add_bos(with_bos, "auto") and not resolve_add_bos(without, "auto")
    assert resolve_add_bos(without, "no") is False and resolve_add_bos(with_bos, False) is False
    assert resolve_add_bos(with_bos, "yes") is True
    with pytest.raises(ValueError, match="no BOS token"):
        resolve_add_bos(without, "yes")
    with pytest.raises(ValueError, match="add_bos must be one of"):
        resolve_add_bos(with_bos, "sometimes")
    with pytest.raises(TypeError, match="add_bos must be"):
        resolve_add_bos(with_bos, 1)


def test_zeroshot_records_the_bos_choice(tmp_path):
    from tests.eval.test_zeroshot import REAL, _write_task_tree

    for task in ("piqa", "boolq"):
        _write_task_tree(tmp_path, task, [REAL[task]] * 2)
    model, tok = tiny_llama(vocab=BOS_VOCAB), byte_tokenizer_with_bos()
    auto = zs.zeroshot(model, tok, "piqa,boolq", data_root=tmp_path, progress=False)
    off = zs.zeroshot(model, tok, "piqa", data_root=tmp_path, progress=False, add_bos="no")
    assert auto["piqa"]["add_bos"] is True and auto["boolq"]["add_bos"] is True and off["piqa"]["add_bos"] is False
    assert "Title -- " in auto["boolq"]["note"] and "note" not in auto["piqa"]  # BoolQ's prompt difference travels with it


def test_cli_add_bos_follows_the_checkpoint_tokenizer_and_is_recorded(tmp_path):
    from sparsekit.cli import main

    tiny_llama(vocab=BOS_VOCAB).save_pretrained(tmp_path / "model", safe_serialization=True)
    byte_tokenizer_with_bos().save_pretrained(tmp_path / "model")
    text = tmp_path / "text.txt"
    text.write_text("Some evaluation text for the tiny model. " * 20)
    for flag, expected in (("auto", True), ("no", False)):
        js = tmp_path / f"{flag}.json"
        assert main(["eval", "--model", str(tmp_path / "model"), "--device", "cpu", "--eval-text", str(text), "--seqlen", "32",
                     "--eval-windows", "2", "--add-bos", flag, "--json", str(js)]) == 0
        assert json.loads(js.read_text())["eval"]["add_bos"] is expected


@pytest.mark.slow
def test_smollm2_real_tokenizer_equals_hflm():
    """SmolLM2-135M's own tokenizer (no default BOS), fp32, the first 3 documents of every task."""
    import sparsekit
    from sparsekit.eval.zeroshot_tasks import load_docs

    model, tok = sparsekit.load_model("smollm2-135m", dtype="float32")
    assert not tokenizer_adds_bos(tok)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=8)
    for task in TASKS:
        docs = load_docs(task, 3)
        requests = [r for doc in docs for r in doc.requests]
        ours, theirs = zs.loglikelihoods(model, tok, requests, progress=False), _hflm_loglikelihoods(lm, requests)
        _assert_same(ours, theirs)
        assert _decisions(docs, [ll for ll, _ in ours]) == _decisions(docs, [ll for ll, _ in theirs])
