"""cmanlk-keygen: create the cluster key file that authenticates and encrypts the native transport.

    cmanlk-keygen [-k PATH] [-l LENGTH] [--force]

Writes LENGTH (default 256, 32..4096) bytes from the kernel's random generator (getrandom) to PATH
(default /etc/corosync/authkey: the daemon's default key file, and corosync's) with mode 0400. The
file appears atomically and complete, or not at all; an existing file is kept unless --force is
given (a corosync-keygen key already there serves cmanlk as it is). Copy the same file to every
node.

Exit status: 0 written, 1 not written (file exists, I/O error), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cmanlk.config import DEFAULT_KEY_FILE
from cmanlk.runtime.crypto import KEY_MAX_BYTES, KEY_MIN_BYTES

DEFAULT_KEY_PATH = DEFAULT_KEY_FILE
DEFAULT_KEY_BYTES = 256  # as corosync-keygen: far above the 32 bytes the derived AES-256 keys need
KEY_FILE_MODE = 0o400


class KeyFileExists(FileExistsError):
    """The key file is already there and --force was not given."""


def write_key_file(
    path: str | Path,
    length: int = DEFAULT_KEY_BYTES,
    *,
    force: bool = False,
    rng_bytes: Callable[[int], bytes] = os.urandom,
) -> None:
    """Write a new key of `length` random bytes to `path`, mode 0400, atomically.

    Raises ValueError for a length outside KEY_MIN_BYTES..KEY_MAX_BYTES, KeyFileExists if `path`
    exists and not `force`, OSError for I/O problems; on any error no file is left at `path` that
    was not there before, and no temporary file remains.
    """
    if not KEY_MIN_BYTES <= length <= KEY_MAX_BYTES:
        raise ValueError(f"key length {length} is outside {KEY_MIN_BYTES}..{KEY_MAX_BYTES}")
    path = Path(path)
    if path.exists() and not force:
        raise KeyFileExists(f"{path} exists; use --force to replace it")
    key = rng_bytes(length)
    if len(key) != length:
        raise OSError(f"random source returned {len(key)} of {length} bytes")
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, KEY_FILE_MODE)
    try:
        try:
            os.fchmod(fd, KEY_FILE_MODE)  # the umask could have removed bits; make it exactly 0400
            view = memoryview(key)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic and never overwrites, even if someone created it meanwhile
            except FileExistsError:
                raise KeyFileExists(f"{path} exists; use --force to replace it") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _length(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not KEY_MIN_BYTES <= value <= KEY_MAX_BYTES:
        raise argparse.ArgumentTypeError(f"must be {KEY_MIN_BYTES}..{KEY_MAX_BYTES} bytes")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `cmanlk-keygen`; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="cmanlk-keygen", description="Create the cluster key of cmanlk's native transport."
    )
    parser.add_argument("-k", "--key-file", default=DEFAULT_KEY_PATH, help=f"default {DEFAULT_KEY_PATH}")
    parser.add_argument(
        "-l", "--length", type=_length, default=DEFAULT_KEY_BYTES, help=f"bytes, default {DEFAULT_KEY_BYTES}"
    )
    parser.add_argument("-f", "--force", action="store_true", help="replace an existing key file")
    args = parser.parse_args(argv)
    try:
        write_key_file(args.key_file, args.length, force=args.force)
    except KeyFileExists as exc:
        print(f"cmanlk-keygen: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        detail = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else exc.strerror or exc
        print(f"cmanlk-keygen: cannot write {args.key_file}: {detail}", file=sys.stderr)
        return 1
    print(f"Wrote a {args.length}-byte key to {args.key_file} (mode 0400). Copy it to every node.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
