"""`--save`, `sparsify --out`, save_pruned and save_pretrained never lose user files."""
import os
import threading

import pytest

import sparsekit
from sparsekit._io import OUTPUT_MARKER, atomic_dir, check_output_dir, commit_dir, output_dir
from sparsekit.cli import main
from tests.helpers import tiny_llama
from tests.reliability.conftest import prune_args


def user_files(root):
    (root / "sub").mkdir(parents=True)
    (root / "thesis.txt").write_text("three years of work")
    (root / "sub" / "data.csv").write_text("1,2,3")


def assert_user_files(root):
    assert (root / "thesis.txt").read_text() == "three years of work"
    assert (root / "sub" / "data.csv").read_text() == "1,2,3"


def test_save_refuses_a_user_directory(workspace, no_model_load, capsys):
    user_files(workspace / "precious")
    assert main(prune_args(workspace, "--save", str(workspace / "precious"))) == 2
    err = capsys.readouterr().err
    assert "not written by sparsekit" in err and "--overwrite" in err and "Traceback" not in err
    assert_user_files(workspace / "precious")


@pytest.mark.parametrize("target, named", [
    (lambda ws: ws, "the model"),                     # parent of --model and of the calibration file
    (lambda ws: ws / "model", "the model"),
    (lambda ws: ws / "cwd", "the working directory"),
    (lambda ws: ws / "run", "the checkpoint directory"),
])
def test_save_never_replaces_its_inputs_even_with_overwrite(workspace, no_model_load, capsys, target, named):
    (workspace / "run").mkdir()
    before = sorted(p.relative_to(workspace) for p in workspace.rglob("*"))
    rc = main(prune_args(workspace, "--save", str(target(workspace)), "--overwrite", "--checkpoint-dir", str(workspace / "run")))
    assert rc == 2
    assert named in capsys.readouterr().err
    assert sorted(p.relative_to(workspace) for p in workspace.rglob("*")) == before


def test_save_refuses_a_directory_holding_the_calibration_file(workspace, no_model_load, capsys):
    (workspace / "texts").mkdir()
    (workspace / "calib.txt").rename(workspace / "texts" / "calib.txt")
    args = prune_args(workspace, "--save", str(workspace / "texts"), "--overwrite")
    args[args.index("--calib") + 1] = str(workspace / "texts" / "calib.txt")
    assert main(args) == 2
    assert "the calibration file" in capsys.readouterr().err
    assert (workspace / "texts" / "calib.txt").exists()


def test_unwritable_save_location_fails_before_loading(workspace, no_model_load, capsys):
    (workspace / "a_file").write_text("x")
    assert main(prune_args(workspace, "--save", str(workspace / "a_file" / "out"))) == 2
    assert "not a directory" in capsys.readouterr().err


def test_overwrite_replaces_a_user_directory_and_previous_outputs_are_replaced_without_it(workspace):
    out = workspace / "out"
    user_files(out)
    assert main(prune_args(workspace, "--save", str(out), "--overwrite")) == 0
    assert (out / "config.json").exists() and (out / OUTPUT_MARKER).exists() and not (out / "thesis.txt").exists()
    assert main(prune_args(workspace, "--save", str(out))) == 0  # a sparsekit output: replaced without --overwrite
    assert sorted(p.name for p in workspace.iterdir() if p.name.startswith(".")) == []


def test_sparsify_out_refuses_a_user_directory(workspace, no_model_load, capsys):
    user_files(workspace / "precious")
    assert main(["sparsify", "--model", str(workspace / "model"), "--out", str(workspace / "precious")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert_user_files(workspace / "precious")


def test_library_saves_refuse_user_directories(tmp_path):
    user_files(tmp_path / "precious")
    model = tiny_llama()
    with pytest.raises(ValueError, match="not written by sparsekit"):
        sparsekit.save_pruned(model, None, tmp_path / "precious")
    with pytest.raises(ValueError, match="not written by sparsekit"):
        sparsekit.save_pretrained(model, tmp_path / "precious", format="dense")
    assert_user_files(tmp_path / "precious")
    sparsekit.save_pruned(model, None, tmp_path / "precious", overwrite=True)
    assert (tmp_path / "precious" / "model.safetensors").exists()


def test_library_save_refuses_the_model_directory(tmp_path):
    from transformers import AutoModelForCausalLM

    tiny_llama().save_pretrained(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    for target in (tmp_path / "m", tmp_path):
        with pytest.raises(ValueError, match="the model"):
            sparsekit.save_pruned(model, None, target, overwrite=True)
    assert (tmp_path / "m" / "model.safetensors").exists()


def test_stale_temp_and_old_directories_are_cleaned(tmp_path):
    (tmp_path / ".out.tmp-dead1").mkdir()
    (tmp_path / ".out.old-dead2").mkdir()
    (tmp_path / ".other.tmp-keep").mkdir()
    with output_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-keep", "out"]


def test_outputs_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with output_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
            (tmp / "private").write_text("x")
            os.chmod(tmp / "private", 0o600)  # as a writer using mkstemp leaves it
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "private").stat().st_mode & 0o777 == 0o644


def test_commit_dir_replaces_a_file_and_keeps_user_data_on_failure(tmp_path):
    (tmp_path / "x").write_text("a file")
    tmp = atomic_dir(tmp_path / "x")
    (tmp / "f").write_text("dir")
    commit_dir(tmp, tmp_path / "x")
    assert (tmp_path / "x" / "f").read_text() == "dir"
    with pytest.raises(ValueError):
        check_output_dir(tmp_path / "x" / "f")  # a file, no overwrite


def test_concurrent_saves_to_one_path_never_expose_a_missing_or_partial_output(tmp_path):
    out, stop, seen, errors = tmp_path / "out", threading.Event(), [], []

    def writer(tag):
        try:
            for i in range(15):
                with output_dir(out) as tmp:
                    (tmp / "a").write_text(f"{tag}{i}")
                    (tmp / "b").write_text(f"{tag}{i}")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader():  # a directory fd pins one version of the output; both files must come from the same write
        while not stop.is_set():
            try:
                fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                seen.append(False)
                continue
            try:
                a, b = (open(name, opener=lambda p, f: os.open(p, f, dir_fd=fd)).read() for name in ("a", "b"))
                seen.append(a == b)
            except FileNotFoundError:  # this version was replaced and removed while being read
                pass
            finally:
                os.close(fd)

    with output_dir(out) as tmp:
        (tmp / "a").write_text("0")
        (tmp / "b").write_text("0")
    threads = [threading.Thread(target=writer, args=(t,)) for t in "xy"]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert not errors and seen and all(seen)
    assert (out / "a").read_text() in ("x14", "y14")
