"""Shared test utilities."""
import pytest
import torch

KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    HAS_TRITON = False

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def require_cuda_extension():
    """The built `sparsekit._C`, else skip (fail when SPARSEKIT_REQUIRE_CUDA_EXT=1, as on the GPU check)."""
    import os

    from sparsekit import _ext

    reason = _ext.unavailable_reason()
    if reason:
        if os.environ.get("SPARSEKIT_REQUIRE_CUDA_EXT") == "1":
            pytest.fail(f"the CUDA extension is required here but unavailable: {reason}")
        pytest.skip(reason)
    return _ext.load()


def tiny_llama(layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=256, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                      max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(layers=2, hidden=64, heads=4, vocab=256, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, vocab_size=vocab, n_positions=512,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_opt(layers=2, hidden=64, ffn=128, heads=4, vocab=256, seed=0):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    cfg = OPTConfig(hidden_size=hidden, ffn_dim=ffn, num_hidden_layers=layers, num_attention_heads=heads,
                    vocab_size=vocab, word_embed_proj_dim=hidden, max_position_embeddings=512,
                    bos_token_id=0, eos_token_id=0, pad_token_id=1)
    return OPTForCausalLM(cfg).eval()


def byte_tokenizer():
    """A 256-token byte-level tokenizer (no merges), matching the tiny models' vocab."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=sorted(alphabet)[0])


def save_tiny_checkpoint(path, builder=None):
    """Write a tiny random model + byte tokenizer as an HF checkpoint directory."""
    model = (builder or tiny_llama)()
    model.save_pretrained(path, safe_serialization=True)
    byte_tokenizer().save_pretrained(path)
    return model


def assert_same_greedy_generation(model, twin, tok, max_new_tokens: int, pad_token_id):
    """`model` (e.g. sparsified) and its `twin` (the dense-with-zeros model) generate the same greedy tokens;
    returns (the tokenized prompt, the generated ids)."""
    prompt = tok("The capital of France is", return_tensors="pt")
    greedy = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_token_id)
    with torch.no_grad():
        expected = twin.generate(**prompt, **greedy)
        got = model.generate(**prompt, **greedy)
    assert torch.equal(got, expected), (tok.decode(got[0]), tok.decode(expected[0]))
    return prompt, got
