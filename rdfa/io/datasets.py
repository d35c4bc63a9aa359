"""Build the canonical dataset folder (``images/`` + ``gnd.json``) of each dataset.

``prepare_dataset(name, source, out_dir, options)`` handles ``oxford5k``,
``paris6k``, ``roxford5k``, ``rparis6k``, ``holidays``, ``coil100`` and
``custom``. ``source`` is

* ``None`` or ``"download"``: the official archives of :data:`OFFICIAL` are
  downloaded (resumable, verified where a checksum is known, else logged as
  UNVERIFIED) into ``options["download_dir"]`` (default
  ``<out_dir>/../downloads``, shared by the datasets so Oxford's images are
  fetched once for oxford5k and roxford5k), then used as a local folder. An
  HTML page served in place of a file is refused; a downloaded archive that
  turns out truncated or corrupt when extracted is moved to
  ``<name>.corrupt`` (the error says so) so that a rerun downloads it again
  (a local archive of the user's is only reported, never moved);
* a local archive file (``.tgz``/``.tar.gz``/``.tar``/``.zip``), or
* a local folder holding this dataset's archives under their official names
  (extracted into a temporary folder) and/or the already extracted files: every
  image file below it counts (hidden folders are skipped), so do not point it
  at a folder mixing several datasets unless ``options["imlist"]`` names the
  images to take.

Every image of the result is decoded once (Pillow); a corrupt one is an error
naming the file, except for Paris, whose known-corrupt images (20 in the
official archives) are dropped as the protocol says. The output is built in a
temporary sibling folder and renamed onto ``out_dir`` only when complete
(an existing ``out_dir`` is replaced then). Images extracted from archives are
moved in; images from a local folder are hard-linked when possible (same file
system), else copied (``options["link"] = "copy"`` forces copies).

Options (all optional) for every dataset but ``custom``:
  ``imlist``: the database image list (a names file such as ``imlist.txt`` /
  ``holidays_images.dat``, or a list), with or without extension; gives the
  order of ``imlist`` and restricts the images taken (others are dropped, and
  logged); a listed image that is missing is an error. Without it the images
  found are taken in sorted order (COIL-100: by object, then angle).
  ``download_dir``, ``sha256`` (file name -> hex digest, pins or overrides
  :data:`OFFICIAL`; also checked for local archives of that name), ``urls``
  (file name -> URL, e.g. a mirror).
Every dataset: ``link`` ("hardlink" | "copy"), ``workers`` (decoding threads),
``progress`` (tqdm bars: true/false, default only on a terminal),
``max_extract_bytes`` / ``max_extract_files`` (the most bytes and entries one
archive may extract to: default 32 GiB and 1,000,000; the bytes must also be
free on the disk).
Per dataset:
  oxford5k, paris6k: ``gt`` (the ground-truth folder or archive; default: the
  folder of ``*_query.txt`` files found in the source). paris6k: ``max_corrupt``
  (default 20: more undecodable images than this is an error; unused with
  ``imlist``, where every listed image must decode).
  roxford5k, rparis6k: ``gt`` (the revisitop ``gnd_r*.pkl``; default: the file
  of that name in the source); ``imlist`` does not apply (the pickle has it).
  holidays: ``max_side`` (default null: the size is kept, and the features
  stage's ``features.size.holidays`` applies the paper's 1024; a number
  shrinks the stored images' longer side to it, never enlarges), ``rotate`` (image name -> 90/180/270
  degrees CLOCKWISE to turn the image upright, applied after the EXIF
  orientation; a mapping or a JSON / "name degrees" text file),
  ``jpeg_quality`` (default 95, for the images that are re-encoded).
  coil100: ``query_angles`` (default [0, 90, 180, 270]).
  custom: a local folder (or archive of one) already in the canonical layout;
  every listed file is resolved (symbolic links followed) and the real file
  is hard-linked or copied, never the link; a link to a file outside the
  folder is an error unless ``allow_outside_links`` (default false) is true.
"""
from __future__ import annotations

import filecmp
import json
import logging
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from tqdm import tqdm

