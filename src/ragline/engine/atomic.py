"""Write files and directories so that readers see the old version or the new
one, never a half-written one, and a failure leaves nothing behind.

A directory is built in a temporary folder beside its place and swapped in
whole. Three rules keep a user's files safe:

- only an empty folder, or one that ragline wrote (it holds the marker file
  ``.ragline-output``, or the caller recognises it, e.g. an index's
  ``meta.json``), is ever replaced; anything else is refused;
- the output may not be, contain or sit inside one of the inputs;
- a build killed before it finished leaves only its temporary folder, and the
  next build of the same place removes it: every temporary folder is locked
  (``flock``) by the process building it, so one whose lock can be taken
  belongs to a process that is gone — unless the next build asks to resume
  it (``atomic_directory(resume=...)``) and carries on where it stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import functools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ragline.engine.errors import InputError

log = logging.getLogger(__name__)

MARKER = ".ragline-output"


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator:
    """Open a temporary file beside ``path``; it replaces ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (made if absent) for the
    block: one process at a time prepares what the lock guards."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_directory(path: str | Path, kind: str = "output",
                     recognise: Callable[[Path], bool] | None = None,
                     resume: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``. On success it takes
    the place of ``path`` in one step; on failure or interruption it is deleted
    and ``path`` is untouched. ``kind`` names what is written, for messages;
    ``recognise(path)`` says whether an existing folder is one of ours that
    predates the marker file.

    With ``resume``, the temporary folder of an earlier write of ``path`` whose
    process is gone (the newest, if several) is yielded instead, as that write
    left it, when ``resume(folder)`` accepts it; when it does not, the write
    starts empty as usual. ``resume`` may raise to refuse the folder: nothing
    is removed then, so a later attempt can still take it up."""
    path = Path(path).absolute()
    check_replaceable(path, kind, recognise)
    path.parent.mkdir(parents=True, exist_ok=True)
    claimed = _claim_abandoned(path, resume) if resume is not None else None
    remove_stale_temporaries(path)  # passes over the claimed folder: it is locked
    tmp, lock = claimed or _locked_temporary(path, "building")
    try:
        yield tmp
        (tmp / MARKER).write_text(f"{kind}\n", encoding="utf-8")
        os.chmod(tmp, 0o777 & ~_umask())
        check_replaceable(path, kind, recognise)  # again: something may have appeared meanwhile
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock)


def refuse_overlap(output: str | Path, *inputs: str | Path | None, option: str = "--out") -> None:
    """An output that is, contains or sits inside an input would destroy it
    (or read itself as input): refuse it."""
    out = Path(output).resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if out == source or out in source.parents or source in out.parents:
            raise InputError(f"{option} {output} overlaps the input {given}: the output may not be, "
                             "contain or sit inside its input; choose another place")


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary folders of builds of ``path`` whose process is gone;
    a previous folder stranded by a crash between two renames goes back first."""
    for creating in path.parent.glob(f".{path.name}.creating-*"):
        # Killed in the instant between making and naming a folder: nothing in it.
        if time.time() - creating.stat().st_mtime > 60:
            shutil.rmtree(creating, ignore_errors=True)
    for candidate in sorted(path.parent.glob(f".{path.name}.old-*")) + sorted(path.parent.glob(f".{path.name}.building-*")):
        if not candidate.is_dir():
            continue
        try:
            fd = _lock_if_abandoned(candidate)
        except OSError:  # cannot be locked at all: left as it is
            continue
        if fd is None:
            continue  # a live build holds it
        try:
            stranded = candidate / "previous"
            if not path.exists() and stranded.is_dir():
                log.warning("restoring %s from %s, left by an interrupted build", path, stranded)
                os.replace(stranded, path)
            log.info("removing %s, left by an interrupted build", candidate)
            shutil.rmtree(candidate, ignore_errors=True)
        finally:
            os.close(fd)


def _claim_abandoned(path: Path, accept: Callable[[Path], bool]) -> tuple[Path, int] | None:
    """The newest temporary folder of ``path`` whose process is gone and that
    ``accept`` takes, locked by this process; or None."""
    candidates = [p for p in path.parent.glob(f".{path.name}.building-*") if p.is_dir()]
    for candidate in sorted(candidates, key=lambda p: p.stat().st_mtime_ns, reverse=True):
        lock = _lock_if_abandoned(candidate)
        if lock is None:
            continue  # a live build holds it
        try:
            accepted = accept(candidate)
        except BaseException:
            os.close(lock)
            raise
        if accepted:
            log.info("resuming the interrupted build in %s", candidate)
            return candidate, lock
        os.close(lock)
    return None


def _lock_if_abandoned(folder: Path) -> int | None:
    """A descriptor of ``folder`` holding its exclusive lock, or None when it
    cannot be opened or a live build holds the lock (its builder locks it for
    as long as it runs). Other lock errors are raised, the folder closed."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_replaceable(path: Path, kind: str, recognise: Callable[[Path], bool] | None = None) -> None:
    """Refuse (``InputError``) a ``path`` that ``atomic_directory`` would not
    replace; commands that work long before writing call it first."""
    path = Path(path).absolute()
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        if (path / MARKER).is_file() or (recognise is not None and recognise(path)) or not any(path.iterdir()):
            return
        raise InputError(f"{path} exists and is not {_a(kind)} ragline wrote; refusing to replace it "
                         "(remove it yourself, or choose another place)")
    raise InputError(f"{path} exists and is not a folder; refusing to replace it with {_a(kind)}")


def _a(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _locked_temporary(path: Path, kind: str) -> tuple[Path, int]:
    """A new folder ``.NAME.<kind>-*`` beside ``path``, already locked when it
    gets that name (it is made and locked as ``.NAME.creating-*`` first), so a
    concurrent clean-up never takes it for an abandoned one."""
    creating = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.creating-"))
    lock = _lock_directory(creating)
    final = creating.with_name(creating.name.replace(".creating-", f".{kind}-", 1))
    os.replace(creating, final)
    return final, lock


def _lock_directory(directory: Path) -> int:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _swap_into_place(tmp: Path, path: Path) -> None:
    """``tmp`` becomes ``path``. Where the kernel can exchange two names in one
    step (Linux ``renameat2``), there is no moment without a folder at
    ``path``; the previous one ends up at ``tmp`` and is removed."""
    if not path.exists():
        os.replace(tmp, path)
        return
    if _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    # Two renames: a crash between them leaves the previous folder beside
    # ``path`` under ``.NAME.old-*``, intact.
    old, lock = _locked_temporary(path, "old")
    try:
        os.replace(path, old / "previous")
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        os.close(lock)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


@functools.cache
def _renameat2():
    """libc's renameat2, looked up once (find_library runs ldconfig), or None."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    return getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None)


def _umask() -> int:
    """The process umask, read without changing it (Linux), or by the classic
    set-and-restore elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o22)
    os.umask(mask)
    return mask
