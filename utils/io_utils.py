"""Small I/O helpers shared by every entry point: atomic writes and JSON/JSONL reading with useful errors.

Every output of the project goes through :func:`atomic_write` so that an interrupted run never leaves a truncated
file behind: the content is written to a temporary file in the same folder and renamed over the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO

# The repository root (this file is utils/io_utils.py): outputs name paths relative to it, never a machine's own.
REPO_ROOT = Path(__file__).resolve().parent.parent


class DataFormatError(ValueError):
    """A user-supplied file is malformed; the message names the file, the record and the fix."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[TextIO]:
    """Open a temporary sibling of ``path`` for writing and rename it over ``path`` only on success.

    Args:
        path: final file path; its folder is created if needed.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        encoding: text encoding (ignored for binary mode).

    Yields:
        The open temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # mkstemp makes the file private (0600); a published output gets the permissions of an ordinary open().
    os.chmod(tmp, 0o666 & ~_current_umask())
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` (UTF-8)."""
    with atomic_write(path) as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Atomically write one JSON object per line; returns the number of records."""
    count = 0
    with atomic_write(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False))
            handle.write("\n")
            count += 1
    return count


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file.

    Raises:
        FileNotFoundError: when the file is missing.
        DataFormatError: on invalid JSON, with line and column.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file (blank lines are skipped).

    Raises:
        FileNotFoundError: when the file is missing.
        DataFormatError: on an invalid line, a line that is not UTF-8 text or not a JSON object, naming the line.
    """
    path = Path(path)
    records = []
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataFormatError(f"{path}, line {line_no}: not UTF-8 text (byte {err.start + 1} of the line is "
                                      f"{raw[err.start]:#04x}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}, line {line_no}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise DataFormatError(f"{path}, line {line_no}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    return records


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _apply_umask_permissions(folder: Path) -> None:
    """Give a published folder the permissions of an ordinary ``mkdir``/``open``: mkdtemp/mkstemp make them private."""
    mask = _current_umask()
    folder.chmod(0o777 & ~mask)
    for entry in folder.iterdir():
        if entry.is_file() and not entry.is_symlink():
            entry.chmod(0o666 & ~mask)


@contextlib.contextmanager
def staged_output_dir(dest: str | os.PathLike, replaceable_names: Iterable[str]) -> Iterator[Path]:
    """Give a temporary sibling folder to write into; it replaces ``dest`` only if the block succeeds.

    ``dest`` is replaced as a whole, so stale files of an earlier run never mix with new ones. To avoid deleting
    someone's work by a typo, an existing ``dest`` is replaced only when it holds nothing but files this kind of
    run writes (``replaceable_names``); this is checked before the block runs.

    Args:
        dest: the final folder.
        replaceable_names: file names an existing ``dest`` may hold.

    Yields:
        The temporary folder (on the same file system as ``dest``, so the final rename is atomic).

    Raises:
        FileExistsError: when ``dest`` is a file, a link, or a folder holding other files.
    """
    dest = Path(dest)
    allowed = set(replaceable_names)
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise FileExistsError(f"output path {str(dest)!r} exists and is not a folder; choose another output folder")
    if dest.is_dir():
        foreign = sorted(entry.name for entry in dest.iterdir() if entry.name not in allowed)
        if foreign:
            raise FileExistsError(
                f"output folder {str(dest)!r} already holds {', '.join(foreign[:5])}"
                f"{' ...' if len(foreign) > 5 else ''}, which this command did not write; it would be replaced as a "
                f"whole, so choose a new or empty folder (or remove those files)"
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        yield tmp
        _apply_umask_permissions(tmp)
        if dest.exists():
            # Move the old folder aside first: os.replace cannot overwrite a non-empty folder.
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
            os.replace(dest, old / "previous")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
