"""Corpus → tokens → `batch(seed, step)`: byte-level data for small CPU training runs.

Tokens are bytes (0..255) for text, or little-endian uint16 values for a pre-tokenized `*.bin`.
A corpus is split once into a train part and a held-out tail (the last 5%, at least one window),
so no training window can ever see held-out tokens. Batches are a pure function of
(seed, step): there is no iterator state to checkpoint, and resume reproduces a run exactly.
numpy + stdlib only, so data loading never initialises JAX.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import os
import stat
import sys
import sysconfig
from pathlib import Path

import numpy as np

from rainier_jax.config.errors import ConfigError, setting

# Default corpus: real text that exists on every machine with Python, so nothing is downloaded.
# Single-file modules present in CPython 3.11, 3.12 and 3.13. Deliberately absent: pathlib,
# sysconfig (packages since 3.13), zipfile (package since 3.12), datetime (a stub over
# _pydatetime since 3.12), and modules removed by PEP 594. The content (and so the hash) still
# differs between Python versions; that is why `source` names the version.
STDLIB_MODULES: tuple[str, ...] = (
    "argparse.py", "ast.py", "configparser.py", "dataclasses.py", "difflib.py", "doctest.py",
    "enum.py", "fractions.py", "functools.py", "inspect.py", "ipaddress.py", "locale.py",
    "mailbox.py", "optparse.py", "pdb.py", "pickle.py", "pickletools.py", "pydoc.py",
    "shutil.py", "statistics.py", "subprocess.py", "tarfile.py", "textwrap.py", "threading.py",
    "traceback.py", "turtle.py", "typing.py", "_pydecimal.py", "_pyio.py",
)

HELDOUT_FRACTION = 20  # held-out part is 1/20 = 5% of the tokens
SNIFF_BYTES = 64 * 1024  # how much of each text file is looked at to tell whether it is text


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A token stream split into a train part and a held-out tail (read-only views)."""

    train: np.ndarray     # uint16 [num_train]
    heldout: np.ndarray   # uint16 [num_heldout]; follows `train` directly in the stream
    source: str           # human description: "python-stdlib 3.11", a path, "synthetic"
    num_bytes: int        # size of the source data as read (2 bytes per token for *.bin)
    num_files: int        # files concatenated (0 when generated in code)
    sha256: str           # hex sha256 of the whole token stream as little-endian uint16
    # One-line remarks for the user, each starting "note: " (e.g. a `data` file that looks
    # binary), with settings marked as in a ConfigError (errors.setting). load_corpus never
    # prints: the CLI spells and shows them on stderr, a library caller decides.
    notes: tuple[str, ...] = ()

    @property
    def num_tokens(self) -> int:
        return len(self.train) + len(self.heldout)

    def describe(self) -> str:
        files = f"{self.num_files} file{'s' * (self.num_files != 1)}, " if self.num_files else ""
        return (f"corpus: {self.source} ({files}{self.num_bytes / 1e6:.2f} MB, "
                f"sha256 {self.sha256[:12]}) — {len(self.train):,} train / "
                f"{len(self.heldout):,} held-out tokens")


def _make_corpus(tokens: np.ndarray, *, source: str, num_bytes: int, num_files: int,
                 seq_len: int, where: str, notes: tuple[str, ...] = ()) -> Corpus:
    """Split `tokens` (uint16) into train/held-out, refusing streams too short to train on."""
    n = len(tokens)
    window = seq_len + 1
    num_heldout = max(n // HELDOUT_FRACTION, window)  # at least one full held-out window
    if n - num_heldout < window:
        raise ConfigError(f"{where}: {n:,} tokens is too short for {setting('seq')} {seq_len} (need at "
                          f"least {num_heldout + window:,}: one training window of {window} plus "
                          f"a held-out part of {num_heldout}); use more text or a shorter {setting('seq')}")
    tokens = np.ascontiguousarray(tokens, dtype=np.uint16)
    tokens.flags.writeable = False  # the slices below are views; freezing the base freezes them
    digest = hashlib.sha256(tokens.astype("<u2", copy=False).tobytes()).hexdigest()
    return Corpus(train=tokens[: n - num_heldout], heldout=tokens[n - num_heldout:],
                  source=source, num_bytes=num_bytes, num_files=num_files, sha256=digest, notes=notes)


def _bytes_to_tokens(raw: bytes, vocab_size: int, where: str) -> np.ndarray:
    if vocab_size < 256:
        raise ConfigError(f"{where}: byte-level text needs a vocabulary of at least 256 tokens "
                          f"but vocab_size is {vocab_size}; use a model with vocab_size >= 256 "
                          f"or pass {setting('data')} with a uint16 *.bin token file")
    return np.frombuffer(raw, dtype=np.uint8).astype(np.uint16)


def _binary_reason(raw: bytes) -> str | None:
    """Why `raw` (a file's bytes) does not look like text, judged on its first SNIFF_BYTES; None if
    it does. Byte-level training works on any bytes, so this only ever becomes a note."""
    head = raw[:SNIFF_BYTES]
    if b"\0" in head:
        return f"NUL bytes in its first {SNIFF_BYTES // 1024} KiB"
    try:  # incremental, so a character cut at the SNIFF_BYTES boundary is not an error
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(raw) <= SNIFF_BYTES)
    except UnicodeDecodeError:
        return f"not UTF-8 in its first {SNIFF_BYTES // 1024} KiB"
    return None