from .archive import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MEMBERS,
    TAR_SUFFIXES,
    ZIP_SUFFIXES,
    CorruptArchiveError,
    extract,
    is_archive,
)
from .atomic import atomic_path, write_json
from .download import corrupt_path, download, sha256_file, source_path
from .gnd import DatasetError, normalized_name, validate_gnd
from .groundtruth import (
    COIL100_QUERY_ANGLES,
    coil100_gnd,
    load_revisited_pickle,
    parse_coil100_name,
    parse_holidays,
    parse_oxford_style,
    read_name_list,
    with_extension,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Remote:
    """One official file: its local name, address, and size / sha256 when known (None: unknown)."""

    file: str
    url: str
    size: int | None = None
    sha256: str | None = None


_OX = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/"
_PA = "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/"
_RV = "http://cmp.felk.cvut.cz/revisitop/data/datasets/"
_HO = "ftp://ftp.inrialpes.fr/pub/lear/douze/data/"

#: The official addresses. No size or sha256 is recorded: none is published
#: by the dataset sites and none was measured here, so downloads are logged as
#: UNVERIFIED with their digest (pin it with ``options["sha256"]``).
OFFICIAL: dict[str, list[Remote]] = {
    "oxford5k": [Remote("oxbuild_images-v1.tgz", _OX + "oxbuild_images-v1.tgz"),
                 Remote("gt_files_170407.tgz", _OX + "gt_files_170407.tgz")],
    "paris6k": [Remote("paris_1-v1.tgz", _PA + "paris_1-v1.tgz"),
                Remote("paris_2-v1.tgz", _PA + "paris_2-v1.tgz"),
                Remote("paris_120310.tgz", _PA + "paris_120310.tgz")],
    "roxford5k": [Remote("oxbuild_images-v1.tgz", _OX + "oxbuild_images-v1.tgz"),
                  Remote("gnd_roxford5k.pkl", _RV + "roxford5k/gnd_roxford5k.pkl")],
    "rparis6k": [Remote("paris_1-v1.tgz", _PA + "paris_1-v1.tgz"),
                 Remote("paris_2-v1.tgz", _PA + "paris_2-v1.tgz"),
                 Remote("gnd_rparis6k.pkl", _RV + "rparis6k/gnd_rparis6k.pkl")],
    # ftp: urllib downloads it whole (no resume).
    "holidays": [Remote("jpg1.tar.gz", _HO + "jpg1.tar.gz"),
                 Remote("jpg2.tar.gz", _HO + "jpg2.tar.gz")],
    "coil100": [Remote("coil-100.zip",
                       "http://www.cs.columbia.edu/CAVE/databases/SLAM_coil-20_coil-100/coil-100/coil-100.zip")],
    "custom": [],
}

_TAR = r"\.(tgz|tar\.gz|tar)"
#: Archives of a local source folder that are extracted, by file name.
ARCHIVE_PATTERNS: dict[str, list[str]] = {
    "oxford5k": [rf"oxbuild_images.*{_TAR}", rf"gt_files.*{_TAR}"],
    "roxford5k": [rf"oxbuild_images.*{_TAR}"],
    "paris6k": [rf"paris_[12].*{_TAR}", rf"paris_120310.*{_TAR}"],
    "rparis6k": [rf"paris_[12].*{_TAR}"],
    "holidays": [rf"jpg[12]{_TAR}"],
    "coil100": [r"coil-?100.*\.zip"],
    "custom": [],
}

#: Official ground-truth file / folder names (for error messages and lookup).
GT_NAMES = {"oxford5k": "gt_files_170407", "paris6k": "paris_120310",
            "roxford5k": "gnd_roxford5k.pkl", "rparis6k": "gnd_rparis6k.pkl"}

DATASETS = tuple(OFFICIAL)
_COMMON = {"link", "workers", "progress", "max_extract_bytes", "max_extract_files"}
_SOURCED = _COMMON | {"download_dir", "sha256", "urls"}
OPTIONS: dict[str, set[str]] = {
    "oxford5k": _SOURCED | {"imlist", "gt"},
    "paris6k": _SOURCED | {"imlist", "gt", "max_corrupt"},
    "roxford5k": _SOURCED | {"gt"},
    "rparis6k": _SOURCED | {"gt"},
    "holidays": _SOURCED | {"imlist", "max_side", "rotate", "jpeg_quality"},
    "coil100": _SOURCED | {"imlist", "query_angles"},
    "custom": _COMMON | {"allow_outside_links"},
}

_SKIP_DIRS = re.compile(r"^\.")  # hidden folders, our own .tmp-* folders included


def prepare_dataset(name: str, source, out_dir, options: dict | None = None) -> dict:
    """Build ``out_dir`` (``images/`` + ``gnd.json``) for dataset ``name``; return its gnd.

    See the module docstring for ``source`` and ``options``. Raises
    ``DatasetError`` (a ``ValueError``) naming the file at fault,
    ``rdfa.io.download.DownloadError`` for a failed download.
    """
    if name not in OFFICIAL:
        raise DatasetError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}")
    options = dict(options or {})
    unknown = sorted(set(options) - OPTIONS[name])
    if unknown:
        raise DatasetError(f"dataset '{name}': unknown option(s) {', '.join(unknown)}; "
                           f"known: {', '.join(sorted(OPTIONS[name]))}")
    out_dir = Path(out_dir).absolute()
    ctx = _Context(name, out_dir, options)
    src = ctx.resolve_source(source)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-work-", dir=out_dir.parent))
    ctx.work = work
    try:
        with atomic_path(out_dir, directory=True) as tmp:
            os.chmod(tmp, _dir_mode())  # mkdtemp makes it private
            images = tmp / "images"
            images.mkdir()
            gnd = _BUILDERS[name](ctx, src, images)
            validate_gnd(gnd, str(out_dir / "gnd.json"), images)
            write_json(tmp / "gnd.json", gnd)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("%s: wrote %s (%d database images, %d queries)", name, out_dir,
             len(gnd["imlist"]), len(gnd["qimlist"]))
    return gnd


