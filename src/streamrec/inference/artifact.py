"""The serving artifact: one self-describing directory, written atomically, verified on load.

Layout (every file listed with its sha256 in ``manifest.json``)::

    manifest.json        format version, library versions, model constructor arguments,
                         dimension, metric, normalisation, index factory and search
                         parameter, measured recall, feature vocabularies, checksums
    query_tower.pt       query-tower state dict (torch.load(weights_only=True))
    item_tower.pt        item-tower content path (embeds new titles; no id embedding)
    item_vectors.npy     [n_items, d] float32, row i = FAISS id i
    index.faiss          the FAISS index (inner product)
    items.parquet        row i: item_id (the id map), metadata, training popularity
    recall_latency.png   recall@k vs latency over the search-parameter sweep

Nothing here unpickles code: JSON, numpy ``.npy`` without pickle, parquet, FAISS's own
format and ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

FORMAT_NAME = "streamrec-retrieval"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# What Recommender.load reads: each must be listed with its checksum (recall_latency.png is not read).
SERVED_FILES = ("query_tower.pt", "item_tower.pt", "item_vectors.npy", "index.faiss", "items.parquet")
PLOT = "recall_latency.png"
log = logging.getLogger(__name__)


class ArtifactError(RuntimeError):
    """A missing, corrupted or incompatible artifact file (the message names the file)."""


def sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_artifact(path: str | Path, write_files: Callable[[Path], dict[str, Any]],
                   overwrite: bool = True) -> dict[str, Any]:
    """Create the artifact directory ``path`` atomically.

    ``write_files(tmp)`` writes every file into the temporary directory ``tmp`` and returns
    the manifest (without ``files``); checksums are added here. The directory appears under
    ``path`` only when complete: a failed build leaves any previous artifact untouched.
    An existing ``path`` is replaced only if it is an artifact (or an empty directory).
    Returns the manifest as written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    if path.exists() and not (path.is_dir() and (_is_artifact(path) or not any(path.iterdir()))):
        # Only a previous artifact (or an empty directory) is replaced, never other files.
        raise FileExistsError(f"{path} exists and is not a streamrec artifact (no {MANIFEST} of format "
                              f"{FORMAT_NAME!r}); it was left as it is. Write the artifact to another path, or remove "
                              "this one first.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clean_up_after_dead_writers(path)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{_writer_tag()}.", suffix=".tmp"))
    except OSError as error:
        raise OSError(f"{path}: cannot write an artifact in {path.parent} ({error.strerror or error}); "
                      "choose a writable directory.") from None
    try:
        manifest = write_files(tmp)
        files = sorted(p.name for p in tmp.iterdir() if p.name != MANIFEST)
        manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest,
                    "files": {name: sha256(tmp / name) for name in files}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False))
        _fsync_dir(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the services reading it may be other users
        renamed = not path.exists() and _rename_into_free_path(tmp, path)
        if not renamed and (path.is_symlink() or not _exchange(tmp, path)):  # a swap leaves the old bundle at `tmp`
            _replace_in_two_steps(tmp, path)
        _fsync_directory(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)  # the old bundle after a swap (nothing after a rename)
    return manifest


def _rename_into_free_path(tmp: Path, path: Path) -> bool:
    """Rename ``tmp`` to ``path``, found free; False where another writer's bundle landed there
    since (a rename cannot replace a non-empty directory), to be replaced like any previous one."""
    try:
        os.replace(tmp, path)
    except OSError as error:
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    return True


def _replace_in_two_steps(tmp: Path, path: Path) -> None:
    """Where the system cannot swap two directories in one step: the old bundle is moved
    aside first, so ``path`` is never half written. A reader may find no bundle for an
    instant, never a mixed one; a writer killed in that instant leaves the old bundle aside,
    and the next write to ``path`` puts it back before replacing it."""
    old = path.with_name(f".{path.name}.{_writer_tag()}.{time.time_ns()}.old")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)  # put the previous bundle back
        raise
    if old.is_symlink():
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)


