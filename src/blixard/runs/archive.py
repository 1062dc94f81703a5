"""Configuration archives: safe extraction of uploaded .tar.gz/.tar, and making them.

`extract_archive` never calls tarfile's extract: it reads the archive as a stream and
writes every entry itself, after checking it. Refused, with `UnsafeArchive` naming the
entry: absolute names, any `..` component, symlinks that are absolute or lead outside the
destination, hard links to anything but a file extracted before them, devices, FIFOs and
any other special entry, more than `max_files` entries, more than `max_bytes` of file
content (counted while the bytes are written, so lying headers and gzip bombs are caught),
oversized tar headers (the decompressed stream is bounded too), GNU sparse files, pax
headers over 12 KiB or with `GNU.sparse.*` records (checked before tarfile parses them, see
runs/tarheaders.py), and anything that is not a gzip-compressed or plain tar.

Symlinks are created last, once every file and directory exists, so no file is ever
written through a link from the archive; then every link is resolved again to check that
it stays inside the destination.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import posixpath
import shutil
import stat
import tarfile
import zlib
from pathlib import Path
from typing import IO

from blixard.runs.tarheaders import BadHeader, RefusedHeader, StrictTarInfo
from blixard.runs.workdir import open_checked, walk_config

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 64 * 1024
# Tar bytes allowed beyond file content: per entry (header, padding, long-name/pax
# extension headers) and once (end-of-archive blocks, record padding, read-ahead).
HEADER_ALLOWANCE = 16 * 1024
STREAM_SLACK = 64 * 1024


_Readable = IO[bytes] | gzip.GzipFile


class UnsafeArchive(ValueError):
    """The archive is refused; the message says why and names the entry."""


class _BoundedReader(io.RawIOBase):
    """A read-only stream that refuses to deliver more than `limit()` bytes in total."""

    def __init__(self, raw: _Readable, limit: int) -> None:
        super().__init__()
        self._raw = raw
        self.limit = limit
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        room = self.limit - self.consumed
        want = room + 1 if size is None or size < 0 else min(size, room + 1)
        data = self._raw.read(want)
        self.consumed += len(data)
        if self.consumed > self.limit:
            raise UnsafeArchive(
                "archive is too large once decompressed (tar headers or padding beyond "
                "the size limit)"
            )
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _clean_name(name: str, what: str = "entry") -> str:
    """The entry's path relative to the destination, or UnsafeArchive."""
    if "\x00" in name:
        raise UnsafeArchive(f"{what} {name!r} has a NUL byte in its name")
    if name.startswith("/"):
        raise UnsafeArchive(f"{what} {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{what} {name!r} has a '..' path component")
    return "/".join(parts)


def _kind(member: tarfile.TarInfo) -> str:
    if member.ischr():
        return "a character device"
    if member.isblk():
        return "a block device"
    if member.isfifo():
        return "a FIFO"
    return f"an unsupported entry (type {member.type!r})"


def _check_no_links(dest: Path, rel: str) -> None:
    """Every existing component of rel's parent is a real directory, not a symlink."""
    current = dest
    for part in rel.split("/")[:-1]:
        current = current / part
        try:
            st = current.lstat()
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise UnsafeArchive(f"entry {rel!r} is below {part!r}, which is not a directory")


class _Extractor:
    def __init__(self, dest: Path, max_bytes: int, max_files: int) -> None:
        self.dest = dest
        self.real_dest = os.path.realpath(dest)
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.written = 0
        self.count = 0
        self.links: list[tuple[str, str]] = []  # (name, target), created at the end

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.count += 1
        if self.count > self.max_files:
            raise UnsafeArchive(f"archive has more than {self.max_files} entries")
        name = _clean_name(member.name)
        if member.isdir():
            if name:
                self._mkdir(name)
        elif member.isreg():
            self._file(tar, member, name)
        elif member.issym():
            self._symlink(member, name)
        elif member.islnk():
            self._hardlink(member, name)
        else:
            raise UnsafeArchive(f"entry {member.name!r} is {_kind(member)}")

    def _mkdir(self, name: str) -> None:
        _check_no_links(self.dest, name)
        path = self.dest / name
        try:
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UnsafeArchive(f"directory {name!r} conflicts with another entry") from None
        except OSError as exc:
            raise UnsafeArchive(f"directory {name!r} cannot be created: {exc.strerror}") from None

    def _parent(self, name: str, original: str) -> Path:
        if not name:
            raise UnsafeArchive(f"entry {original!r} has an empty name")
        _check_no_links(self.dest, name)
        if "/" in name:
            self._mkdir(name.rsplit("/", 1)[0])
        return self.dest / name

    def _too_large(self, name: str) -> UnsafeArchive:
        return UnsafeArchive(
            f"archive expands past the limit of {self.max_bytes} bytes (at entry {name!r})"
        )

    def _account(self, amount: int, name: str) -> None:
        self.written += amount
        if self.written > self.max_bytes:
            raise self._too_large(name)

    def _open(self, path: Path, name: str, executable: bool) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(path, flags, 0o755 if executable else 0o644)
        except OSError as exc:
            raise UnsafeArchive(f"file {name!r} cannot be written: {exc.strerror}") from None

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
        path = self._parent(name, member.name)
        if member.size > self.max_bytes - self.written:
            raise self._too_large(name)  # the header alone says so; content is counted too
        source = tar.extractfile(member)
        if source is None:  # pragma: no cover - isreg() members always have data
            raise UnsafeArchive(f"entry {name!r} has no data")
        fd = self._open(path, name, bool(member.mode & 0o111))
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(CHUNK):
                self._account(len(chunk), name)
                out.write(chunk)

    def _symlink(self, member: tarfile.TarInfo, name: str) -> None:
        target = member.linkname
        if not name:
            raise UnsafeArchive(f"symlink {member.name!r} has an empty name")
        if not target:
            raise UnsafeArchive(f"symlink {name!r} has an empty target")
        if target.startswith("/") or "\x00" in target:
            raise UnsafeArchive(f"symlink {name!r} points to an absolute path ({target!r})")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchive(f"symlink {name!r} points outside the archive ({target!r})")
        self.links.append((name, target))

    def _hardlink(self, member: tarfile.TarInfo, name: str) -> None:
        target = _clean_name(member.linkname, f"hard link {name!r} to")
        path = self._parent(name, member.name)
        source = self.dest / target
        try:
            _check_no_links(self.dest, target)
            st = source.lstat()
        except (FileNotFoundError, UnsafeArchive):
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or not target:
            raise UnsafeArchive(
                f"hard link {name!r} points to {member.linkname!r}, "
                "which is not a file extracted before it"
            )
        if st.st_size > self.max_bytes - self.written:
            raise self._too_large(name)
        fd = self._open(path, name, bool(st.st_mode & 0o111))
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            while chunk := src.read(CHUNK):
                self._account(len(chunk), name)
                out.write(chunk)

    def _inside(self, path: str) -> bool:
        return path == self.real_dest or path.startswith(self.real_dest + os.sep)

    def finish(self) -> None:
        for name, target in self.links:
            path = self._parent(name, name)
            if os.path.lexists(path):
                raise UnsafeArchive(f"symlink {name!r} conflicts with another entry")
            try:
                os.symlink(target, path)
            except OSError as exc:
                raise UnsafeArchive(f"symlink {name!r} cannot be created: {exc.strerror}") from None
            if not self._inside(os.path.realpath(path)):
                raise UnsafeArchive(f"symlink {name!r} points outside the archive ({target!r})")
        # A link created later can change where an earlier one leads: check them all again.
        for name, target in self.links:
            if not self._inside(os.path.realpath(self.dest / name)):
                raise UnsafeArchive(f"symlink {name!r} points outside the archive ({target!r})")


