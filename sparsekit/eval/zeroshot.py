"""Zero-shot accuracy (BoolQ, HellaSwag, WinoGrande, ARC-e/c, OpenBookQA, PIQA) scored as
lm-evaluation-harness scores multiple-choice tasks, without hub access.

For each choice, the log-likelihood of the continuation given the context (EleutherAI/
lm-evaluation-harness, lm_eval/models/huggingface.py):
  * `_encode_pair`: trailing spaces of the context move to the continuation; context + continuation
    is tokenised as one string and the continuation's tokens are what follows the context's own
    tokenisation; both start with BOS where the tokenizer adds one by default (`HFLM.tok_encode` uses
    the tokenizer's default special tokens since lm-eval 0.4.9.2; `add_bos` overrides, see
    `sparsekit.eval.bos`); an empty context is the prefix token (BOS, else EOS) alone;
  * `_loglikelihood_tokens`: input = (context + continuation)[-(max_length + 1):][:-1]; the sum of
    log-softmax over the continuation's positions; is_greedy = every continuation token is the argmax.
Per document (lm_eval/api/task.py, multiple_choice): acc = [argmax ll == gold]; acc_norm =
[argmax ll / len(choice string) == gold] (length in characters); stderr = sample std / sqrt(n).
Batches are right-padded (causal attention never sees the padding) and sized by a token budget.
Task data and prompt formats: `sparsekit.eval.zeroshot_tasks`.

`zeroshot_lm_eval` runs the real harness instead (`HFLM(pretrained=model)` + `simple_evaluate`),
for users with lm-eval installed and hub access.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from tqdm.auto import tqdm

from sparsekit.eval.bos import encode, resolve_add_bos
from sparsekit.eval.zeroshot_tasks import TASKS, Doc, Request, load_docs, resolve_tasks


def encode_pair(tokenizer, context: str, continuation: str, add_bos: bool = False) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) exactly as lm-eval's HFLM._encode_pair (and, for an empty
    context, TemplateLM.loglikelihood) splits them; add_bos is resolved (`resolve_add_bos`)."""
    if context == "":  # lm-eval conditions an empty context on the prefix token (BOS, else EOS)
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        continuation_ids = encode(tokenizer, continuation, False)
        if continuation_ids and continuation_ids[0] == prefix:
            return continuation_ids[:1], continuation_ids[1:]
        return [prefix], continuation_ids
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = encode(tokenizer, context + continuation, add_bos)
    context_ids = encode(tokenizer, context, add_bos)
    return context_ids, whole[len(context_ids):]


def model_max_length(model, tokenizer=None, default: int = 2048) -> int:
    """lm-eval HFLM.max_length: the model config's context length, else the tokenizer's, else 2048."""
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit and limit < 1_000_000_000:
        return int(limit)
    return default


