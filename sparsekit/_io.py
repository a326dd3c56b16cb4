"""The one home of durable writes: atomic files and directories, fsync, advisory locks, output-target safety.

Every file sparsekit writes goes to a temp name beside its final path, is fsynced, renamed into
place, and its directory fsynced, so a reader (or a run killed at any instruction) sees either the
old content or the new, never a mix. Output directories are built in a `.<name>.tmp-*` directory
and swapped in; the old output is moved to `.<name>.old-*` and removed only after the new one is in
place. Leftovers of killed writers are removed by the next writer of the same target, under its lock.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

# A directory written by sparsekit carries this file; only such directories are replaced without --overwrite.
OUTPUT_MARKER = ".sparsekit-output"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root) -> None:
    """fsync every file and directory under `root` (bottom-up), then `root` itself."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


@contextlib.contextmanager
def _temp_beside(path: Path):
    """A temp file path next to `path` (same filesystem), removed if the block fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _publish(tmp: Path, path: Path) -> None:
    """fsync `tmp`, give it the mode of a normally created file, rename it over `path`, fsync the directory."""
    if path.exists():
        os.chmod(tmp, path.stat().st_mode & 0o7777)
    else:
        os.chmod(tmp, 0o666 & ~_umask())
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_bytes(path, data: bytes) -> Path:
    path = Path(path)
    with _temp_beside(path) as tmp:
        tmp.write_bytes(data)
        _publish(tmp, path)
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, data, *, indent: int | None = 2, sort_keys: bool = False, default=None) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys, default=default) + "\n")


def atomic_save_safetensors(tensors: dict, path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    with _temp_beside(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        _publish(tmp, path)
    return path


def clean_stale(final) -> list[Path]:
    """Remove `.<name>.tmp-*` / `.<name>.old-*` leftovers of killed writers of `final`; call it under final's lock."""
    final = Path(final)
    removed = []
    if not final.parent.is_dir():
        return removed
    for pattern in (f".{final.name}.tmp-*", f".{final.name}.old-*"):
        for leftover in final.parent.glob(pattern):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
            removed.append(leftover)
    return removed


def atomic_dir(final) -> Path:
    """A fresh temp dir next to `final` (mode as for mkdir, not mkdtemp's 0700); pass it to `commit_dir`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _normal_modes(root: Path) -> None:
    """Files some writers create private (0600, e.g. via mkstemp) get the mode of a normally created file."""
    mode = 0o666 & ~_umask()
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path) and os.stat(path).st_mode & 0o077 == 0:
                os.chmod(path, mode)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def commit_dir(tmp, final, *, mark: bool = False) -> Path:
    """Put the completed directory `tmp` in place of `final`.

    Files are fsynced first. An existing `final` is swapped out in one step where the OS allows (readers
    never see it missing), else renamed aside; it is deleted only after the new directory is in place.
    mark=True writes the OUTPUT_MARKER that lets a later save replace this directory.
    """
    tmp, final = Path(tmp), Path(final)
    if mark:
        (tmp / OUTPUT_MARKER).write_text("written by sparsekit; a later sparsekit save may replace this directory\n")
        _normal_modes(tmp)
    fsync_tree(tmp)
    if final.exists() or final.is_symlink():
        if final.is_dir() and not final.is_symlink() and _exchange(tmp, final):
            old = tmp  # after the swap, tmp holds the old output
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.rmdir(old)
            os.replace(final, old)
            os.replace(tmp, final)
        fsync_dir(final.parent)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        os.replace(tmp, final)
        fsync_dir(final.parent)
    return final


@contextlib.contextmanager
def file_lock(path, *, what: str, wait: bool = False):
    """Exclusive advisory lock (fcntl.flock) for the block, on directory `path` itself (nothing is left
    behind) or, for a non-directory, on a lock file created there.

    wait=False raises ValueError naming `what` when another process holds it (two runs must not mix);
    wait=True blocks until it is free (e.g. a second process waiting for a shared download).
    """
    path = Path(path)
    if path.is_dir():
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise ValueError(f"{what} is in use by another sparsekit process (lock on {path}); "
                             "wait for it to finish or use a different path") from None
        yield
    finally:
        os.close(fd)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_output_dir(out, *, overwrite: bool = False, protect: dict | None = None, flag: str = "the output") -> Path:
    """Refuse an output directory whose replacement would lose user data; check it is writable.

    Always refused: `out` equal to or containing a protected path (name -> path: the model, the
    calibration file, the checkpoint directory; the working directory is always protected), or a
    non-directory at `out` without overwrite. A non-empty directory not written by sparsekit (no
    OUTPUT_MARKER) is refused unless overwrite=True. Returns the absolute path.
    """
    out = Path(os.path.abspath(os.path.expanduser(str(out))))
    guarded = {**(protect or {}), "the working directory": os.getcwd()}
    for name, path in guarded.items():
        if path is None or str(path) == "":
            continue
        resolved = Path(os.path.realpath(os.path.expanduser(str(path))))
        if _inside(resolved, Path(os.path.realpath(out))):
            raise ValueError(f"{flag} {out} would replace {name} ({path}), which is inside it; "
                             "choose a new, empty directory (e.g. a subdirectory named after the run)")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        if not overwrite:
            raise ValueError(f"{flag} {out} exists and is not a directory; choose another path or pass --overwrite to replace it")
    elif out.is_dir() and any(out.iterdir()) and not (out / OUTPUT_MARKER).is_file() and not overwrite:
        listed = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise ValueError(f"{flag} {out} is a non-empty directory not written by sparsekit (holds {listed}); "
                         "choose a new directory, or pass --overwrite (overwrite=True) to replace it and everything in it")
    _check_writable(out, flag)
    return out


def _check_writable(out: Path, flag: str) -> None:
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {out} cannot be created: {parent} is not a directory")
    try:
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=".sparsekit-probe-")
        probe.close()
    except OSError as exc:
        raise ValueError(f"{flag} {out} is not writable ({exc.strerror}: {parent}); choose a writable location") from None


@contextlib.contextmanager
def output_dir(out, *, overwrite: bool = False, protect: dict | None = None, flag: str = "the output"):
    """Write a whole output directory safely: yields a temp dir to fill; on success it replaces `out`.

    Checks `out` (check_output_dir), holds its lock for the duration, cleans leftovers of killed
    writers, commits with the marker, and removes the temp dir on failure.
    """
    out = check_output_dir(out, overwrite=overwrite, protect=protect, flag=flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the lock is on the parent directory: a second writer of `out` waits, then replaces the first's output
    with file_lock(out.parent, what=f"{flag} {out}", wait=True):
        clean_stale(out)
        # re-check under the lock: another writer may have created it meanwhile
        check_output_dir(out, overwrite=overwrite, protect=protect, flag=flag)
        tmp = atomic_dir(out)
        try:
            yield tmp
            commit_dir(tmp, out, mark=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def protected_inputs(model=None, checkpoint_dir=None, **more) -> dict:
    """The paths an output directory must never contain: the model's own directory, the run checkpoint, more."""
    paths = {}
    source = str(getattr(model, "name_or_path", "") or "")
    if source and Path(source).exists():
        paths["the model"] = source
    if checkpoint_dir:
        paths["the checkpoint directory"] = str(checkpoint_dir)
    paths.update({k: v for k, v in more.items() if v})
    return paths
