"""Content hashes for checkpoint directories: write a manifest, verify one.

Orbax commits a checkpoint atomically (a temporary directory renamed into place) but does not
checksum array data, so a file truncated or corrupted after the commit restores silently into
wrong weights — or fails deep inside TensorStore. The manifest lists the SHA-256 of every file of
every item of the checkpoint in `sha256sum` format, so `cd DIR/<step> && sha256sum -c MANIFEST.sha256`
checks it without rainier-jax. stdlib only: the CLI verifies checkpoints before JAX starts.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

MANIFEST = "MANIFEST.sha256"
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    """Every file of every item (subdirectory). Files at the top level are orbax's own step
    metadata, which it rewrites when it commits (timestamps), after the manifest is sealed."""
    out = []
    for dirpath, _, names in os.walk(root):
        if Path(dirpath) != root:
            out += [Path(dirpath, n).relative_to(root) for n in names]
    return sorted(out)


def write(root: Path) -> int:
    """Hash every file under `root` into `root/MANIFEST.sha256` (written whole, then renamed).
    Returns the number of bytes hashed."""
    lines, total = [], 0
    for rel in _files(root):
        total += (root / rel).stat().st_size
        lines.append(f"{file_sha256(root / rel)}  {rel.as_posix()}\n")
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, root / MANIFEST)
    return total


def verify(root: Path) -> str | None:
    """None when every file the manifest lists is present with its hash; otherwise the first
    problem, as a short phrase naming the file."""
    manifest = root / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST} (not written by rainier-jax, or damaged)"
    try:
        entries = [line.rstrip("\n").split("  ", 1) for line in manifest.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        return f"{MANIFEST} unreadable ({e})"
    if not entries or any(len(e) != 2 or len(e[0]) != 64 for e in entries):
        return f"{MANIFEST} is malformed"
    for digest, rel in entries:
        path = root / rel
        if not path.is_file():
            return f"{rel} is missing"
        try:
            actual = file_sha256(path)
        except OSError as e:
            return f"{rel} unreadable ({e.strerror})"
        if actual != digest:
            return f"{rel} does not match its sha256 (truncated or corrupted)"
    return None
