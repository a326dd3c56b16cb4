"""--preset quality|fast: resolution per pattern and sparsity, explicit settings win, bad names fail clearly."""
import json

import pytest

from sparsekit import presets
from sparsekit.cli import build_parser
from sparsekit.presets import PRESETS, Recipe, apply_to_cli_args, preset_config, resolve_preset
from sparsekit.pruners import PRUNERS, make_pruner


def test_every_recipe_builds_its_pruner():
    for name, by_pattern in PRESETS.items():
        for recipes in by_pattern.values():
            for recipe in recipes:
                assert recipe.method in PRUNERS, (name, recipe)
                make_pruner(recipe.method, **recipe.method_options)  # options the method accepts


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
def test_resolution_by_pattern(pattern):
    kind = presets.UNSTRUCTURED if pattern == "unstructured" else presets.NM
    for name in PRESETS:
        assert resolve_preset(name, pattern, 0.5) == PRESETS[name][kind][0]
    config = preset_config("fast", sparsity=None if ":" in pattern else 0.6, pattern=pattern)
    assert (config.method, config.method_options, config.pattern) == ("admm", {}, pattern)
    quality = preset_config("quality", sparsity=None if ":" in pattern else 0.6, pattern=pattern)
    assert (quality.method, quality.permute) == ("alps", pattern != "unstructured")  # N:M along a channel permutation


def test_unstructured_recipe_changes_with_sparsity(monkeypatch):
    low, high = Recipe("wanda"), Recipe("sparsegpt", min_sparsity=0.65)
    monkeypatch.setitem(PRESETS, "test", {presets.UNSTRUCTURED: (low, high), presets.NM: (low,)})
    assert resolve_preset("test", "unstructured", 0.5) is low
    assert resolve_preset("test", "unstructured", 0.65) is high
    assert resolve_preset("test", "unstructured", 0.8) is high
    assert resolve_preset("test", "2:4") is low
    assert preset_config("test", sparsity={"re:.*": 0.8}).method == "wanda"  # a per-layer map: the first recipe


@pytest.fixture
def with_options(monkeypatch):
    recipe = Recipe("sparsegpt", {"update": "alps"})
    monkeypatch.setitem(PRESETS, "opts", {presets.UNSTRUCTURED: (recipe,), presets.NM: (recipe,)})


def test_explicit_settings_win(with_options):
    assert preset_config("opts").method_options == {"update": "alps"}
    assert preset_config("opts", method_options={"update": "admm"}).method_options == {"update": "admm"}
    assert preset_config("opts", method_options={"blocksize": 64}).method_options == {"update": "alps", "blocksize": 64}
    other = preset_config("opts", method="wanda")
    assert (other.method, other.method_options) == ("wanda", {})  # the preset's options belong to its method
    assert preset_config("quality", allocation="owl", sparsity=0.7).allocation == "owl"
    assert preset_config("quality", batch_size=2).batch_size == 2


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown preset 'best'; choose one of \['fast', 'quality'\]"):
        resolve_preset("best")
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("best")


def _cli(*flags):
    args = build_parser().parse_args(["prune", "--model", "m", *flags])
    apply_to_cli_args(args)
    return args


def test_cli_flag_fills_unset_flags_only(with_options):
    assert (_cli("--preset", "fast", "--pattern", "2:4").method, _cli("--preset", "quality").method) == ("admm", "alps")
    args = _cli("--preset", "quality", "--sparsity", "0.7", "--alps-cg-iters", "20")
    assert (args.method, args.opt__alps__cg_iters, args.permute) == ("alps", 20, False)
    assert _cli("--preset", "quality", "--pattern", "2:4").permute
    args = build_parser().parse_args(["prune", "--model", "m", "--pattern", "2:4"])
    args.preset = "opts"  # a preset with options (the registered ones have none today)
    apply_to_cli_args(args)
    assert (args.method, args.update) == ("sparsegpt", "alps")
    args = build_parser().parse_args(["prune", "--model", "m", "--update", "none"])
    args.preset = "opts"
    apply_to_cli_args(args)
    assert args.update == "none"
    args = build_parser().parse_args(["prune", "--model", "m", "--method", "wanda"])
    args.preset = "opts"
    apply_to_cli_args(args)
    assert (args.method, args.update) == ("wanda", None)


def test_cli_choices_are_the_presets(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["prune", "--model", "m", "--preset", "best"])
    assert "invalid choice: 'best'" in capsys.readouterr().err
    action = next(a for a in parser._subparsers._group_actions[0].choices["prune"]._actions if a.dest == "preset")
    assert sorted(action.choices) == presets.preset_names()


def test_cli_prune_with_a_preset(tmp_path):
    from sparsekit.cli import main
    from tests.helpers import save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path / "model")
    (tmp_path / "calib.txt").write_text(" ".join(f"The river {i} flows past the old mill." for i in range(300)))
    summary = tmp_path / "summary.json"
    rc = main(["prune", "--model", str(tmp_path / "model"), "--nsamples", "4", "--seqlen", "32", "--device", "cpu",
               "--calib", str(tmp_path / "calib.txt"), "--preset", "fast", "--pattern", "2:4", "--json", str(summary)])
    assert rc == 0
    recorded = json.loads(summary.read_text())
    assert recorded["method"] == "admm" and recorded["sparsity_reached"] == pytest.approx(0.5)


def test_explicit_no_permute_and_another_method_drop_the_recipes_permutation():
    assert _cli("--preset", "quality", "--pattern", "2:4").permute is True
    assert _cli("--preset", "quality", "--pattern", "2:4", "--no-permute").permute is False
    config = preset_config("quality", sparsity=None, pattern="2:4", method="wanda")
    assert (config.method, config.permute, config.allocation) == ("wanda", False, None)
    assert preset_config("quality", sparsity=None, pattern="2:4").permute
