"""Reading tar and zip archives without trusting them: no absolute paths, no '..', no links out, no devices."""

from __future__ import annotations

import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kdistill.errors import DataError


@dataclass(frozen=True)
class Member:
    name: str
    read: Callable[[], bytes]


def _check_member_name(archive: Path, name: str) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise DataError(f"{archive}: refused member {name!r}: absolute path")
    if ".." in path.parts:
        raise DataError(f"{archive}: refused member {name!r}: '..' in path")


def _link_escapes(name: str, target: str) -> bool:
    resolved: list[str] = list(PurePosixPath(name).parent.parts)
    if target.startswith("/"):
        return True
    for part in PurePosixPath(target).parts:
        if part == "..":
            if not resolved:
                return True
            resolved.pop()
        elif part != ".":
            resolved.append(part)
    return False


def _tar_members(archive: Path) -> Iterator[Member]:
    with tarfile.open(archive, "r:*") as tar:
        for info in tar:
            _check_member_name(archive, info.name)
            if info.isdev():
                raise DataError(f"{archive}: refused member {info.name!r}: device or fifo file")
            if (info.issym() or info.islnk()) and _link_escapes(info.name, info.linkname):
                raise DataError(f"{archive}: refused member {info.name!r}: link to {info.linkname!r} leaves the archive")
            if info.isfile():
                yield Member(info.name, _guarded(archive, lambda info=info: tar.extractfile(info).read()))


def _zip_members(archive: Path) -> Iterator[Member]:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            _check_member_name(archive, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise DataError(f"{archive}: refused member {info.filename!r}: symbolic link")
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                raise DataError(f"{archive}: refused member {info.filename!r}: device or fifo file")
            if not info.is_dir():
                yield Member(info.filename, _guarded(archive, lambda info=info: zf.read(info)))


_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error)


def _guarded(archive: Path, read: Callable[[], bytes]) -> Callable[[], bytes]:
    def guarded_read() -> bytes:
        try:
            return read()
        except _ARCHIVE_ERRORS as error:
            raise DataError(f"{archive}: unreadable or truncated archive: {error}") from None

    return guarded_read


def archive_members(archive: Path) -> Iterator[Member]:
    """Regular files of a tar (any compression) or zip archive, refusing unsafe members."""
    try:
        if zipfile.is_zipfile(archive):
            yield from _zip_members(archive)
        else:
            yield from _tar_members(archive)
    except _ARCHIVE_ERRORS as error:
        raise DataError(f"{archive}: unreadable or truncated archive: {error}") from None
