"""Safe, atomic extraction of .tar/.tgz/.tar.gz/.tar.bz2/.tar.xz and .zip archives.

``extract(archive, out_dir)`` checks every member before writing anything and
refuses the whole archive (``ArchiveError`` naming it and the member) when a
member has an absolute path, a ``..`` component, is a link pointing outside
the extraction folder, or is a device/fifo. Extraction goes into a temporary
sibling folder renamed onto ``out_dir`` at the end, so an interrupted or failed
extraction (truncated or corrupt archive: also an ``ArchiveError`` naming the
file) leaves nothing behind.

Before anything is written the archive's member count and total extracted
size are checked against ``max_members`` / ``max_bytes`` (an archive bomb, or
the wrong file, stops with an error instead of filling the disk) and the size
against the free space of the target's file system.
"""
from __future__ import annotations

import gzip
import logging
import lzma
import os
import posixpath
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from .atomic import atomic_path
from .gnd import DatasetError

log = logging.getLogger(__name__)

TAR_SUFFIXES = (".tar", ".tgz", ".tar.gz", ".tbz2", ".tar.bz2", ".txz", ".tar.xz")
ZIP_SUFFIXES = (".zip",)
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error,
            gzip.BadGzipFile, lzma.LZMAError)

#: Default caps of ``extract``: far above the largest official archive (Paris,
#: about 1.3 GB and 3,000 files each), far below what would fill a disk.
DEFAULT_MAX_BYTES = 32 << 30
DEFAULT_MAX_MEMBERS = 1_000_000

_FILTER_ERRORS = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()


class ArchiveError(DatasetError):
    """An archive is unsafe, too big, truncated or corrupt; the message names the file."""


class CorruptArchiveError(ArchiveError):
    """The file is not a readable archive (truncated, corrupt, or something else entirely)."""