def _positive_int(name: str, options: dict, key: str, default: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DatasetError(f"dataset '{name}': option {key} must be a positive integer, got {value!r}")
    return value


def _dir_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


# --------------------------------------------------------------------------- context

class _Context:
    """Options, temporary work folder and file-gathering helpers of one run."""

    def __init__(self, name: str, out_dir: Path, options: dict):
        self.name = name
        self.out_dir = out_dir
        self.options = options
        self.work: Path | None = None
        self.link = options.get("link", "hardlink")
        if self.link not in ("hardlink", "copy"):
            raise DatasetError(f"dataset '{name}': option link must be 'hardlink' or 'copy', got {self.link!r}")
        workers = options.get("workers", min(8, os.cpu_count() or 1))
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise DatasetError(f"dataset '{name}': option workers must be a positive integer, got {workers!r}")
        self.workers = workers
        self.progress = options.get("progress")
        self.extract_limits = {
            "max_bytes": _positive_int(name, options, "max_extract_bytes", DEFAULT_MAX_BYTES),
            "max_members": _positive_int(name, options, "max_extract_files", DEFAULT_MAX_MEMBERS)}
        self.checksums = {r.file: r.sha256 for r in OFFICIAL[name] if r.sha256}
        pinned = options.get("sha256") or {}
        if not isinstance(pinned, dict):
            raise DatasetError(f"dataset '{name}': option sha256 must map file names to hex digests")
        self.checksums.update({k: str(v).lower() for k, v in pinned.items() if v})
        self.roots: list[tuple[Path, bool]] = []  # (folder, owned: files may be moved out)
        self.source_desc = ""
        self.download_files: list[Path] | None = None
        self.imlist_source: str | None = None
        self._extracted = 0
        self.extracted: dict[Path, Path] = {}  # temporary folder -> the archive it came from

    # ---- sources

    def resolve_source(self, source) -> Path:
        if source is None or (isinstance(source, str) and source == "download"):
            return self._download()
        src = Path(source).absolute()
        if not src.exists():
            raise DatasetError(f"{src}: source of dataset '{self.name}' not found")
        if src == self.out_dir or self.out_dir in src.parents:
            raise DatasetError(f"{src}: the source lies inside the output folder {self.out_dir}, "
                               f"which is replaced; move it elsewhere")
        return src

    def _download(self) -> Path:
        remotes = OFFICIAL[self.name]
        if not remotes:
            raise DatasetError(f"dataset '{self.name}' has no official download; give a local folder as source")
        ddir = Path(self.options.get("download_dir") or self.out_dir.parent / "downloads").absolute()
        if ddir == self.out_dir or self.out_dir in ddir.parents:
            raise DatasetError(f"{ddir}: the download folder lies inside the output folder {self.out_dir}")
        urls = self.options.get("urls") or {}
        for r in remotes:
            sha = self.checksums.get(r.file)
            if sha is None:
                log.warning("%s: no known sha256 for %s: the download is UNVERIFIED", self.name, r.file)
            # None of the official files is an HTML page: one served with status 200 is an
            # error page, never to be saved (kind), and an archive must look like one.
            kind = "archive" if r.file.lower().endswith(TAR_SUFFIXES + ZIP_SUFFIXES) else "binary"
            download(urls.get(r.file, r.url), ddir / r.file, sha256=sha, size=r.size,
                     progress=self.progress, kind=kind)
        self.download_files = [ddir / r.file for r in remotes]
        return ddir

    def open_source(self, src: Path, *, archives: bool = True) -> None:
        """Register the folders to search: ``src`` itself and its extracted archives."""
        self.source_desc = str(src)
        if src.is_file():
            if not is_archive(src):
                raise DatasetError(f"{src}: the source of dataset '{self.name}' is neither a folder "
                                   f"nor a .tgz/.tar.gz/.tar/.zip archive")
            self.roots.append((self._extract(src), True))
            return
        self.roots.append((src, False))
        if not archives:
            return
        if self.download_files is not None:
            found = [f for f in self.download_files if is_archive(f)]
        else:
            patterns = [re.compile(p, re.I) for p in ARCHIVE_PATTERNS[self.name]]
            found = sorted(f for f in src.iterdir()
                           if f.is_file() and any(p.fullmatch(f.name) for p in patterns))
        for f in found:
            self.roots.append((self._extract(f), True))

    def _extract(self, archive: Path) -> Path:
        expected = self.checksums.get(archive.name)
        if self.download_files is not None and archive in self.download_files:
            pass  # download() verified it (or logged it as unverified)
        elif expected:
            digest = sha256_file(archive)
            if digest != expected:
                raise DatasetError(f"{archive}: sha256 is {digest}, expected {expected}")
        elif archive.name in {r.file for r in OFFICIAL[self.name]}:
            log.warning("%s: no known sha256: UNVERIFIED archive", archive)
        self._extracted += 1
        dest = self.work / f"{self._extracted}-{archive.name}"
        self.extracted[dest] = archive
        try:
            extract(archive, dest, progress=self.progress, **self.extract_limits)
        except CorruptArchiveError as err:
            if self.download_files is None or archive not in self.download_files:
                raise  # the user's own file: theirs to replace
            # A bad download would be trusted by every later run (download() keeps a present
            # file): move it aside so that a rerun downloads it again.
            aside = corrupt_path(archive)
            os.replace(archive, aside)
            source_path(archive).unlink(missing_ok=True)
            raise DatasetError(f"{err}; moved it to {aside} so that a rerun downloads it again") from None
        return dest

    def describe(self, path: Path) -> str:
        """``path`` for messages: an extracted file is named by its archive and member."""
        for dest, archive in self.extracted.items():
            if dest in path.parents:
                return f"{archive} (member {path.relative_to(dest).as_posix()})"
        return str(path)

    def walk(self, skip: Iterable[Path] = ()):
        """Yield ``(path, owned)`` for every file below the registered folders."""
        skip = {Path(p).absolute() for p in skip} | {self.out_dir}
        for root, owned in self.roots:
            for dirpath, dirnames, filenames in os.walk(root):
                here = Path(dirpath)
                dirnames[:] = sorted(d for d in dirnames
                                     if not _SKIP_DIRS.match(d) and (here / d).absolute() not in skip)
                for fn in sorted(filenames):
                    yield here / fn, owned

    def find_images(self, accept: Callable[[str], bool], skip: Iterable[Path] = ()) -> dict[str, tuple[Path, bool]]:
        """Image files below the source whose base name ``accept`` takes: name -> (path, owned).

        Sub-folders are flattened; the same name twice with different bytes is
        an error naming both files.
        """
        found: dict[str, tuple[Path, bool]] = {}
        for path, owned in self.walk(skip):
            if not accept(path.name):
                continue
            if path.name in found:
                other = found[path.name][0]
                if not filecmp.cmp(other, path, shallow=False):
                    raise DatasetError(f"{self.describe(path)}: another image named {path.name} with "
                                       f"different content is at {self.describe(other)}; remove one of them")
                continue
            found[path.name] = (path, owned)
        return found

    # ---- image list

    def imlist_option(self, ext: str) -> list[str] | None:
        value = self.options.get("imlist")
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            names = [str(v).strip() for v in value]
            source = "options['imlist']"
        else:
            names = read_name_list(value)
            source = str(value)
        names = [with_extension(n, ext) for n in names]
        if len(set(names)) != len(names):
            raise DatasetError(f"{source}: names an image twice")
        self.imlist_source = source
        return names

    def select(self, found: dict, names: list[str] | None, order=sorted) -> list[str]:
        """The image names to take: ``names`` (all must be found) or all found, ordered."""
        if names is None:
            if not found:
                raise DatasetError(f"{self.source_desc}: no images of dataset '{self.name}' found")
            return list(order(found))
        missing = [n for n in names if n not in found]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise DatasetError(f"{self.imlist_source}: lists {len(missing)} image(s) not found in "
                               f"{self.source_desc}: {', '.join(missing[:5])}{more}")
        extra = len(found) - len(names)
        if extra > 0:
            log.info("%s: %d image(s) found in %s are not in %s; left out", self.name, extra,
                     self.source_desc, self.imlist_source)
        return names

    # ---- decoding and placing

    def map_images(self, func, items: list, desc: str) -> list:
        """Run ``func`` over ``items`` in threads with a progress bar; results in order."""
        with ThreadPoolExecutor(max_workers=self.workers) as pool, \
                tqdm(total=len(items), desc=f"{self.name}: {desc}", unit="img", leave=False,
                     disable=None if self.progress is None else not self.progress) as bar:
            results = []
            for res in pool.map(func, items):
                results.append(res)
                bar.update(1)
        return results

    def check_decodes(self, files: dict[str, Path]) -> dict[str, str]:
        """Decode every file; return name -> error for those that fail."""
        names = list(files)
        errors = self.map_images(lambda n: decode_error(files[n]), names, "decode check")
        return {n: e for n, e in zip(names, errors) if e is not None}

    def place(self, src: Path, dst: Path, owned: bool) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if owned:
            os.replace(src, dst)
            return
        if self.link == "hardlink":
            try:
                os.link(src, dst)
                return
            except OSError:
                pass
        shutil.copy2(src, dst)


def decode_error(path: Path) -> str | None:
    """None if ``path`` decodes as an image with Pillow, else why not."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad data
        return f"{type(err).__name__}: {err}"
    return None


def _corrupt_error(ctx: _Context, bad: dict[str, str], files: dict[str, Path]) -> DatasetError:
    lines = [f"{ctx.describe(files[n])}: cannot decode ({bad[n].replace(str(files[n]), files[n].name)})"
             for n in list(bad)[:5]]
    more = f"\n(and {len(bad) - 5} more)" if len(bad) > 5 else ""
    return DatasetError(f"{len(bad)} corrupt image(s):\n" + "\n".join(lines) + more)


def _place_all(ctx: _Context, found: dict[str, tuple[Path, bool]], names: list[str], images: Path) -> None:
    with tqdm(total=len(names), desc=f"{ctx.name}: place images", unit="img", leave=False,
              disable=None if ctx.progress is None else not ctx.progress) as bar:
        for n in names:
            src, owned = found[n]
            ctx.place(src, images / n, owned)
            bar.update(1)


def _is_jpg(name: str) -> bool:
    return name.lower().endswith(".jpg")


# --------------------------------------------------------------------------- ground-truth lookup

def _gt_path_option(ctx: _Context) -> Path | None:
    value = ctx.options.get("gt")
    if value is None:
        return None
    path = Path(value).absolute()
    if not path.exists():
        raise DatasetError(f"{path}: ground truth (option gt) not found")
    return path


def _oxford_gt_dir(ctx: _Context) -> Path:
    """The folder of ``*_query.txt`` files: option ``gt``, else the one in the source."""
    path = _gt_path_option(ctx)
    if path is not None:
        if path.is_file():
            path = ctx._extract(path)
        return _single_query_dir(ctx, [path], str(path))
    return _single_query_dir(ctx, [root for root, _ in ctx.roots], ctx.source_desc)


def _single_query_dir(ctx: _Context, roots: list[Path], where: str) -> Path:
    hits = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not _SKIP_DIRS.match(d)]
            if any(f.endswith("_query.txt") for f in filenames):
                hits.add(Path(dirpath))
    expected = GT_NAMES[ctx.name]
    if not hits:
        raise DatasetError(f"{where}: ground truth of '{ctx.name}' not found: expected {expected}.tgz or "
                           f"its folder {expected}/ of '<query>_query.txt' files (or option gt)")
    hits = sorted(hits)
    if len(hits) > 1 and all(_same_files(hits[0], h) for h in hits[1:]):
        hits = hits[:1]  # e.g. the archive and its extracted copy side by side
    if len(hits) > 1:
        raise DatasetError(f"{where}: several ground-truth folders: {', '.join(map(str, sorted(hits)))}; "
                           f"choose one with option gt")
    return hits[0]


def _same_files(a: Path, b: Path) -> bool:
    """Whether folders ``a`` and ``b`` hold the same files (names and bytes, top level)."""
    names_a = sorted(p.name for p in a.iterdir() if p.is_file())
    names_b = sorted(p.name for p in b.iterdir() if p.is_file())
    if names_a != names_b:
        return False
    match, mismatch, errors = filecmp.cmpfiles(a, b, names_a, shallow=False)
    return not mismatch and not errors


# --------------------------------------------------------------------------- builders

def _build_oxford_style(ctx: _Context, src: Path, images: Path) -> dict:
    paris = ctx.name == "paris6k"
    ctx.open_source(src)
    gt_dir = _oxford_gt_dir(ctx)
    found = ctx.find_images(_is_jpg, skip=[gt_dir])
    wanted = ctx.imlist_option(".jpg")
    names = ctx.select(found, wanted)
    # Parse the ground truth once before the long decoding pass: fails fast.
    _parse_oxford(ctx, gt_dir, names)
    files = {n: found[n][0] for n in names}
    bad = ctx.check_decodes(files)
    if bad and paris and wanted is None:
        limit = ctx.options.get("max_corrupt", 20)
        log.warning("paris6k: dropping %d undecodable image(s), as the protocol does: %s",
                    len(bad), ", ".join(sorted(bad)))
        if len(bad) > limit:
            raise DatasetError(f"paris6k: {len(bad)} undecodable images in {ctx.source_desc}, more than the "
                               f"{limit} expected (option max_corrupt):\n"
                               + str(_corrupt_error(ctx, bad, files)))
        names = [n for n in names if n not in bad]
    elif bad:
        raise _corrupt_error(ctx, bad, files)
    gnd = _parse_oxford(ctx, gt_dir, names)
    _place_all(ctx, found, names, images)
    return gnd


def _parse_oxford(ctx: _Context, gt_dir: Path, names: list[str]) -> dict:
    try:
        return parse_oxford_style(gt_dir, names, ".jpg")
    except DatasetError as err:
        raise DatasetError(f"{err} (the images of '{ctx.name}' were looked for in {ctx.source_desc})") from None


def _build_revisited(ctx: _Context, src: Path, images: Path) -> dict:
    ctx.open_source(src)
    pkl = _gt_path_option(ctx)
    expected = GT_NAMES[ctx.name]
    if pkl is None:
        hits = [p for p, _ in ctx.walk() if p.name == expected]
        if not hits:
            raise DatasetError(f"{ctx.source_desc}: ground truth '{expected}' of '{ctx.name}' not found "
                               f"(put it in the source folder or give option gt)")
        pkl = hits[0]
    gnd = load_revisited_pickle(pkl)
    names = list(dict.fromkeys(gnd["imlist"] + gnd["qimlist"]))
    found = ctx.find_images(_is_jpg)
    missing = [n for n in names if n not in found]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise DatasetError(f"{pkl}: names {len(missing)} image(s) not found in {ctx.source_desc}: "
                           f"{', '.join(missing[:5])}{more}")
    _check_and_place(ctx, found, names, images)
    return gnd


def _check_and_place(ctx: _Context, found: dict, names: list[str], images: Path) -> None:
    """Check that every image decodes (an error names the bad ones), then place them under images/."""
    files = {n: found[n][0] for n in names}
    bad = ctx.check_decodes(files)
    if bad:
        raise _corrupt_error(ctx, bad, files)
    _place_all(ctx, found, names, images)


def _build_coil100(ctx: _Context, src: Path, images: Path) -> dict:
    ctx.open_source(src)

    def is_coil(n: str) -> bool:
        return re.fullmatch(r"obj\d+__\d+\.png", n) is not None

    found = ctx.find_images(is_coil)
    angles = ctx.options.get("query_angles", COIL100_QUERY_ANGLES)
    names = ctx.select(found, ctx.imlist_option(".png"), order=lambda f: sorted(f, key=parse_coil100_name))
    gnd = coil100_gnd(names, ctx.source_desc, query_angles=angles)
    _check_and_place(ctx, found, names, images)
    return gnd


def _read_rotate(ctx: _Context, names: list[str]) -> dict[str, int]:
    value = ctx.options.get("rotate") or {}
    source = "options['rotate']"
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        source = str(path)
        if not path.is_file():
            raise DatasetError(f"{path}: rotation list (option rotate) not found")
        text = path.read_text()
        if path.suffix.lower() == ".json":
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}: not valid JSON ({err})") from None
        else:
            value = {}
            for lineno, line in enumerate(text.splitlines(), 1):
                fields = line.split("#")[0].split()
                if not fields:
                    continue
                if len(fields) != 2:
                    raise DatasetError(f"{path}:{lineno}: expected 'name degrees', got {line!r}")
                value[fields[0]] = fields[1]
    if not isinstance(value, dict):
        raise DatasetError(f"{source}: must map image names to 90, 180 or 270 (degrees clockwise)")
    known = set(names)
    out = {}
    for key, deg in value.items():
        name = with_extension(str(key), ".jpg")
        try:
            deg = int(deg)
        except (TypeError, ValueError):
            deg = None
        if deg not in (0, 90, 180, 270):
            raise DatasetError(f"{source}: rotation of {key!r} must be 90, 180 or 270 (degrees clockwise), "
                               f"got {value[key]!r}")
        if name not in known:
            raise DatasetError(f"{source}: names image {key!r}, which is not among the {len(names)} "
                               f"Holidays images")
        if deg:
            out[name] = deg
    return out


def _build_holidays(ctx: _Context, src: Path, images: Path) -> dict:
    ctx.open_source(src)
    found = ctx.find_images(_is_jpg)
    names = ctx.select(found, ctx.imlist_option(".jpg"))
    gnd = parse_holidays(names, ctx.imlist_source or ctx.source_desc)
    rotate = _read_rotate(ctx, names)
    max_side = ctx.options.get("max_side", None)
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 0):
        raise DatasetError(f"holidays: option max_side must be a positive integer or null, got {max_side!r}")
    quality = ctx.options.get("jpeg_quality", 95)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise DatasetError(f"holidays: option jpeg_quality must be an integer in 1..100, got {quality!r}")

    def work(name: str) -> str | None:
        path, owned = found[name]
        try:
            changed = normalize_image(path, images / name, max_side=max_side or None,
                                      rotate=rotate.get(name, 0), quality=quality)
        except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad data
            return f"{type(err).__name__}: {err}"
        if not changed:
            ctx.place(path, images / name, owned)
        return None

    results = ctx.map_images(work, names, "orient/resize")
    bad = {n: e for n, e in zip(names, results) if e is not None}
    if bad:
        raise _corrupt_error(ctx, bad, {n: found[n][0] for n in names})
    return gnd


def normalize_image(src: Path, dst: Path, *, max_side: int | None, rotate: int = 0,
                    quality: int = 95) -> bool:
    """Apply EXIF orientation, then ``rotate`` degrees clockwise, then shrink to ``max_side``.

    Writes ``dst`` (JPEG, ``quality``) and returns True when anything changed;
    returns False (``dst`` not written) when the image is fine as it is.
    Raises Pillow's error when ``src`` does not decode.
    """
    from PIL import Image, ImageOps

    with Image.open(src) as img:
        img.load()
        orientation = img.getexif().get(0x0112, 1)
        needs_exif = orientation not in (None, 1)
        too_big = bool(max_side) and max(img.size) > max_side
        if not (needs_exif or rotate or too_big):
            return False
        out = ImageOps.exif_transpose(img) if needs_exif else img.copy()
    if rotate:
        # Image.rotate/transpose turn counter-clockwise: 90 clockwise == ROTATE_270.
        out = out.transpose({90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180,
                             270: Image.Transpose.ROTATE_90}[rotate])
    if max_side and max(out.size) > max_side:
        w, h = out.size
        scale = max_side / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        out = out.resize(size, Image.Resampling.LANCZOS)
    if out.mode not in ("RGB", "L"):
        out = out.convert("RGB")
    dst.parent.mkdir(parents=True, exist_ok=True)
    out.save(dst, "JPEG", quality=quality)
    return True


def _build_custom(ctx: _Context, src: Path, images: Path) -> dict:
    if src.is_file():
        ctx.open_source(src, archives=False)
        root = ctx.roots[0][0]
        owned = True
        if not (root / "gnd.json").exists():
            subs = [d for d in root.iterdir() if d.is_dir() and (d / "gnd.json").is_file()]
            if len(subs) == 1:
                root = subs[0]
    else:
        root, owned = src, False
        ctx.source_desc = str(src)
    gnd_path = root / "gnd.json"
    if not gnd_path.is_file():
        raise DatasetError(f"{gnd_path}: ground-truth file not found (a custom dataset is a folder with "
                           f"images/ and gnd.json)")
    try:
        gnd = json.loads(gnd_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{gnd_path}: not valid JSON ({err})") from None
    # Checks the names too (relative, no '..', './x.jpg' and 'x.jpg' are one file).
    validate_gnd(gnd, str(gnd_path), root / "images")
    names = list(dict.fromkeys(normalized_name(n) for n in gnd["imlist"] + gnd["qimlist"]))
    files = {n: root / "images" / n for n in names}
    allow_outside = ctx.options.get("allow_outside_links", False)
    if not isinstance(allow_outside, bool):
        raise DatasetError(f"dataset 'custom': option allow_outside_links (data.custom.allow_outside_links) "
                           f"must be true or false, got {allow_outside!r}")
    resolved = {n: resolve_inside(files[n], root, allow_outside) for n in names}
    bad = ctx.check_decodes(resolved)
    if bad:
        raise _corrupt_error(ctx, bad, files)
    for n in names:
        # A linked file is hard-linked or copied, never moved (the target may be listed
        # twice, or be the user's) and never placed as the link itself (a relative link
        # would dangle in data/).
        linked = resolved[n] != root.resolve() / "images" / n
        ctx.place(resolved[n], images / n, owned and not linked)
    return gnd


def resolve_inside(path: Path, root: Path, allow_outside: bool = False) -> Path:
    """The file ``path`` really is (symbolic links followed), refused when outside ``root``.

    A link out of the dataset folder would pull an arbitrary file (anything the
    user can read) into data/ and DVC's cache; ``allow_outside`` says that is
    intended. Raises ``DatasetError`` naming the link and its target.
    """
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError) as err:  # dangling link, link loop
        raise DatasetError(f"{path}: cannot resolve the file ({err})") from None
    top = root.resolve()
    if not allow_outside and top not in real.parents:
        raise DatasetError(
            f"{path}: resolves through a symbolic link to {real}, outside the dataset folder {top}; "
            f"refusing to copy it into the dataset (set data.custom.allow_outside_links: true to allow links "
            f"out of the folder)")
    return real


_BUILDERS = {
    "oxford5k": _build_oxford_style,
    "paris6k": _build_oxford_style,
    "roxford5k": _build_revisited,
    "rparis6k": _build_revisited,
    "holidays": _build_holidays,
    "coil100": _build_coil100,
    "custom": _build_custom,
}
