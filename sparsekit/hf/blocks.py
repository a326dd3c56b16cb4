"""Find a decoder-only model's list of transformer blocks, whatever its architecture."""
from __future__ import annotations

from torch import nn

from sparsekit.nn.conv1d import is_linear_like


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def find_blocks(model: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList]:
    """Return (qualified name, ModuleList) of the model's transformer blocks.

    With `path` (e.g. "model.layers") that attribute is used. Otherwise the ModuleList whose
    entries are of a class listed in `model._no_split_modules` wins; failing that, the
    ModuleList of identical blocks holding the most parameters.
    """
    if path:
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"the model has no submodule {path!r}; pass the dotted path of its block ModuleList") from None
        if not isinstance(blocks, nn.ModuleList):
            raise ValueError(f"{path!r} is a {type(blocks).__name__}, not an nn.ModuleList of transformer blocks")
        return path, blocks
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(child).__name__ for child in module}
        if len(kinds) != 1 or not any(is_linear_like(m) for m in module[0].modules()):
            continue
        candidates.append((kinds <= no_split, _param_count(module), name, module))
    if not candidates:
        raise ValueError(
            f"could not find the transformer block list of {type(model).__name__}: sparsekit prunes decoder-only "
            "models whose blocks are an nn.ModuleList of identical layers containing Linear layers. "
            "If yours has one, pass its path (blocks='model.layers' / --blocks model.layers)"
        )
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
    _, _, name, module = candidates[0]
    return name, module
