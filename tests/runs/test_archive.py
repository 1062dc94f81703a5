"""extract_archive refuses every malicious archive, names the entry, and leaves nothing behind;
make_archive round-trips a configuration directory deterministically."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from blixard.runs.archive import UnsafeArchive, extract_archive, make_archive

MiB = 1024 * 1024


def build(
    *entries: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes],
    compress: bool = True,
    fmt: int = tarfile.PAX_FORMAT,
) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for entry in entries:
            if isinstance(entry, tuple):
                info, data = entry
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(entry)
    raw = buffer.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def refused(data: bytes | Path, dest: Path, match: str, **limits: int) -> None:
    limits.setdefault("max_bytes", MiB)
    with pytest.raises(UnsafeArchive, match=match):
        extract_archive(data, dest, **limits)
    assert not dest.exists(), "a refused archive must leave nothing behind"


def test_plain_good_archive(tmp_path: Path) -> None:
    data = build(
        special("mod", tarfile.DIRTYPE),
        file("main.tf", b'resource "terraform_data" "x" {}\n'),
        file("mod/run.sh", b"#!/bin/sh\n", mode=0o755),
        file("./nested/deep/vars.tf", b"variable {}"),
        special("mod/link.tf", tarfile.SYMTYPE, "../main.tf"),
        special("hard.tf", tarfile.LNKTYPE, "main.tf"),
    )
    dest = tmp_path / "out"
    written = extract_archive(data, dest, max_bytes=MiB)
    assert (dest / "main.tf").read_bytes() == b'resource "terraform_data" "x" {}\n'
    assert (dest / "nested/deep/vars.tf").read_bytes() == b"variable {}"
    assert os.readlink(dest / "mod/link.tf") == "../main.tf"
    assert (dest / "mod/link.tf").read_bytes() == (dest / "main.tf").read_bytes()
    assert (dest / "hard.tf").read_bytes() == (dest / "main.tf").read_bytes()
    assert not (dest / "hard.tf").is_symlink()
    assert os.access(dest / "mod/run.sh", os.X_OK)
    assert not os.access(dest / "main.tf", os.X_OK)
    assert written == 2 * 33 + 10 + 11


def test_plain_tar_and_path_input(tmp_path: Path) -> None:
    data = build(file("a.tf", b"abc"), compress=False)
    assert extract_archive(data, tmp_path / "one", max_bytes=10) == 3
    archive = tmp_path / "config.tar"
    archive.write_bytes(data)
    assert extract_archive(archive, tmp_path / "two", max_bytes=10) == 3
    assert (tmp_path / "two/a.tf").read_text() == "abc"


def test_existing_empty_destination_is_fine_but_not_a_full_one(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_archive(build(file("a.tf")), dest, max_bytes=10)
    with pytest.raises(FileExistsError):
        extract_archive(build(file("b.tf")), dest, max_bytes=10)


def test_refusal_in_existing_directory_empties_it(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    data = build(file("ok.tf"), file("../evil"))
    with pytest.raises(UnsafeArchive):
        extract_archive(data, dest, max_bytes=MiB)
    assert dest.is_dir() and list(dest.iterdir()) == []


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([file("../x")], r"'\.\./x' has a '\.\.' path component"),
        ([file("ok/../../x")], r"'\.\.' path component"),
        ([file("a/b/../c")], r"'\.\.' path component"),  # even when it would stay inside
        ([file("/etc/x")], r"'/etc/x' has an absolute path"),
        ([special("etc", tarfile.SYMTYPE, "/etc")], r"symlink 'etc' points to an absolute path"),
        (
            [special("a", tarfile.SYMTYPE, "../../x")],
            r"symlink 'a' points outside the archive \('\.\./\.\./x'\)",
        ),
        ([special("d/a", tarfile.SYMTYPE, "../../x")], r"symlink 'd/a' points outside"),
        ([special("up", tarfile.SYMTYPE, "..")], r"symlink 'up' points outside"),
        ([special("h", tarfile.LNKTYPE, "../../etc/passwd")], r"hard link 'h'.*'\.\.' path"),
        ([special("h", tarfile.LNKTYPE, "/etc/passwd")], r"hard link 'h'.*absolute path"),
        ([special("h", tarfile.LNKTYPE, "missing.tf")], r"hard link 'h' points to 'missing.tf'"),
        ([special("tty", tarfile.CHRTYPE)], r"entry 'tty' is a character device"),
        ([special("disk", tarfile.BLKTYPE)], r"entry 'disk' is a block device"),
        ([special("pipe", tarfile.FIFOTYPE)], r"entry 'pipe' is a FIFO"),
        ([special("odd", b"V")], r"entry 'odd' is an unsupported entry"),
        ([special("empty", tarfile.SYMTYPE, "")], r"symlink 'empty' has an empty target"),
        ([file("x"), special("x/y", tarfile.DIRTYPE)], r"'x/y' is below 'x', which is not a"),
        ([file("n" * 300)], r"file 'n+' cannot be written: File name too long"),
        ([special("d" * 300, tarfile.DIRTYPE)], r"directory 'd+' cannot be created"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_malicious_entries_are_refused(
    tmp_path: Path, entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]], match: str
) -> None:
    refused(build(file("fine.tf"), *entries), tmp_path / "out", match)
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_hardlink_to_a_symlink_or_directory_is_refused(tmp_path: Path) -> None:
    refused(
        build(special("d", tarfile.DIRTYPE), special("h", tarfile.LNKTYPE, "d")),
        tmp_path / "out",
        r"hard link 'h' points to 'd', which is not a file",
    )


def test_symlink_chain_that_escapes_once_complete_is_refused(tmp_path: Path) -> None:
    # Each link stays inside on its own; together sub/a -> sub/q/../.. -> (root)/.. escapes.
    data = build(
        special("sub", tarfile.DIRTYPE),
        special("sub/a", tarfile.SYMTYPE, "q/../.."),
        special("sub/q", tarfile.SYMTYPE, ".."),
    )
    refused(data, tmp_path / "out", r"symlink 'sub/a' points outside")


def test_nothing_is_written_through_an_archived_symlink(tmp_path: Path) -> None:
    # A link to a directory inside, then a file "through" it: the file must land in a real
    # directory (links are created last), never be written through the link.
    data = build(
        special("real", tarfile.DIRTYPE),
        special("alias", tarfile.SYMTYPE, "real"),
        file("alias/x.tf", b"via"),
    )
    refused(data, tmp_path / "out", r"symlink 'alias' conflicts with another entry")
    # A link to "." followed by a link through it that climbs out.
    data = build(
        special("here", tarfile.SYMTYPE, "."),
        special("here/out", tarfile.SYMTYPE, "../escape"),
    )
    refused(data, tmp_path / "out2", r"'here/out'")


def test_duplicate_file_and_directory_conflict(tmp_path: Path) -> None:
    refused(
        build(special("x", tarfile.DIRTYPE), file("x")), tmp_path / "out", r"file 'x' cannot be"
    )


def test_too_many_files(tmp_path: Path) -> None:
    data = build(*(file(f"f{i}.tf") for i in range(11)))
    refused(data, tmp_path / "out", r"more than 10 entries", max_files=10)
    assert extract_archive(data, tmp_path / "ok", max_bytes=MiB, max_files=11) == 11


def test_expands_past_max_bytes(tmp_path: Path) -> None:
    bomb = build(file("zeros.bin", b"\0" * (8 * MiB)))
    assert len(bomb) < 64 * 1024  # tiny on the wire
    refused(bomb, tmp_path / "out", r"expands past the limit of 1048576 bytes.*'zeros.bin'")


def test_many_small_files_add_up_past_max_bytes(tmp_path: Path) -> None:
    data = build(*(file(f"f{i}.tf", b"a" * 1000) for i in range(20)))
    refused(
        data,
        tmp_path / "out",
        r"expands past the limit of 10000 bytes \(at entry 'f10.tf'\)",
        max_bytes=10_000,
    )


def test_hardlinks_count_towards_max_bytes(tmp_path: Path) -> None:
    data = build(
        file("big", b"a" * 6000), *(special(f"h{i}", tarfile.LNKTYPE, "big") for i in range(3))
    )
    refused(data, tmp_path / "out", r"expands past the limit.*'h0'", max_bytes=10_000)


def _patch_size(raw: bytes, member_index: int, size: int) -> bytes:
    """Rewrite the size field of the n-th ustar header (and its checksum)."""
    blocks = bytearray(raw)
    offset = 0
    seen = 0
    while True:
        header = blocks[offset : offset + 512]
        if header[257:262] == b"ustar" and bytes(header[156:157]) in (b"0", b"\0"):
            if seen == member_index:
                break
            seen += 1
        real = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
        offset += 512 + (real + 511) // 512 * 512
    blocks[offset + 124 : offset + 136] = f"{size:011o}\0".encode()
    blocks[offset + 148 : offset + 156] = b" " * 8
    checksum = sum(blocks[offset : offset + 512])
    blocks[offset + 148 : offset + 156] = f"{checksum:06o}\0 ".encode()
    return bytes(blocks)


def test_headers_that_lie_about_sizes_are_refused(tmp_path: Path) -> None:
    raw = build(
        file("a.tf", b"A" * 4096), file("b.tf", b"B" * 10), compress=False, fmt=tarfile.USTAR_FORMAT
    )
    # Claims 10 bytes: the rest of the content is then read as a header.
    smaller = gzip.compress(_patch_size(raw, 0, 10))
    refused(smaller, tmp_path / "small", r"not a valid \.tar\.gz or \.tar archive")
    # Claims far more than there is: the archive ends early.
    larger = gzip.compress(_patch_size(raw, 1, 900_000))
    refused(larger, tmp_path / "large", r"not a valid|expands past")
    # Claims a small size under the limit while more data follows: still bounded.
    refused(gzip.compress(_patch_size(raw, 0, 600)), tmp_path / "mid", r"not a valid")


def test_huge_pax_header_is_bounded(tmp_path: Path) -> None:
    info, data = file("a.tf")
    info.pax_headers = {"comment": "x" * (20 * MiB)}
    bomb = build((info, data))
    assert len(bomb) < 256 * 1024
    # Refused from its 512-byte block: the 20 MiB of pax records are never read.
    refused(bomb, tmp_path / "out", r"pax extended header of \d+ bytes .* larger than 12288")


TRUNCATED_TAR = build(file("a.tf", bytes(range(256)) * 20), compress=False)
TRUNCATED_GZ = gzip.compress(TRUNCATED_TAR)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", r"archive is empty"),
        (b"hello, this is not an archive at all" * 20, r"not a valid \.tar\.gz or \.tar .*tar"),
        (b"PK\x03\x04" + b"\0" * 600, r"not a valid \.tar\.gz or \.tar archive"),
        (gzip.compress(b"just some text, not a tar" * 40), r"not a valid .*gzip-compressed"),
        (b"\x1f\x8b\x08\x00garbage-after-a-gzip-magic" * 4, r"not a valid .*gzip-compressed"),
        (TRUNCATED_GZ[: len(TRUNCATED_GZ) // 2], r"not a valid .*gzip-compressed"),
        (TRUNCATED_TAR[:1536], r"not a valid .*plain tar"),
        (TRUNCATED_TAR[: 512 + 5120], r"not a valid .*plain tar.*end-of-archive"),
    ],
    ids=[
        "empty",
        "text",
        "zip",
        "gzip-of-text",
        "bad-gzip",
        "truncated-gzip",
        "truncated-tar",
        "tar-no-end",
    ],
)
def test_garbage_is_refused(tmp_path: Path, data: bytes, match: str) -> None:
    refused(data, tmp_path / "out", match)


def _config_dir(root: Path) -> Path:
    src = root / "config"
    (src / "modules/net").mkdir(parents=True)
    (src / "main.tf").write_text('resource "terraform_data" "a" {}\n')
    (src / ".terraform.lock.hcl").write_text("# lock\n")
    (src / "modules/net/main.tf").write_text("# module\n")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    (src / "alias.tf").symlink_to("main.tf")
    for junk in (".terraform/providers", ".git/objects", "terraform.tfstate.d/dev"):
        (src / junk).mkdir(parents=True)
        (src / junk / "f").write_text("junk")
    (src / "terraform.tfstate").write_text("{}")
    (src / "terraform.tfstate.backup").write_text("{}")
    (src / "modules/net/terraform.tfstate").write_text("{}")
    outside = root / "shared.tf"
    outside.write_text("# shared, outside the tree\n")
    (src / "shared.tf").symlink_to(outside)
    return src


def test_make_archive_round_trip(tmp_path: Path) -> None:
    src = _config_dir(tmp_path)
    data = make_archive(src)
    assert data == make_archive(src), "deterministic"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = tar.getnames()
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in tar.getmembers())
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert names == [
        ".terraform.lock.hcl",
        "alias.tf",
        "main.tf",
        "modules",
        "modules/net",
        "modules/net/main.tf",
        "run.sh",
        "shared.tf",
    ]
    dest = tmp_path / "out"
    extract_archive(data, dest, max_bytes=MiB)
    assert (dest / "main.tf").read_text() == 'resource "terraform_data" "a" {}\n'
    assert os.readlink(dest / "alias.tf") == "main.tf"
    assert not (dest / "shared.tf").is_symlink()  # an outside link's content is taken
    assert (dest / "shared.tf").read_text() == "# shared, outside the tree\n"
    assert os.access(dest / "run.sh", os.X_OK)
    assert (dest / ".terraform.lock.hcl").exists()


def test_make_archive_survives_link_cycles(tmp_path: Path) -> None:
    src = tmp_path / "config"
    src.mkdir()
    (src / "main.tf").write_text("")
    (src / "loop").symlink_to(tmp_path)  # an ancestor, outside the tree
    (src / "broken.tf").symlink_to(tmp_path / "nope")
    with tarfile.open(fileobj=io.BytesIO(make_archive(src)), mode="r:gz") as tar:
        assert tar.getnames() == ["main.tf"]


def test_make_archive_output_is_identical_across_copies(tmp_path: Path) -> None:
    first = _config_dir(tmp_path / "one")
    second = _config_dir(tmp_path / "two")
    os.utime(second / "main.tf", (1, 1))
    make: Callable[[Path], bytes] = make_archive
    assert make(first) == make(second)


def raw_member(kind: bytes, data: bytes, name: str = "././@PaxHeader") -> bytes:
    """One tar member of any type, header and padded data, written by hand."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    padding = (-len(data)) % tarfile.BLOCKSIZE
    return info.tobuf(format=tarfile.USTAR_FORMAT) + data + b"\0" * padding