def _open_source(data: bytes | Path, stack: contextlib.ExitStack) -> tuple[_Readable, str]:
    """The archive's tar stream (decompressed when gzip) and how it was read."""
    raw: IO[bytes]
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = io.BytesIO(bytes(data))
    else:
        raw = stack.enter_context(open(data, "rb"))  # noqa: SIM115 - closed by the stack
    head = raw.read(2)
    raw.seek(0)
    if not head:
        raise UnsafeArchive("archive is empty: expected a .tar.gz or .tar file")
    if head == GZIP_MAGIC:
        decompressed = gzip.GzipFile(fileobj=raw, mode="rb")
        stack.callback(decompressed.close)
        return decompressed, "gzip-compressed tar"
    return raw, "plain tar"


def _clear(dest: Path, created: bool) -> None:
    if created:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def extract_archive(
    data: bytes | Path, dest: Path, *, max_bytes: int, max_files: int = 10_000
) -> int:
    """Extract a .tar.gz (or plain .tar) into `dest`; return the number of bytes written.

    `dest` must not exist or be an empty directory. On any refusal, `UnsafeArchive` is
    raised and whatever was extracted is removed again.
    """
    dest = Path(dest)
    created = not dest.exists()
    if not created and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"extraction directory {dest} exists and is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    extractor = _Extractor(dest, max_bytes, max_files)
    try:
        with contextlib.ExitStack() as stack:
            source, kind = _open_source(data, stack)
            bounded = _BoundedReader(source, max_bytes + HEADER_ALLOWANCE + STREAM_SLACK)
            try:
                tar = stack.enter_context(
                    tarfile.open(fileobj=bounded, mode="r|", tarinfo=StrictTarInfo)
                )
                for member in tar:
                    extractor.member(tar, member)
                    # File content is capped by max_bytes; the rest of the stream by entry.
                    bounded.limit = (
                        max_bytes + HEADER_ALLOWANCE * (extractor.count + 1) + STREAM_SLACK
                    )
            except RefusedHeader as exc:
                raise UnsafeArchive(str(exc)) from None
            except (BadHeader, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
                raise UnsafeArchive(
                    f"not a valid .tar.gz or .tar archive (read as {kind}: {exc or 'truncated'})"
                ) from None
            extractor.finish()
    except BaseException:
        _clear(dest, created)
        raise
    return extractor.written


def make_archive(directory: Path, *, allowed_roots: list[Path] | None = None) -> bytes:
    """A deterministic tar.gz of a configuration directory, for uploading it.

    Leaves out `.terraform/`, `.git/` and `*.tfstate*` (see workdir.walk_config; keeps
    `.terraform.lock.hcl`). Entries are sorted, with zeroed times and owners and
    normalised modes, so the same files always give the same bytes. With `allowed_roots`,
    the walk that builds the archive refuses whatever lies outside them (OutsideRoots).
    """
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(filename="", fileobj=buffer, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for entry in walk_config(Path(directory), allowed_roots=allowed_roots):
            info = tarfile.TarInfo(entry.relpath)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
                info.mode = 0o777
                tar.addfile(info)
            else:
                info.mode = 0o755 if entry.executable else 0o644
                with os.fdopen(open_checked(entry), "rb") as fh:
                    info.size = os.fstat(fh.fileno()).st_size
                    tar.addfile(info, fh)
    return buffer.getvalue()
