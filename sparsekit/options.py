"""One convention for a method's options: dataclass fields declared with `option()`.

Pruners (sparsekit.pruners) and allocations (sparsekit.allocation) are dataclasses whose fields are their
options; the CLI turns each field into `--<name>-<field>` (underscores as dashes; or `flag`) plus its aliases,
parsed with `parse` (default: the type of the default; a bool default becomes --x / --no-x).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable


def option(default: Any, help: str, *, aliases: tuple[str, ...] = (), parse: Callable[[str], Any] | None = None,
           flag: str | None = None):
    """A dataclass field that is also a command-line option. `aliases` are extra flags (e.g. a paper's own
    spelling, '--initial_method'); `parse` turns the flag's text into the value (e.g. int, json.loads); `flag`
    names the flag's last part when it is not the field's name (OWL's `lam` is --owl-lambda)."""
    metadata: dict[str, Any] = {"help": help, "aliases": tuple(aliases)}
    if parse is not None:
        metadata["parse"] = parse
    if flag is not None:
        metadata["flag"] = flag
    if isinstance(default, (dict, list, set)):  # mutable: each instance gets its own copy
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