def record(keyword: bytes, value: bytes) -> bytes:
    """A pax record `LENGTH KEYWORD=VALUE\\n` whose length counts its own digits."""
    rest = b" " + keyword + b"=" + value + b"\n"
    length = len(rest) + len(str(len(rest)))
    length = len(rest) + len(str(length))
    return str(length).encode() + rest


def tar_of(*members: bytes) -> bytes:
    plain = build(file("main.tf", b"# ok\n"), compress=False, fmt=tarfile.USTAR_FORMAT)
    return gzip.compress(b"".join(members) + plain, mtime=0)


def test_cve_2024_6232_pax_bomb_is_refused_from_its_header_block(tmp_path: Path) -> None:
    """The stock parser's regex backtracks for hours on a pax header of digits; the block
    that announces it is refused before any of it is read."""
    # Half the size limit, so only the header check stands between it and the regex.
    bomb = tar_of(raw_member(tarfile.XHDTYPE, b"0" * (MiB // 2)))
    assert len(bomb) < 2048
    refused(bomb, tmp_path / "out", r"pax extended header of 524288 bytes", max_bytes=MiB)


@pytest.mark.parametrize(
    ("records", "match"),
    [
        (b"0" * 12000, r"malformed pax record at offset 512: no length"),
        (record(b"a", b"b") + b"1" * 11000, r"malformed pax record at offset 518"),
        (record(b"GNU.sparse.map", b"0,1,2,3"), r"GNU sparse file \(GNU.sparse.map\)"),
        (record(b"GNU.sparse.size", b"99"), r"GNU sparse file"),
        (record(b"hdrcharset", b"BINARY"), r"non-UTF-8 names"),
        (record(b"path", b"\xff\xfe"), r"not UTF-8"),
        (record(b"size", "٣٣".encode()), r"size that is not a number"),
        (b"99 path=short\n", r"malformed pax record"),
    ],
)
def test_malformed_or_sparse_pax_records_are_refused(
    tmp_path: Path, records: bytes, match: str
) -> None:
    refused(tar_of(raw_member(tarfile.XHDTYPE, records)), tmp_path / "out", match)


def test_gnu_sparse_entries_and_huge_long_names_are_refused(tmp_path: Path) -> None:
    refused(tar_of(raw_member(tarfile.GNUTYPE_SPARSE, b"x", "s")), tmp_path / "a", r"GNU sparse")
    long_name = raw_member(tarfile.GNUTYPE_LONGNAME, b"a" * (64 * 1024), "././@LongLink")
    refused(tar_of(long_name), tmp_path / "b", r"GNU long name of 65536 bytes")
    global_size = raw_member(tarfile.XGLTYPE, record(b"size", b"99"))
    refused(tar_of(global_size), tmp_path / "c", r"global pax header .* sets a size")


def test_pax_records_within_limits_still_work(tmp_path: Path) -> None:
    deep = "/".join(["d" * 200] * 15) + "/main.tf"  # a 3 KiB path: a pax 'path' record
    info, data = file(deep, b"# deep\n")
    info.pax_headers = {"comment": "héllo", "mtime": "1700000000.5"}
    extract_archive(build((info, data)), tmp_path / "out", max_bytes=MiB)
    assert (tmp_path / "out" / deep).read_bytes() == b"# deep\n"