@torch.no_grad()
def loglikelihoods(model, tokenizer, requests: Sequence[Request], *, max_batch_tokens: int = 4096,
                   max_batch_size: int = 64, max_length: int | None = None, device=None,
                   progress: bool = True, add_bos="auto") -> list[tuple[float, bool]]:
    """(log-likelihood of the continuation, is it the greedy continuation) for each request.

    add_bos: "auto" (BOS in front where the tokenizer adds it by default, as lm-eval's HFLM), "yes", "no".
    """
    add_bos = resolve_add_bos(tokenizer, add_bos)
    if max_batch_tokens < 1 or max_batch_size < 1:
        raise ValueError(f"max_batch_tokens and max_batch_size must be >= 1, got {max_batch_tokens}, {max_batch_size}")
    max_length = max_length or model_max_length(model, tokenizer)
    device = device or next(model.parameters()).device
    encoded = []
    for req in requests:
        context, continuation = encode_pair(tokenizer, req.context, req.continuation, add_bos)
        if not continuation:
            raise ValueError(f"continuation {req.continuation!r} encodes to no tokens; every choice needs text")
        tokens = (context + continuation)[-(max_length + 1):][:-1]
        encoded.append((tokens, continuation))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))  # longest first, as lm-eval does
    results: list[tuple[float, bool] | None] = [None] * len(encoded)
    bar = tqdm(total=len(order), desc="zero-shot", disable=not progress, leave=False)
    start = 0
    while start < len(order):
        longest = len(encoded[order[start]][0])
        size = max(1, min(max_batch_size, max_batch_tokens // max(1, longest), len(order) - start))
        batch = order[start:start + size]
        ids = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, index in enumerate(batch):
            tokens = encoded[index][0]
            ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        logits = model(input_ids=ids.to(device), use_cache=False).logits
        for row, index in enumerate(batch):
            tokens, continuation = encoded[index]
            end, n = len(tokens), len(continuation)
            logprobs = logits[row, end - n:end].float().log_softmax(-1).cpu()
            target = torch.tensor(continuation, dtype=torch.long)
            ll = float(logprobs.gather(-1, target[:, None]).sum())
            results[index] = (ll, bool((logprobs.argmax(-1) == target).all()))
        bar.update(len(batch))
        start += size
    bar.close()
    return results  # type: ignore[return-value]


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # first maximum, as numpy.argmax


def _stderr(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def score_documents(docs: Sequence[Doc], lls: Sequence[float], metrics: Sequence[str] = ("acc", "acc_norm")) -> dict:
    """acc / acc_norm (mean over documents) and their standard errors, from per-request log-likelihoods."""
    expected = sum(len(d.requests) for d in docs)
    if len(lls) != expected:
        raise ValueError(f"got {len(lls)} log-likelihoods for {expected} requests")
    per_doc = {"acc": [], "acc_norm": []}
    position = 0
    for doc in docs:
        values = list(lls[position:position + len(doc.requests)])
        position += len(doc.requests)
        per_doc["acc"].append(float(_argmax(values) == doc.gold))
        normed = [v / len(choice) for v, choice in zip(values, doc.choices)]
        per_doc["acc_norm"].append(float(_argmax(normed) == doc.gold))
    out = {"n": len(docs)}
    for metric in metrics:
        scores = per_doc[metric]
        out[metric] = sum(scores) / len(scores) if scores else float("nan")
        out[f"{metric}_stderr"] = _stderr(scores)
    return out


def zeroshot(model, tokenizer, tasks=None, limit: int | None = None, *, max_batch_tokens: int = 4096,
             device=None, progress: bool = True, data_root=None, add_bos="auto") -> dict[str, dict]:
    """Zero-shot accuracy of a causal LM: {task: {"acc", "acc_norm" (where lm-eval reports it), "n", stderrs,
    "chance", "add_bos"}}.

    tasks: names or a comma-separated string (boolq, hellaswag, winogrande, arc_easy, arc_challenge,
    openbookqa, piqa; default all). limit: first N validation documents per task (all by default).
    add_bos: "auto" (the tokenizer's default, as lm-eval's HFLM), "yes" or "no"; the choice made is
    recorded in each task's result.
    """
    add_bos = resolve_add_bos(tokenizer, add_bos)
    results = {}
    was_training = model.training
    model.eval()
    try:
        for name in resolve_tasks(tasks):
            docs = load_docs(name, limit, root=data_root)
            requests = [req for doc in docs for req in doc.requests]
            scored = loglikelihoods(model, tokenizer, requests, max_batch_tokens=max_batch_tokens, device=device,
                                    progress=progress, add_bos=add_bos)
            results[name] = {**score_documents(docs, [ll for ll, _ in scored], TASKS[name].metrics),
                             "chance": TASKS[name].chance, "add_bos": add_bos,
                             **({"note": TASKS[name].note} if TASKS[name].note else {})}
    finally:
        model.train(was_training)
    return results


def zeroshot_lm_eval(model, tokenizer, tasks=None, limit: int | None = None, batch_size: int = 8,
                     add_bos="auto") -> dict[str, dict]:
    """The same suite through lm-evaluation-harness itself (needs `pip install lm-eval` and hub access).

    add_bos "auto" leaves HFLM's default (the tokenizer's); "no" passes add_bos_token=False. HFLM cannot
    add a BOS that the tokenizer object does not add itself, so "yes" is refused for such a tokenizer.
    """
    from sparsekit.eval.bos import tokenizer_adds_bos

    resolved = resolve_add_bos(tokenizer, add_bos)
    if resolved and not tokenizer_adds_bos(tokenizer):
        raise ValueError("lm-eval's HFLM only adds BOS where the tokenizer adds it by default; this tokenizer does not. "
                         "Use sparsekit.eval.zeroshot(add_bos='yes') or a tokenizer whose post-processor adds BOS")
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise ImportError("the lm-eval path needs lm-evaluation-harness: pip install lm-eval "
                          "(or use sparsekit.eval.zeroshot, which needs no hub access)") from None
    names = resolve_tasks(tasks)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              **({} if add_bos is None or str(add_bos).strip().lower() == "auto" else {"add_bos_token": resolved}))
    output = lm_eval.simple_evaluate(model=lm, tasks=[TASKS[n].lm_eval_name for n in names], num_fewshot=0, limit=limit)
    results = {}
    for name in names:
        raw = output["results"][TASKS[name].lm_eval_name]
        entry = {"n": output.get("n-samples", {}).get(TASKS[name].lm_eval_name, {}).get("effective"), "chance": TASKS[name].chance,
                 "add_bos": resolved}
        for metric in TASKS[name].metrics:
            entry[metric] = raw.get(f"{metric},none")
            entry[f"{metric}_stderr"] = raw.get(f"{metric}_stderr,none")
        results[name] = entry
    return results
