"""Whether evaluation sequences start with the tokenizer's BOS token.

lm-evaluation-harness's HFLM (since 0.4.9.2) encodes with the tokenizer's default special tokens,
so a tokenizer that prepends BOS by default (Gemma, LLaMA-2/3, Mistral, ...) has BOS in front of
every request, and a tokenizer that does not (SmolLM2, GPT-2, Qwen) has none. Models trained with a
BOS are far off without it (Gemma-class models fall to near chance), so sparsekit follows the same
convention by default ("auto") and lets the caller force it either way ("yes" / "no").
"""
from __future__ import annotations

ADD_BOS_CHOICES = ("auto", "yes", "no")
_PROBE = "Question: is the sky blue?\nAnswer: yes"


def tokenizer_adds_bos(tokenizer) -> bool:
    """True when the tokenizer's default encoding (add_special_tokens=True) starts with its BOS token."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if tokenizer is None or bos is None:
        return False
    with_special = list(tokenizer.encode(_PROBE, add_special_tokens=True))
    plain = list(tokenizer.encode(_PROBE, add_special_tokens=False))
    return len(with_special) > len(plain) and with_special[0] == bos and (not plain or plain[0] != bos)


def resolve_add_bos(tokenizer, add_bos="auto") -> bool:
    """add_bos: "auto" (the tokenizer's default, as lm-eval's HFLM), "yes"/True or "no"/False -> bool."""
    if isinstance(add_bos, str):
        key = add_bos.strip().lower()
        if key not in ADD_BOS_CHOICES:
            raise ValueError(f"add_bos must be one of {ADD_BOS_CHOICES} (or True/False), got {add_bos!r}")
        if key == "auto":
            return tokenizer_adds_bos(tokenizer)
        add_bos = key == "yes"
    elif add_bos is None:
        return tokenizer_adds_bos(tokenizer)
    elif not isinstance(add_bos, bool):
        raise TypeError(f"add_bos must be 'auto', 'yes', 'no', True or False, got {type(add_bos).__name__}")
    if add_bos and getattr(tokenizer, "bos_token_id", None) is None:
        raise ValueError("add_bos='yes' but the tokenizer has no BOS token (bos_token_id is None); "
                         "use add_bos='no' or set tokenizer.bos_token")
    return add_bos


def bos_prefix(tokenizer, add_bos: bool) -> list[int]:
    """[BOS] when add_bos (already resolved), else []."""
    return [int(tokenizer.bos_token_id)] if add_bos else []


def encode(tokenizer, text: str, add_bos: bool) -> list[int]:
    """Token ids of `text` without special tokens, after BOS when add_bos (resolved) — unless the text
    already starts with the BOS string (lm-eval's has_bos_prefix: never two BOS)."""
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    bos_text = getattr(tokenizer, "bos_token", None)
    if add_bos and not (bos_text and text.startswith(bos_text)):
        ids = bos_prefix(tokenizer, True) + ids
    return ids
