"""End-to-end decode: tokens/s of a LLaMA-7B-shaped bf16 model, dense vs 2:4-sparsified.

Both sides share everything but the linear layers: random weights from one LlamaConfig, the sparse
side a copy pruned 2:4 by magnitude (no calibration needed for speed) and converted with
`sparsekit.sparsify`. Prompt P random tokens -> prefill (timed apart) -> G decode steps with a static
KV cache. Decode steps run as a captured CUDA graph ("cudagraph", default on GPU), through
torch.compile ("compile"), or eagerly; a side that cannot use the requested mode falls back, and
the other side is then re-run in the same mode so the comparison stays fair. The sides alternate
per batch size. Reported: decode tokens/s (B*G / decode seconds; median, p20, p80 over repeats),
per-token latency, prefill ms, peak GPU memory, weight bytes.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from benchmarks.common import RunContext, Skip, describe_exception, free_memory, skip_row
from benchmarks.models import LLAMA_7B, build_llama, parameter_bytes, prune_24_magnitude_
from benchmarks.timing import quantiles, synchronize
from tests.helpers import tiny_llama

BENCHMARK = "decode"
MODES = ("cudagraph", "compile", "eager")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decode")
    g.add_argument("--batch-sizes", default=None, help="comma list (default 1,8,32; quick 1,2)")
    g.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (default 128; quick 8)")
    g.add_argument("--new-tokens", type=int, default=None, help="generated tokens (default 256; quick 6)")
    g.add_argument("--decode-mode", default=None, choices=MODES, help="default: cudagraph on GPU, eager on CPU")
    g.add_argument("--decode-layers", type=int, default=None, help="decoder layers of the LLaMA-7B shape (default 32)")
    g.add_argument("--repeats", type=int, default=None, help="timed runs per side and batch size (default 5; quick 1)")


class Decoder:
    """Greedy decode with a static KV cache; one instance per (model, batch size, mode)."""

    def __init__(self, model, batch: int, prompt_len: int, new_tokens: int, mode: str, device):
        from transformers import StaticCache

        self.model, self.batch, self.prompt_len, self.new_tokens = model, batch, prompt_len, new_tokens
        self.device = torch.device(device)
        dtype = next(model.parameters()).dtype
        self.cache = StaticCache(config=model.config, max_cache_len=prompt_len + new_tokens + 1, max_batch_size=batch,
                                 device=self.device, dtype=dtype)
        self.mode = mode
        self.fallback = ""
        self._graph = None
        self._compiled = None

    @torch.no_grad()
    def _step(self, tok, pos):
        out = self.model(input_ids=tok, past_key_values=self.cache, cache_position=pos, use_cache=True)
        return out.logits[:, -1].argmax(-1, keepdim=True)

    @torch.no_grad()
    def prefill(self, prompt):
        """Restart at position 0 (the cache is reset in place, keeping the addresses a graph captured)."""
        self.cache.reset()
        pos = torch.arange(self.prompt_len, device=self.device)
        out = self.model(input_ids=prompt, past_key_values=self.cache, cache_position=pos, use_cache=True)
        return out.logits[:, -1].argmax(-1, keepdim=True)

    @torch.no_grad()
    def prepare(self, prompt) -> str:
        """Warm up and capture / compile the decode step; returns the mode actually used."""
        first = self.prefill(prompt)
        if self.mode == "cudagraph":
            try:
                self._capture(first)
                return self.mode
            except Exception as exc:
                self.fallback = f"CUDA graph capture failed ({describe_exception(exc, 200)})"
                self.mode = "eager"
        if self.mode == "compile":
            try:
                mode = "reduce-overhead" if self.device.type == "cuda" else "default"
                self._compiled = torch.compile(self._step, mode=mode, dynamic=False)
                tok = first
                for i in range(3):
                    tok = self._compiled(tok, torch.tensor([self.prompt_len + i], device=self.device))
                synchronize(self.device)
                return self.mode
            except Exception as exc:
                self.fallback = f"torch.compile failed ({describe_exception(exc, 200)})"
                self.mode = "eager"
                self._compiled = None
        tok = first
        for i in range(2):
            tok = self._step(tok, torch.tensor([self.prompt_len + i], device=self.device))
        return self.mode

    def _capture(self, first):
        if self.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        self._tok = first.clone()
        self._pos = torch.tensor([self.prompt_len], device=self.device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up (autotuning, lazy init) before capture
                self._step(self._tok, self._pos)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._out = self._step(self._tok, self._pos)
        self._graph = graph

    @torch.no_grad()
    def generate(self, prompt) -> tuple[float, float, torch.Tensor]:
        """(prefill seconds, decode seconds, generated tokens (B, G))."""
        synchronize(self.device)
        t0 = time.perf_counter()
        tok = self.prefill(prompt)
        synchronize(self.device)
        t1 = time.perf_counter()
        out = [tok]
        for i in range(self.new_tokens - 1):
            position = self.prompt_len + i
            if self._graph is not None:
                self._tok.copy_(tok)
                self._pos.fill_(position)
                self._graph.replay()
                tok = self._out.clone()
            else:
                step = self._compiled or self._step
                tok = step(tok, torch.tensor([position], device=self.device))
                if self._compiled is not None:
                    tok = tok.clone()  # reduce-overhead outputs are overwritten by the next replay
            out.append(tok)
        synchronize(self.device)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, torch.cat(out, dim=1)


def _measure(ctx, model, batch, prompt, new_tokens, mode, repeats):
    """Decode `repeats` times; peak memory = this model's weights + the run's peak working memory
    (KV cache, activations, graph pool) above what was allocated before, so the other side's
    resident model is not counted."""
    if ctx.is_cuda:
        free_memory(ctx.device)
        torch.cuda.reset_peak_memory_stats(ctx.device)
        base = torch.cuda.memory_allocated(ctx.device)
    decoder = Decoder(model, batch, prompt.shape[1], new_tokens, mode, ctx.device)
    used = decoder.prepare(prompt)
    decoder.generate(prompt)  # one untimed run
    runs = [decoder.generate(prompt) for _ in range(repeats)]
    peak = parameter_bytes(model) + torch.cuda.max_memory_allocated(ctx.device) - base if ctx.is_cuda else None
    steps = new_tokens - 1
    q = quantiles([batch * steps / decode for _, decode, _ in runs])
    prefill_ms = sorted(p for p, _, _ in runs)[len(runs) // 2] * 1e3
    decode_s = sorted(d for _, d, _ in runs)[len(runs) // 2]
    result = {"median": q[0], "p20": q[1], "p80": q[2], "mode": used, "fallback": decoder.fallback,
              "per_token_ms": decode_s / steps * 1e3, "prefill_ms": prefill_ms, "peak_memory_bytes": peak,
              "tokens": runs[0][2]}
    del decoder
    free_memory(ctx.device)
    return result


def _sparse_copy(ctx, dense):
    from sparsekit import sparsify

    model = copy.deepcopy(dense)
    pruned = prune_24_magnitude_(model)
    converted = len(sparsify(model).swapped)
    if converted == 0:
        raise Skip(f"sparsekit.sparsify converted none of the {pruned} pruned linear layers to SparseLinear24")
    return model, {"pruned_linears": pruned, "sparse24_modules": converted}


def run(ctx: RunContext, args) -> None:
    quick = ctx.quick
    batches = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else ([1, 2] if quick else [1, 8, 32])
    prompt_len = args.prompt_len or (8 if quick else 128)
    new_tokens = args.new_tokens or (6 if quick else 256)
    repeats = args.repeats or (1 if quick else 5)
    mode = args.decode_mode or ("cudagraph" if ctx.is_cuda else "eager")
    label = "tiny-llama" if quick else "llama7b-shape"
    layers = args.decode_layers
    if layers:
        label += f"-{layers}layers"
    dtype = torch.bfloat16
    ctx.log(f"decode: building {label} (random weights, bf16) on {ctx.device}")
    if quick:
        dense = tiny_llama(**({"layers": layers} if layers else {})).to(ctx.device, dtype).requires_grad_(False)
    else:
        dense = build_llama(LLAMA_7B, device=ctx.device, dtype=dtype, layers=layers)
    sparse_info, sparse, sparse_missing = {}, None, ("skipped", "no sparse model")
    try:
        sparse, sparse_info = _sparse_copy(ctx, dense)
    except Skip as exc:
        sparse_missing = ("skipped", str(exc))
    except Exception as exc:
        sparse_missing = ("error", f"building the sparse model failed: {describe_exception(exc)}")
    done = ctx.done(BENCHMARK)
    gen = torch.Generator(device="cpu").manual_seed(0)
    for batch in batches:
        case = f"{label}/bf16/B={batch}/P={prompt_len}/G={new_tokens}"
        params = {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "model": label,
                  "layers": dense.config.num_hidden_layers, "dtype": "bfloat16", "requested_mode": mode,
                  "repeats": repeats}
        if {(BENCHMARK, case, "dense"), (BENCHMARK, case, "sparse24")} <= done:
            continue
        prompt = torch.randint(0, dense.config.vocab_size, (batch, prompt_len), generator=gen).to(ctx.device)
        rows = []
        try:
            dense_result = _measure(ctx, dense, batch, prompt, new_tokens, mode, repeats)
            sparse_result = None
            if sparse is not None:
                sparse_result = _measure(ctx, sparse, batch, prompt, new_tokens, mode, repeats)
                if sparse_result["mode"] != dense_result["mode"]:  # keep the comparison fair
                    dense_result = _measure(ctx, dense, batch, prompt, new_tokens, sparse_result["mode"], repeats)
        except Exception as exc:  # OOM or a failing side: record it, go on with the next batch size
            ctx.save(BENCHMARK, [skip_row(ctx, BENCHMARK, case, p, describe_exception(exc), status="error",
                                          metric="decode throughput", unit="tokens/s", params=params) for p in ("dense", "sparse24")])
            free_memory(ctx.device)
            continue
        for provider, result, info in (("dense", dense_result, {"weight_bytes": parameter_bytes(dense)}),
                                       ("sparse24", sparse_result, {**sparse_info, "weight_bytes": parameter_bytes(sparse) if sparse is not None else None})):
            if result is None:
                status, reason = sparse_missing
                rows.append(skip_row(ctx, BENCHMARK, case, provider, reason, status=status,
                                     metric="decode throughput", unit="tokens/s", params=params))
                continue
            derived = {k: result[k] for k in ("mode", "fallback", "per_token_ms", "prefill_ms", "peak_memory_bytes")}
            derived.update(info)
            rows.append(ctx.row(benchmark=BENCHMARK, case=case, provider=provider, metric="decode throughput",
                                unit="tokens/s", median=result["median"], p20=result["p20"], p80=result["p80"],
                                params=params, derived=derived))
        if sparse_result is not None:
            rows[1].derived["speedup_vs_dense"] = sparse_result["median"] / dense_result["median"]
        ctx.log(f"{case}: " + ", ".join(f"{r.provider} {r.median:.1f} tok/s ({r.derived.get('mode')})" for r in rows if r.status == "ok"))
        ctx.save(BENCHMARK, rows)
    del dense, sparse
    free_memory(ctx.device)
