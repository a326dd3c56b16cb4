"""What the SmolLM2-135M end-to-end tests share: float32 (no test depends on native bf16) and one small
held-out evaluation, so each check costs seconds to a minute on a 2-core CPU."""
import functools

import torch

import sparsekit

DTYPE = torch.float32
EVAL_SEQLEN, EVAL_WINDOWS = 256, 4


def load():
    return sparsekit.load_model("smollm2-135m", dtype=DTYPE)


@functools.lru_cache(maxsize=1)
def _evaluation() -> str:
    return sparsekit.evaluation_text()


def ppl(model, tok) -> float:
    return sparsekit.perplexity(model, tok, _evaluation(), seqlen=EVAL_SEQLEN, max_windows=EVAL_WINDOWS, progress=False)


def cli_eval_args() -> list[str]:
    return ["--dtype", "float32", "--device", "cpu", "--eval", "--eval-seqlen", str(EVAL_SEQLEN),
            "--eval-windows", str(EVAL_WINDOWS)]