def _is_artifact(path: Path) -> bool:
    """Whether ``path`` holds a streamrec artifact: its manifest says so, or the manifest is
    unreadable and every file is one an artifact has (a damaged bundle is rebuilt in place)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        names = {p.name for p in path.iterdir()}
        return MANIFEST in names and bool(names & set(SERVED_FILES)) and names <= {MANIFEST, *SERVED_FILES, PLOT}
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME


def _exchange(a: Path, b: Path) -> bool:
    """Swap the two paths in one atomic step (Linux's ``renameat2(RENAME_EXCHANGE)``);
    False where the system or file system cannot."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _clean_up_after_dead_writers(path: Path) -> None:
    """Remove what a writer of ``path`` killed mid-way left beside it: its temporary
    directory, or the previous bundle it had moved aside, which is put back first if
    ``path`` is gone. Only names this module writes are touched; they carry the writer's
    host and process id. A writer on this host is known dead when its process is gone (one
    in another process namespace with the same host name would look dead too); what a
    writer on another host (a shared volume) left is removed only after a day."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.([0-9a-f]{{8}})-([0-9]{{1,10}})"
                         r"\.(?:[a-z0-9_]+\.tmp|([0-9]+)\.old)")
    left = []
    for sibling in path.parent.iterdir():
        match = pattern.fullmatch(sibling.name)
        if match is None or not sibling.is_dir() or sibling.is_symlink():
            continue
        if match.group(1) == _HOST and not _alive(int(match.group(2))):
            left.append((sibling, match))
        elif match.group(1) != _HOST and time.time() - sibling.stat().st_mtime > 86_400:
            left.append((sibling, match))
    for sibling, match in sorted(left, key=lambda found: found[0].stat().st_mtime, reverse=True):  # newest first
        if match.group(3) is not None and not path.exists():
            os.replace(sibling, path)
            log.warning("%s: put back the previous artifact, which an interrupted write had left at %s",
                        path, sibling.name)
            continue
        shutil.rmtree(sibling, ignore_errors=True)


def _writer_tag() -> str:
    """This writer's part of the names beside an artifact: its host, hashed, and process id."""
    return f"{_HOST}-{os.getpid()}"


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":  # elsewhere os.kill(pid, 0) is not a probe
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; a number no process has
        return True
    return True


def read_manifest(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """The manifest of artifact ``path``, after checking format and (``verify``) checksums."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: no artifact directory here. Build one with `python scripts/build_index.py`.")
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{manifest_path}: missing; the directory is not a streamrec artifact.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{manifest_path}: corrupted ({error}); rebuild the artifact.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ArtifactError(f"{manifest_path}: format {found!r} is not {FORMAT_NAME!r}.")
    version = manifest.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:  # True == 1.0 == 1: the type too
        raise ArtifactError(
            f"{manifest_path}: format version {version!r} but this streamrec reads version {FORMAT_VERSION}; "
            "rebuild the artifact with this version's `scripts/build_index.py` or install the matching streamrec."
        )
    if verify:
        files = manifest.get("files")
        if not files or not isinstance(files, dict):
            raise ArtifactError(f"{manifest_path}: lists no files and checksums; rebuild the artifact.")
        for name in files:
            if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
                raise ArtifactError(f"{manifest_path}: file name {name!r} is not a plain name inside the artifact.")
        unlisted = [name for name in SERVED_FILES if name not in files]
        if unlisted:
            raise ArtifactError(f"{path / unlisted[0]}: not listed with a checksum in {MANIFEST}, so it cannot be "
                                "verified; rebuild the artifact.")
        for name in files:
            if not (path / name).is_file():
                raise ArtifactError(f"{path / name}: missing from the artifact (listed in {MANIFEST}).")
        # hashlib releases the GIL on large buffers: the big files hash in parallel.
        with ThreadPoolExecutor(max_workers=min(4, len(files) or 1)) as pool:
            actual = dict(zip(files, pool.map(lambda name: sha256(path / name), files)))
        for name, expected in files.items():
            if actual[name] != expected:
                raise ArtifactError(f"{path / name}: checksum mismatch (sha256 {actual[name][:12]}…, manifest says "
                                    f"{expected[:12]}…): the file was changed or corrupted; rebuild the artifact.")
    return manifest


def _fsync_dir(directory: Path) -> None:
    for file in directory.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make renames inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