_BIN_HINT = "a file of uint16 tokens must be named *.bin"


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def _read(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path} ({e.strerror}); check its permissions") from None


def _visible_files(root: Path) -> list[Path]:
    """Regular files under `root`, recursively, hidden files and directories skipped.

    Anything else (a FIFO, a device, a socket, a broken symlink) is skipped without being opened:
    opening a FIFO blocks until something writes to it.

    Sorted by relative path parts (so "a/x" sorts with "a" rather than after "a-b"), giving the
    same concatenation on every filesystem regardless of directory listing order.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root):  # followlinks=False: no symlink cycles
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(dirpath, name)
            if not name.startswith(".") and path.is_file():  # a stat (S_ISREG), no open
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _default_corpus(vocab_size: int, seq_len: int) -> Corpus:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chunks = []
    for name in STDLIB_MODULES:
        path = stdlib / name
        if not path.is_file():
            raise ConfigError(f"default corpus: {name} is missing from {stdlib}; "
                              f"pass {setting('data')} PATH to train on your own text")
        chunks.append(path.read_bytes())
    raw = b"".join(chunks)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return _make_corpus(_bytes_to_tokens(raw, vocab_size, f"default corpus ({setting('data')} not given)"),
                        source=f"python-stdlib {version}", num_bytes=len(raw),
                        num_files=len(chunks), seq_len=seq_len, where="default corpus")


def load_corpus(data: str | None, vocab_size: int, seq_len: int) -> Corpus:
    """The `data` corpus: None (stdlib sources), a text file, a directory, or a uint16 *.bin.
    Messages name the settings `data` and `seq`."""
    if seq_len < 1:
        raise ConfigError(f"{setting('seq')} {seq_len}: must be at least 1, got {seq_len}")
    if data is None:
        return _default_corpus(vocab_size, seq_len)
    where = f"{setting('data')} {data}"
    path = Path(data)
    try:
        st = path.stat()  # stat, never open: opening a FIFO blocks
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file or directory") from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot read it ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        files = _visible_files(path)
        contents = [_read(f, where) for f in files]
        raw = b"".join(contents)
        if not raw:
            raise ConfigError(f"{where}: directory has no non-empty, non-hidden files")
        binary = [(f, why) for f, c in zip(files, contents) if (why := _binary_reason(c))]
        notes = () if not binary else (
            f"note: {where}: {len(binary)} of {len(files)} files look{'s' * (len(binary) == 1)} binary (first: "
            f"{binary[0][0].relative_to(path)}, {binary[0][1]}); training on their raw bytes",)
        return _make_corpus(_bytes_to_tokens(raw, vocab_size, where), source=str(data),
                            num_bytes=len(raw), num_files=len(files), seq_len=seq_len, where=where,
                            notes=notes)
    if not stat.S_ISREG(st.st_mode):  # /dev/zero has st_size 0 and would otherwise be "empty"
        raise ConfigError(f"{where}: is {_file_kind(st.st_mode)}, not a file or a directory; give a "
                          f"text file, a directory of text files or a uint16 *.bin token file")
    size = st.st_size
    if size == 0:
        raise ConfigError(f"{where}: file is empty")
    if path.suffix == ".bin":
        if size % 2:
            raise ConfigError(f"{where}: {size} bytes is not a whole number of uint16 tokens "
                              f"(*.bin files hold little-endian uint16 tokens)")
        tokens = np.frombuffer(_read(path, where), dtype="<u2")
        bad = np.flatnonzero(tokens >= vocab_size)
        if bad.size:
            raise ConfigError(f"{where}: token {int(tokens[bad[0]])} at position {int(bad[0])} "
                              f"is outside the vocabulary (vocab_size {vocab_size}); "
                              f"re-tokenize or use a model with a larger vocab_size")
        return _make_corpus(tokens, source=f"{data} (uint16 tokens)", num_bytes=size,
                            num_files=1, seq_len=seq_len, where=where)
    raw = _read(path, where)
    why = _binary_reason(raw)
    notes = () if why is None else (f"note: {where}: looks binary ({why}); training on its raw bytes "
                                    f"({_BIN_HINT})",)
    return _make_corpus(_bytes_to_tokens(raw, vocab_size, where), source=str(data),
                        num_bytes=len(raw), num_files=1, seq_len=seq_len, where=where, notes=notes)


# Synthetic corpus: a tiny English-like grammar driven by a 32-bit LCG in pure Python ints, so
# the bytes (and the hash pinned in tests) are identical on every Python and numpy version.
_DETS = ("the", "a", "every", "one", "that", "this")
_ADJS = ("quick", "old", "small", "bright", "quiet", "green", "heavy", "calm", "strange", "tall",
         "warm", "empty", "broken", "careful", "distant", "gentle")
_NOUNS = ("fox", "river", "town", "teacher", "machine", "garden", "letter", "window", "bird",
          "engine", "bridge", "farmer", "lamp", "forest", "station", "child", "ship", "market",
          "clock", "painter", "road", "stone", "signal", "harbor")
_VERBS = ("sees", "follows", "builds", "carries", "finds", "watches", "repairs", "paints",
          "crosses", "remembers", "opens", "reaches", "hears", "leaves", "guards", "counts")
_PREPS = ("near", "under", "beside", "behind", "across", "beyond", "inside", "along")


def synthetic_corpus(num_bytes: int = 200_000, seed: int = 0) -> Corpus:
    """`num_bytes` of generated English-like text; deterministic everywhere. source="synthetic"."""
    if num_bytes < 1000:
        raise ValueError(f"synthetic_corpus: num_bytes must be at least 1000, got {num_bytes}")
    state = (seed * 2654435761 + 12345) & 0xFFFFFFFF  # spread small seeds apart

    def pick(words: tuple[str, ...]) -> str:
        nonlocal state
        state = (1664525 * state + 1013904223) & 0xFFFFFFFF  # Numerical Recipes LCG
        return words[(state >> 16) % len(words)]  # high bits: the low bits of an LCG cycle fast

    def noun_phrase() -> str:
        adj = pick(_ADJS) + " " if pick((0, 1, 2)) else ""  # adjective two times in three
        return f"{pick(_DETS)} {adj}{pick(_NOUNS)}"

    parts: list[str] = []
    size = 0
    while size < num_bytes:
        sentences = []
        for _ in range(3 + pick((0, 1, 2, 3))):
            s = f"{noun_phrase()} {pick(_VERBS)} {noun_phrase()}"
            if pick((0, 1)):
                s += f" {pick(_PREPS)} {noun_phrase()}"
            sentences.append(s[0].upper() + s[1:] + ".")
        paragraph = " ".join(sentences) + "\n\n"
        parts.append(paragraph)
        size += len(paragraph)
    raw = "".join(parts).encode("ascii")[:num_bytes]
    return _make_corpus(np.frombuffer(raw, dtype=np.uint8).astype(np.uint16), source="synthetic",
                        num_bytes=num_bytes, num_files=0, seq_len=1, where="synthetic_corpus")


def batch(corpus: Corpus, *, seed: int, step: int, batch_size: int, seq_len: int) -> np.ndarray:
    """Training windows int32 [batch_size, seq_len + 1]: inputs are [:, :-1], targets [:, 1:].

    Start offsets are uniform over the train part and depend only on (seed, step). They come
    from PCG64's raw 64-bit output keyed by SeedSequence([seed, step]): both are covered by
    numpy's stream-compatibility policy, unlike Generator.integers, so runs also reproduce
    across numpy upgrades. The modulo bias is below 2**-40 for any corpus that fits in memory.
    """
    if seed < 0 or step < 0 or batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch: need seed, step >= 0 and batch_size, seq_len >= 1; got "
                         f"seed={seed} step={step} batch_size={batch_size} seq_len={seq_len}")
    num_starts = len(corpus.train) - seq_len  # valid starts: 0 .. len(train) - (seq_len + 1)
    if num_starts < 1:
        raise ConfigError(f"{setting('seq')} {seq_len}: longer than the training part of the corpus "
                          f"({len(corpus.train):,} tokens); use a shorter seq_len or more {setting('data')}")
    raw = np.random.PCG64(np.random.SeedSequence([seed, step])).random_raw(batch_size)
    starts = (raw % np.uint64(num_starts)).astype(np.int64)
    return _gather(corpus.train, starts, seq_len)


def eval_batches(corpus: Corpus, *, batch_size: int, seq_len: int,
                 num_batches: int) -> np.ndarray:
    """Held-out windows int32 [num_batches, batch_size, seq_len + 1], independent of any seed.

    The num_batches * batch_size start offsets are evenly spaced from the first to the last
    valid start in the held-out part (rounded to integers). When the held-out part is short the
    windows overlap, and with more windows than valid starts some repeat; the evaluation set is
    then smaller than it looks, but every step of every run evaluates the same tokens.
    """
    if batch_size < 1 or seq_len < 1 or num_batches < 1:
        raise ValueError(f"eval_batches: need batch_size, seq_len, num_batches >= 1; got "
                         f"{batch_size}, {seq_len}, {num_batches}")
    last_start = len(corpus.heldout) - (seq_len + 1)
    if last_start < 0:
        raise ConfigError(f"{setting('seq')} {seq_len}: longer than the held-out part of the corpus "
                          f"({len(corpus.heldout):,} tokens); use a shorter seq_len or more {setting('data')}")
    starts = np.rint(np.linspace(0, last_start, num_batches * batch_size)).astype(np.int64)
    windows = _gather(corpus.heldout, starts, seq_len)
    return windows.reshape(num_batches, batch_size, seq_len + 1)


def _gather(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
    # [n, 1] + [1, L+1] → index matrix [n, L+1]; one fancy-index gather, widened to int32 for JAX.
    index = starts[:, None] + np.arange(seq_len + 1, dtype=np.int64)[None, :]
    return tokens[index].astype(np.int32)