#: Leading bytes of the compressed formats (tar inside, or zip).
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"),
          (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"))


def sniff_archive(path: str | os.PathLike) -> str | None:
    """The archive format of ``path`` from its first bytes ('gzip', 'bzip2', 'xz', 'zip', 'tar'), or None.

    Tells an archive from, say, an HTML error page saved under the archive's
    name, without reading the whole file. A plain tar has "ustar" at byte 257
    (POSIX/GNU); an old V7 tar, without it, is recognised by its header.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[257:262] == b"ustar":
        return "tar"
    try:
        return "tar" if len(head) == 512 and tarfile.is_tarfile(path) else None
    except OSError:
        return None


def archive_kind(path: str | os.PathLike) -> str | None:
    """'tar', 'zip' or None (not an archive), from the name, else from the content."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(ZIP_SUFFIXES):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if not path.is_file():
        return None
    try:
        if zipfile.is_zipfile(path):
            return "zip"
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        return None
    return None


def is_archive(path: str | os.PathLike) -> bool:
    return Path(path).is_file() and archive_kind(path) is not None


def _norm(name: str) -> str:
    """Member name without leading './' and trailing '/'; '' for the root."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    return "" if name == "." else name


def _unsafe_path(name: str) -> str | None:
    """Why ``name`` (a raw member name) may not be extracted, or None."""
    raw = name.replace("\\", "/")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        return "has an absolute path"
    if ".." in raw.split("/"):
        return "has a '..' component"
    if "\x00" in raw:
        return "has a NUL byte in its name"
    return None


def _link_escapes(member: str, linkname: str, *, hard: bool) -> bool:
    link = linkname.replace("\\", "/")
    if link.startswith("/") or re.match(r"^[A-Za-z]:", link):
        return True
    base = "" if hard else posixpath.dirname(_norm(member))
    target = posixpath.normpath(posixpath.join(base, link)) if (base or link) else "."
    return target == ".." or target.startswith("../")


def _select(archive: Path, names: list[str], members: Iterable[str] | None) -> set[int]:
    """Indices of the entries of ``names`` (normalized) that ``members`` asks for."""
    if members is None:
        return set(range(len(names)))
    wanted = [_norm(m) for m in members]
    chosen: set[int] = set()
    for want in wanted:
        hits = [i for i, n in enumerate(names) if n == want or (want and n.startswith(want + "/"))
                or want == ""]
        if not hits:
            raise ArchiveError(f"{archive}: has no member named '{want}'; nothing was extracted")
        chosen.update(hits)
    return chosen


def list_files(archive: str | os.PathLike) -> list[str]:
    """Normalized names of the regular files in ``archive`` (raises ArchiveError if corrupt)."""
    archive = Path(archive)
    kind = archive_kind(archive)
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                return [_norm(i.filename) for i in zf.infolist() if not i.is_dir()]
        if kind == "tar":
            with tarfile.open(archive, "r:*") as tf:
                return [_norm(m.name) for m in tf.getmembers() if m.isfile()]
    except _CORRUPT as err:
        raise CorruptArchiveError(f"{archive}: truncated or corrupt archive ({type(err).__name__}: {err})") from None
    raise CorruptArchiveError(f"{archive}: not a .tar/.tgz/.tar.gz/.zip archive")


def extract(archive: str | os.PathLike, out_dir: str | os.PathLike, *,
            members: Iterable[str] | None = None, replace: bool = False,
            progress: bool | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
            max_members: int = DEFAULT_MAX_MEMBERS) -> Path:
    """Extract ``archive`` (tar family or zip) into ``out_dir``; return ``out_dir``.

    ``members``: names (as in the archive, with or without a leading './') to
    extract; a folder name selects everything below it. None: all.
    ``out_dir`` must not exist or be empty unless ``replace=True`` (then its old
    content is swapped out at the end). Nothing is written unless every member
    of the archive passes the safety checks. ``max_bytes`` / ``max_members``:
    the most bytes the extracted files may hold and the most entries the
    archive may have; the bytes must also fit in the free disk space.
    """
    archive = Path(archive)
    out_dir = Path(out_dir)
    if not archive.is_file():
        raise ArchiveError(f"{archive}: archive not found")
    if out_dir.exists() and not replace:
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir}: already exists and is not empty; extracting "
                                  f"{archive} would replace it (pass replace=True)")
    kind = archive_kind(archive)
    if kind is None:
        raise CorruptArchiveError(f"{archive}: not a .tar/.tgz/.tar.gz/.zip archive")
    log.info("extracting %s into %s", archive, out_dir)
    limits = _Limits(archive, out_dir, max_bytes, max_members)
    try:
        if kind == "zip":
            _extract_zip(archive, out_dir, members, progress, limits)
        else:
            _extract_tar(archive, out_dir, members, progress, limits)
    except _FILTER_ERRORS as err:  # Python's own extraction filter, behind our checks
        raise ArchiveError(f"{archive}: refusing a member: {err}; nothing was extracted") from None
    except _CORRUPT as err:
        raise CorruptArchiveError(f"{archive}: truncated or corrupt archive ({type(err).__name__}: {err}); "
                                  f"nothing was extracted") from None
    return out_dir


class _Limits:
    """The size checks of one extraction, each an ``ArchiveError`` naming the archive."""

    def __init__(self, archive: Path, out_dir: Path, max_bytes: int, max_members: int):
        self.archive, self.out_dir = archive, out_dir
        self.max_bytes, self.max_members = max_bytes, max_members

    def count(self, n: int) -> None:
        """Called as entries are read, so a huge listing is not held in memory first."""
        if n > self.max_members:
            raise ArchiveError(f"{self.archive}: more than {self.max_members} entries (limit max_members); "
                               f"nothing was extracted")

    def size(self, total: int) -> None:
        if total > self.max_bytes:
            raise ArchiveError(f"{self.archive}: would extract {total} bytes, more than the limit of "
                               f"{self.max_bytes} (max_bytes); nothing was extracted")
        where = _existing_ancestor(self.out_dir)
        free = free_bytes(where)
        if total > free:
            raise ArchiveError(f"{self.archive}: would extract {total} bytes, but only {free} are free "
                               f"on the disk of {where}; nothing was extracted")


def free_bytes(path: Path) -> int:
    """Free bytes on the file system of ``path`` (a function of its own, so tests can stand in)."""
    return shutil.disk_usage(path).free


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _dir_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def _bar(total: int, archive: Path, progress: bool | None):
    return tqdm(total=total, desc=f"extract {archive.name}", unit="file", leave=False,
                disable=None if progress is None else not progress)


def _extract_tar(archive: Path, out_dir: Path, members, progress, limits: _Limits) -> None:
    with tarfile.open(archive, "r:*") as tf:
        infos = []
        for m in tf:  # reads the whole stream: finds truncation early
            infos.append(m)
            limits.count(len(infos))
        for m in infos:
            why = _unsafe_path(m.name)
            if why is None:
                if m.issym() and _link_escapes(m.name, m.linkname, hard=False):
                    why = f"is a symbolic link to '{m.linkname}', outside the extraction folder"
                elif m.islnk() and (_unsafe_path(m.linkname) or _link_escapes(m.name, m.linkname, hard=True)):
                    why = f"is a hard link to '{m.linkname}', outside the extraction folder"
                elif m.ischr() or m.isblk() or m.isfifo():
                    why = "is a device file or fifo"
            if why:
                raise ArchiveError(f"{archive}: refusing member '{m.name}': it {why}; nothing was extracted")
        if _is_plain_tar(archive):
            # A cut inside the last file's data is not seen by getmembers.
            real = archive.stat().st_size
            for m in infos:
                if m.isfile() and m.offset_data + m.size > real:
                    raise tarfile.ReadError(
                        f"member '{m.name}' needs bytes up to {m.offset_data + m.size}, "
                        f"the file has {real}")
        names = [_norm(m.name) for m in infos]
        chosen = _select(archive, names, members)
        selected = [m for i, m in enumerate(infos) if i in chosen and names[i]]
        limits.size(sum(m.size for m in selected if m.isfile()))
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        with atomic_path(out_dir, directory=True) as tmp, _bar(len(selected), archive, progress) as bar:
            os.chmod(tmp, _dir_mode())  # mkdtemp makes it private
            def counted():
                for m in selected:
                    yield m
                    bar.update(1)
            # extractall sets folder permissions last, so read-only folders work.
            tf.extractall(tmp, members=counted(), **kwargs)


def _is_plain_tar(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(6)
    return not (head.startswith(b"\x1f\x8b") or head.startswith(b"BZh")
                or head.startswith(b"\xfd7zXZ\x00"))


def _extract_zip(archive: Path, out_dir: Path, members, progress, limits: _Limits) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        limits.count(len(infos))
        for info in infos:
            why = _unsafe_path(info.filename)
            mode = info.external_attr >> 16
            if why is None and stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8", "replace")
                if _link_escapes(info.filename, target, hard=False):
                    why = f"is a symbolic link to '{target}', outside the extraction folder"
            if why:
                raise ArchiveError(f"{archive}: refusing member '{info.filename}': it {why}; "
                                   f"nothing was extracted")
        names = [_norm(i.filename) for i in infos]
        chosen = _select(archive, names, members)
        selected = [i for n, i in enumerate(infos) if n in chosen and names[n]]
        # file_size is what zipfile will write at most: it stops reading a member there.
        limits.size(sum(i.file_size for i in selected if not i.is_dir()))
        with atomic_path(out_dir, directory=True) as tmp, _bar(len(selected), archive, progress) as bar:
            os.chmod(tmp, _dir_mode())  # mkdtemp makes it private
            for info in selected:
                target = tmp / _norm(info.filename)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as dst:  # checks the CRC
                        shutil.copyfileobj(src, dst, 1 << 20)
                bar.update(1)
