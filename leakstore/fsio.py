"""Writing files so that a full disk, a read-only folder or a vanished mount loses nothing.

Every file leakstore writes outside the Zarr store goes through `atomic_path` (a temporary name in
the same folder, renamed over the target when complete), so a file is whole or absent, never half
written; Zarr chunk files are written the same way by zarr itself (>= 3.1.3). `write_error` turns
the OSError a write raised into the one line the CLI prints.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# the OS errors of writing: a full disk or quota, a read-only filesystem, no permission, a failing
# device, a network mount that went away
WRITE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
    errno.EFBIG,
    errno.ENOTCONN,
    errno.ESTALE,
    errno.ENODEV,
    errno.ENXIO,
}
_FIX = {
    errno.ENOSPC: "free space",
    errno.EDQUOT: "free space (the quota is full)",
    errno.EFBIG: "free space",
    errno.EROFS: "make it writable",
    errno.EACCES: "give write permission",
    errno.EPERM: "give write permission",
}


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without an error it replaces `path`,
    otherwise it is removed and `path` is left as it was. An OSError of the write names `path` (not
    the temporary name, and not nothing, as file.write and pyarrow leave it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with naming(path, instead_of=str(tmp)):
            yield tmp
            os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


@contextmanager
def naming(path: str | Path, instead_of: str = "") -> Iterator[None]:
    """An OSError raised inside without a file name (a full disk seen by file.write, pyarrow's writer),
    or naming `instead_of`, is raised again naming `path`, with a plain reason."""
    try:
        yield
    except OSError as e:
        if e.filename and str(e.filename) != instead_of:
            raise
        why = os.strerror(e.errno) if e.errno else (e.strerror or str(e))
        raise OSError(e.errno, why, str(path)) from e


def save_safetensors(save, tensors: dict, path: str | Path, **kw) -> None:
    """`save(tensors, filename, **kw)` (safetensors' numpy or torch save_file) into `path`, whole or
    absent. safetensors reports a failed write as its own error with "(os error N)" in the text: it
    is raised as the OSError it was, naming the file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            save(tensors, str(tmp), **kw)
        except OSError:
            raise
        except Exception as e:
            m = re.search(r"os error (\d+)", str(e))
            if not m:
                raise
            code = int(m.group(1))
            raise OSError(code, os.strerror(code), str(path)) from e


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj, **kw) -> None:
    write_text(path, json.dumps(obj, **kw))


def is_write_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in WRITE_ERRNOS


def write_error(e: OSError, kept: str = "", rerun: str = "rerun the same command") -> str:
    """One line: what could not be written, why, what is kept, and what to do."""
    where = e.filename or "a file"
    why = e.strerror or str(e)
    fix = _FIX.get(e.errno, "fix that")
    kept = f" {kept}" if kept else ""
    return f"could not write {where}: {why}.{kept} {fix[0].upper() + fix[1:]} and {rerun}."


def free_space_note(folder: str | Path, need_bytes: int, what: str) -> str | None:
    """A line when the filesystem holding `folder` looks too small for `need_bytes`, else None."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= need_bytes:
        return None
    return (
        f"note: {what} needs up to {_size(need_bytes)} and the disk holding {folder} has {_size(free)} free: the "
        "run will stop when it is full (nothing is lost; free space and rerun the same command to finish)"
    )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
