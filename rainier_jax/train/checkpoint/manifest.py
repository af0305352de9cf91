"""Content hashes for checkpoint directories: write a manifest, verify one.

Orbax commits a checkpoint atomically (a temporary directory renamed into place) but does not
checksum array data, so a file truncated or corrupted after the commit restores silently into
wrong weights — or fails deep inside TensorStore. The manifest lists the SHA-256 of every file of
every item of the checkpoint in `sha256sum` format, so `cd DIR/<step> && sha256sum -c MANIFEST.sha256`
checks it without rainier-jax. stdlib only: the CLI verifies checkpoints before JAX starts.

What it guards against is accidents — truncation, bit rot, a partial copy, a stray file dropped
into an item — not a deliberate attacker, who can rewrite the manifest along with the data.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from pathlib import Path

MANIFEST = "MANIFEST.sha256"
_CHUNK = 1 << 20
_DIGEST = re.compile(r"[0-9a-f]{64}")


def open_regular(path: Path) -> int:
    """A read-only descriptor of `path` if it is a regular file reached without a final symlink.

    Never blocks: O_NONBLOCK makes opening a FIFO return at once (it is then refused instead of
    waiting for a writer that never comes); O_NOFOLLOW closes the gap between the lstat and the
    open. Anything else raises OSError with a phrase a user can act on."""
    if stat.S_ISLNK(os.lstat(path).st_mode):
        raise OSError(errno.ELOOP, "a symbolic link (rainier-jax writes none)", str(path))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise OSError(errno.EINVAL, kind, str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (see `open_regular`)."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return data


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[str]:
    """Every file of every item (subdirectory), as relative POSIX paths. Files at the top level are
    orbax's own step metadata, which it rewrites when it commits (timestamps), after the manifest
    is sealed. Symlinks are never followed (a symlinked directory is listed as an entry, not
    entered), and an unreadable directory raises instead of being skipped."""
    out, pending = [], [(root, "")]
    while pending:   # a loop, not recursion: a damaged tree may be arbitrarily deep
        directory, rel = pending.pop()
        with os.scandir(directory) as it:
            for entry in it:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), name))
                elif rel:
                    out.append(name)
    return sorted(out)


def write(root: Path) -> int:
    """Hash every file under `root` into `root/MANIFEST.sha256` (written whole, then renamed).
    Returns the number of bytes hashed."""
    lines, total = [], 0
    for rel in _files(root):
        total += (root / rel).stat().st_size
        lines.append(f"{file_sha256(root / rel)}  {rel}\n")
    tmp = root / (MANIFEST + ".tmp")
    try:
        tmp.write_text("".join(lines), encoding="utf-8")
        os.replace(tmp, root / MANIFEST)
    except OSError:
        tmp.unlink(missing_ok=True)   # a full disk: give the partial file's space back
        raise
    return total


def _outside(rel: str) -> bool:
    """True unless `rel` is a plain relative path below the step directory — the only kind `write`
    produces. `..`, absolute paths and `.`/empty components would make `root / rel` name
    something else than the file the manifest seems to list."""
    return (not rel or rel.startswith("/") or "\\" in rel or "\0" in rel
            or any(part in ("", ".", "..") for part in rel.split("/")))


def _relative(filename, root: Path) -> str:
    try:
        return Path(os.fsdecode(filename)).relative_to(root).as_posix()
    except (TypeError, ValueError):
        return str(filename)


def verify(root: Path) -> str | None:
    """None when the files of the items are exactly those the manifest lists, each a regular file
    inside `root` with its hash; otherwise the first problem, as a short phrase naming the file.
    Never raises for what is on disk (any OSError is a problem) and never blocks."""
    try:
        return _verify(root)
    except OSError as e:
        return f"{_relative(e.filename, root) if e.filename else root.name} unreadable ({e.strerror or e})"


def _verify(root: Path) -> str | None:
    try:
        text = read_regular(root / MANIFEST, limit=1 << 26).decode("utf-8")   # 64 MiB: ~500k files
    except FileNotFoundError:
        return f"no {MANIFEST} (not written by rainier-jax, or damaged)"
    except OSError as e:
        return f"{MANIFEST} unreadable ({e.strerror})"
    except UnicodeDecodeError:
        return f"{MANIFEST} is malformed (not UTF-8)"
    if not text.endswith("\n"):
        return f"{MANIFEST} is malformed (truncated: no final newline)"
    entries: dict[str, str] = {}
    for line in text[:-1].split("\n"):
        digest, sep, rel = line.partition("  ")
        if not sep or not _DIGEST.fullmatch(digest):
            return f"{MANIFEST} is malformed"
        if _outside(rel):
            return f"{MANIFEST} lists {rel!r}, which is not a file inside the checkpoint"
        if rel in entries:
            return f"{MANIFEST} is malformed ({rel} listed twice)"
        entries[rel] = digest
    # Files orbax would read but nobody hashed: a stray copy, or a file dropped into an item.
    for rel in _files(root):
        if rel not in entries:
            return f"{rel} is not listed in {MANIFEST} (a stray file)"
    for rel, digest in entries.items():
        path = root / rel
        try:
            # Every directory on the way must be a real one: a symlinked directory would lead out.
            for parent in reversed(Path(rel).parents[:-1]):
                if not stat.S_ISDIR(os.lstat(root / parent).st_mode):
                    return f"{parent.as_posix()} is not a directory (rainier-jax writes no symlinks)"
            actual = file_sha256(path)
        except FileNotFoundError:
            return f"{rel} is missing"
        except OSError as e:
            return f"{rel} unreadable ({e.strerror})"
        if actual != digest:
            return f"{rel} does not match its sha256 (truncated or corrupted)"
    return None
