"""One options convention: every pruner's and allocation's options are `option()` fields, which the CLI turns
into --<method>-<option> flags."""
import dataclasses

import pytest

from sparsekit.allocation import ALLOCATIONS, options_class
from sparsekit.cli import build_parser, method_options
from sparsekit.options import option
from sparsekit.pruners import PRUNERS, make_pruner

OWNERS = {**PRUNERS, **{name: options_class(name) for name in ALLOCATIONS}}


@pytest.mark.parametrize("name", sorted(OWNERS))
def test_every_option_is_declared_with_help(name):
    for field in dataclasses.fields(OWNERS[name]):
        assert field.metadata.get("help"), f"{name}.{field.name} has no help: declare it with option(default, help)"


def test_mutable_defaults_are_copied_per_instance():
    @dataclasses.dataclass
    class Options:
        table: dict = option({"a": 1}, "a table")

    first, second = Options(), Options()
    first.table["b"] = 2
    assert second.table == {"a": 1}


def test_allocation_options_are_flags_like_the_pruners():
    args = build_parser().parse_args(["prune", "--allocation", "owl", "--owl-m", "4", "--owl-lambda", "0.1",
                                      "--sparsegpt-blocksize", "64"])
    assert method_options(args, "owl") == {"m": 4.0, "lam": 0.1}
    assert method_options(args, "sparsegpt") == {"blocksize": 64}
    assert make_pruner("sparsegpt", **method_options(args, "sparsegpt")).blocksize == 64


@pytest.mark.parametrize("method, options, message", [
    ("wanda", {"blocksize": 8}, "has no option"),
    ("gptq", {}, "unknown pruning method"),
])
def test_make_pruner_names_the_problem(method, options, message):
    with pytest.raises(ValueError, match=message):
        make_pruner(method, **options)
