"""Tar headers read strictly, and extension headers never handed to tarfile's own parser.

Before 3.11.10 (CVE-2024-6232), tarfile parses pax headers with backtracking regular
expressions: a 241-byte gzip that expands to a long pax header of digits keeps the `re`
engine busy for hours, holding the GIL, so even a worker thread freezes the event loop.
`StrictTarInfo` checks each raw 512-byte header block before tarfile processes what follows
it: extension headers (pax, GNU long names) larger than MAX_EXTENSION_BYTES and GNU sparse
entries are refused there, and pax records are parsed here, in one linear pass, instead of by
tarfile. `GNU.sparse.*` records, non-UTF-8 records (`hdrcharset`) and a `size` that is not a
plain number are refused; anything malformed is refused rather than skipped.
"""

from __future__ import annotations

import tarfile
from typing import Any

#: Largest pax extended header or GNU long name/link accepted (two 4 KiB paths and change).
MAX_EXTENSION_BYTES = 12 * 1024

_PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_LONG_NAME_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_END_OF_ARCHIVE: type[Exception] = tarfile.EOFHeaderError  # type: ignore[attr-defined]
_UTF8_CHARSET = "ISO-IR 10646 2000 UTF-8"


class BadHeader(Exception):
    """A header that is not the end of the archive and not a valid header either."""


class RefusedHeader(Exception):
    """A well-formed header that is refused (sparse files, oversized or odd extensions)."""


def _check_block(member: tarfile.TarInfo) -> None:
    """What the 512-byte block alone says, before tarfile reads anything it announces."""
    if member.type == tarfile.GNUTYPE_SPARSE:
        raise RefusedHeader(f"entry {member.name!r} is a GNU sparse file")
    if member.type in _PAX_TYPES + _LONG_NAME_TYPES and member.size > MAX_EXTENSION_BYTES:
        kind = "pax extended header" if member.type in _PAX_TYPES else "GNU long name"
        raise RefusedHeader(
            f"{kind} of {member.size} bytes (at offset {member.offset}) is larger than "
            f"{MAX_EXTENSION_BYTES} bytes"
        )


def parse_pax_records(data: bytes, offset: int = 0) -> dict[str, str]:
    """`LENGTH KEYWORD=VALUE\\n` records, in one pass; anything else raises RefusedHeader."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        where = f"pax record at offset {offset + pos}"
        space = data.find(b" ", pos, pos + 8)
        digits = data[pos:space]
        if space < 0 or not digits.isdigit():  # bytes.isdigit: ASCII digits only
            raise RefusedHeader(f"malformed {where}: no length")
        end = pos + int(digits)
        equals = data.find(b"=", space + 1, end)
        if end > len(data) or end <= space + 2 or data[end - 1] != 0x0A or equals <= space + 1:
            raise RefusedHeader(f"malformed {where}")
        try:
            keyword = data[space + 1 : equals].decode("utf-8")
            value = data[equals + 1 : end - 1].decode("utf-8")
        except UnicodeDecodeError:
            raise RefusedHeader(f"{where} is not UTF-8") from None
        if keyword.startswith("GNU.sparse."):
            raise RefusedHeader(f"{where} describes a GNU sparse file ({keyword})")
        if keyword == "hdrcharset" and value != _UTF8_CHARSET:
            raise RefusedHeader(f"{where} declares non-UTF-8 names (hdrcharset={value})")
        if keyword == "size" and not (value.isascii() and value.isdigit() and len(value) <= 19):
            raise RefusedHeader(f"{where} has a size that is not a number")
        records[keyword] = value
        pos = end
    return records


class StrictTarInfo(tarfile.TarInfo):
    """Stock tarfile treats an invalid or truncated header after the first one as the end
    of the archive and silently ignores the rest; here that is an error. Only the proper
    end-of-archive (zero) block ends it. Extension headers are checked as described above."""

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> StrictTarInfo:
        fileobj: Any = archive.fileobj
        offset = fileobj.tell()
        block = fileobj.read(tarfile.BLOCKSIZE)
        try:
            member = cls.frombuf(block, archive.encoding, archive.errors)
        except _END_OF_ARCHIVE:
            raise
        except tarfile.HeaderError as exc:
            if type(exc).__name__ == "EmptyHeaderError":
                raise BadHeader(
                    f"data ends at offset {offset} without the end-of-archive marker (truncated?)"
                ) from None
            raise BadHeader(f"bad header at offset {offset}: {exc or 'truncated'}") from None
        member.offset = offset
        _check_block(member)
        processed: StrictTarInfo = member._proc_member(archive)  # type: ignore[attr-defined]
        return processed

    def _proc_pax(self, archive: tarfile.TarFile) -> StrictTarInfo:
        """tarfile's own _proc_pax, with the records parsed by parse_pax_records."""
        fileobj: Any = archive.fileobj
        data = fileobj.read(self._block(self.size))[: self.size]  # type: ignore[attr-defined]
        records = parse_pax_records(data, self.offset + 512)
        if self.type == tarfile.XGLTYPE:
            if "size" in records:
                raise RefusedHeader(f"global pax header at offset {self.offset} sets a size")
            pax_headers: dict[str, str] = archive.pax_headers  # type: ignore[assignment]
        else:
            pax_headers = dict(archive.pax_headers)
        pax_headers.update(records)
        following = self.fromtarfile(archive)
        if self.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
            following._apply_pax_info(  # type: ignore[attr-defined]
                pax_headers, archive.encoding, archive.errors
            )
            following.offset = self.offset
            if "size" in pax_headers:
                # The extended size replaces the block's: the next header moves with it.
                offset = following.offset_data
                if following.isreg() or following.type not in tarfile.SUPPORTED_TYPES:
                    offset += following._block(following.size)  # type: ignore[attr-defined]
                archive.offset = offset
        return following
