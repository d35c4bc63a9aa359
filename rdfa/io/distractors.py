"""Distractor sets: images added to a dataset's database at search time, streamed one by one.

A distractor set (params.yaml ``distractors: {dataset: set}``) is never laid
out as ``data/<set>/images``: R1M is a million files (DVC is slow with that
many, and they would not fit on most disks beside their features). The
``distractors`` stage takes each image from its source straight to its
whitened region descriptors (``rdfa.io.describe``) and keeps only those. The
sources (``sources.<set>``):

* ``download``: the revisitop 1M distractors (R1M, ``set`` ``r1m``) from the
  official addresses of the revisitop project: the image list
  ``revisitop1m.txt`` and the 100 archives ``jpg/revisitop1m.<i>.tar.gz``,
  downloaded one by one as the images are needed (``rdfa.io.download``:
  resumable, checksummed when ``data.<set>.sha256`` pins a file) and read
  member by member, never extracted;
* ``generated``: scenes made like ``synth_train``'s (``rdfa.io.synth``: no
  object of synth's queries in them), rendered and JPEG-coded in memory;
* a folder: its images (sorted by path), or, if it holds the R1M files
  (``revisitop1m.txt`` and archives), those, read as the download is.

``data.<set>.max_images`` keeps the first N images of the set's order (R1M:
the image list's), so that a user can try 10k before 1M.
"""
from __future__ import annotations

import io
import logging
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets import Remote
from .download import download

log = logging.getLogger(__name__)

#: The revisitop 1M distractors' official addresses (filipradenovic/revisitop, ``download_distractors``).
R1M_BASE = "http://ptak.felk.cvut.cz/revisitop/revisitop1m/"
R1M_LIST = Remote("revisitop1m.txt", R1M_BASE + "revisitop1m.txt")
R1M_ARCHIVES = [Remote(f"revisitop1m.{i}.tar.gz", f"{R1M_BASE}jpg/revisitop1m.{i}.tar.gz") for i in range(1, 101)]

#: Options of ``data.<set>`` per kind of source.
GENERATED_OPTIONS = {"seed", "n_images", "width", "height", "quality", "test", "max_images"}
DOWNLOAD_OPTIONS = {"max_images", "download_dir", "urls", "sha256"}
FOLDER_OPTIONS = {"max_images"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class DistractorError(ValueError):
    """A distractor set cannot be read; the message names the parameter or file."""


@dataclass(frozen=True)
class Job:
    """One distractor image to describe: its ``name`` and where its pixels come from (``kind``):
    ``file`` (a path), ``bytes`` (an encoded image read from an archive) or ``scene`` (the index
    of a generated scene in the set's plan)."""

    name: str
    kind: str
    payload: object


def _check_options(set_name: str, options: dict, known: set[str], kind: str) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise DistractorError(f"params.yaml: unknown option(s) {', '.join(f'data.{set_name}.{k}' for k in unknown)} "
                              f"for a {kind} distractor set (known: {', '.join(sorted(known))})")


def _max_images(set_name: str, options: dict) -> int | None:
    value = options.get("max_images")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DistractorError(f"params.yaml: 'data.{set_name}.max_images' must be a positive integer or null "
                              f"(got {value!r})")
    return value


class DistractorSet:
    """The images of one distractor set, in a fixed order, handed out shard by shard.

    ``names``: every image's name, in order (known before any pixel is read);
    ``record``: what that list depends on (for the stage's digest); :meth:`jobs`
    yields the :class:`Job` of each image of a range of the list, in order,
    reading (or downloading) only what that range needs.
    """

    def __init__(self, set_name: str, source, options: dict | None, root: Path):
        self.set_name = set_name
        self.options = dict(options or {})
        self.root = Path(root)
        self.plan = None
        self._archives: list[Path | Remote] = []
        if source == "generated":
            self.kind = "generated"
            self._init_generated()
        elif source == "download":
            self.kind = "download"
            self._init_r1m(None)
        elif isinstance(source, str) and source:
            self.kind = "folder"
            self._init_folder(self.root / source if not Path(source).is_absolute() else Path(source))
        else:
            raise DistractorError(f"params.yaml: 'sources.{set_name}' must be 'download', 'generated' or a folder "
                                  f"(got {source!r})")
        limit = _max_images(set_name, self.options)
        if limit is not None and limit < len(self.names):
            self.names = self.names[:limit]
        if not self.names:
            raise DistractorError(f"distractor set '{set_name}': no images")

    # ---- sources

    def _init_generated(self) -> None:
        from .synth import plan_synth_train

        _check_options(self.set_name, self.options, GENERATED_OPTIONS, "generated")
        opts = {k: v for k, v in self.options.items() if k != "max_images"}
        n = opts.get("n_images", 240)
        limit = _max_images(self.set_name, self.options)
        if limit is not None:  # scenes are drawn one after the other: the first N do not depend on the rest
            opts["n_images"] = min(n, limit)
        try:  # errors name data.<set>.<key>
            self.plan = plan_synth_train(**opts, param=f"data.{self.set_name}.")
        except ValueError as err:
            raise DistractorError(f"params.yaml: {err}") from None
        self.quality = int(self.options.get("quality", 92))
        self.names = [f"{self.set_name}/{scene.name}" for scene in self.plan.db]
        self.source_record = {"generated": {k: self.options.get(k) for k in sorted(GENERATED_OPTIONS - {"max_images"})}}

    def _init_r1m(self, folder: Path | None) -> None:
        _check_options(self.set_name, self.options, DOWNLOAD_OPTIONS if folder is None else FOLDER_OPTIONS,
                       "download" if folder is None else "folder")
        if folder is None:
            ddir = Path(self.options.get("download_dir") or self.root / "data" / "downloads" / self.set_name)
            self.download_dir = ddir
            listing = self._fetch(R1M_LIST)
            self._archives = list(R1M_ARCHIVES)
        else:
            listing = folder / R1M_LIST.file
            archive = re.compile(r"revisitop1m\.\d+\.tar(\.gz)?")
            self._archives = sorted((p for p in folder.iterdir() if archive.fullmatch(p.name)),
                                    key=lambda p: int(p.name.split(".")[1]))
            if not self._archives:
                raise DistractorError(f"{folder}: {R1M_LIST.file} but no revisitop1m.<i>.tar.gz archive beside it")
        lines = [line.strip() for line in listing.read_text().splitlines()]
        self.names = [line for line in lines if line]
        self.source_record = {"r1m_list": _digest_file(listing)}

    def _init_folder(self, folder: Path) -> None:
        if not folder.is_dir():
            raise DistractorError(f"{folder}: source of distractor set '{self.set_name}' (sources.{self.set_name}) "
                                  "is not a folder")
        if (folder / R1M_LIST.file).is_file():
            self._init_r1m(folder)
            return
        _check_options(self.set_name, self.options, FOLDER_OPTIONS, "folder")
        self.folder = folder
        self.names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                            and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        self.source_record = {"folder": str(folder)}

    def _fetch(self, remote: Remote) -> Path:
        urls = self.options.get("urls") or {}
        pinned = self.options.get("sha256") or {}
        if not isinstance(urls, dict) or not isinstance(pinned, dict):
            raise DistractorError(f"params.yaml: 'data.{self.set_name}.urls' and '.sha256' map file names to "
                                  "addresses / hex digests")
        sha = pinned.get(remote.file)
        if sha is None:
            log.warning("%s: no known sha256 for %s: the download is UNVERIFIED", self.set_name, remote.file)
        kind = "archive" if remote.file.endswith(".tar.gz") else "binary"
        return download(urls.get(remote.file, remote.url), self.download_dir / remote.file, sha256=sha,
                        size=remote.size, kind=kind)

    # ---- images

    def record(self) -> dict:
        """What the list of images and their pixels depend on."""
        return {"source": self.source_record, "n_images": len(self.names)}

    def jobs(self, start: int, stop: int) -> Iterator[Job]:
        """The images ``names[start:stop]``, in order."""
        if self.kind == "generated":
            for i in range(start, stop):
                yield Job(self.names[i], "scene", i)
        elif self._archives:
            yield from self._archive_jobs(start, stop)
        else:
            for name in self.names[start:stop]:
                yield Job(name, "file", self.folder / name)

    def _archive_jobs(self, start: int, stop: int) -> Iterator[Job]:
        """Read the archives in order until every image of the range is found, then hand them out in list order.

        The members are matched to the list by path (a member may carry a leading folder);
        the bytes of the range only are kept, so memory is bounded by the shard.
        """
        wanted = {name: i for i, name in enumerate(self.names[start:stop])}
        found: dict[int, bytes] = {}
        for archive in self._archives:
            path = self._fetch(archive) if isinstance(archive, Remote) else archive
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    # The member's path, or any tail of it after a folder (jpg/<name> for <name>).
                    parts = member.name.lstrip("./").split("/")
                    index = next((wanted[tail] for tail in ("/".join(parts[k:]) for k in range(len(parts)))
                                  if tail in wanted), None)
                    if index is not None and index not in found:
                        found[index] = tar.extractfile(member).read()
                        if len(found) == len(wanted):
                            break
            if len(found) == len(wanted):
                break
        missing = [name for name, i in wanted.items() if i not in found]
        if missing:
            raise DistractorError(f"distractor set '{self.set_name}': {len(missing)} listed image(s) in no archive, "
                                  f"e.g. {missing[0]}")
        for name, i in wanted.items():
            yield Job(name, "bytes", found[i])


def _digest_file(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_job(job: Job, plan=None, quality: int = 92, material=None) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 RGB pixels of a distractor image (see :class:`Job`).

    A generated scene is JPEG-coded and decoded again at ``quality``, as the
    data stage writes synth's images, so it reaches the network as a file would.
    """
    from .images import decode_rgb, load_rgb

    if job.kind == "file":
        return load_rgb(job.payload)
    if job.kind == "bytes":
        return decode_rgb(job.payload, job.name)
    from PIL import Image

    from .synth import render_scene

    pixels, _ = render_scene(plan, plan.db[job.payload], material)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=int(quality), optimize=False)
    return decode_rgb(buffer.getvalue(), job.name)


def resident_mb(pids: list[int]) -> list[float]:
    """Resident memory (MB) of the processes ``pids`` now (Linux's /proc; empty elsewhere)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                out += [int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:")]
        except OSError:
            pass
    return out


class ShardDescriber:
    """Per-process state of the distractors stage's workers: the network, the fitted transforms (a
    :class:`rdfa.io.describe.Describer`), the generated set's plan. ``start`` once per worker, then
    ``describe`` a task of jobs at a time (``rdfa.io.stage.worker_map``)."""

    backbone = describer = plan = material = methods = None
    quality = 92

    @classmethod
    def start(cls, network: dict, describer, plan, quality: int, device: str, methods=None,
              plugins: Path | None = None) -> None:
        """``methods``: a :class:`rdfa.methods.table1.DistractorMethods` (Table 1's other methods to keep),
        its plugin methods registered from ``plugins`` when this process has not (a Ray actor)."""
        import cv2
        import torch

        from .backbones import build_backbone

        # Parallelism comes from the processes: one thread each for the network, OpenCV and BLAS.
        if device == "cpu":
            torch.set_num_threads(1)
        cv2.setNumThreads(1)
        cls.backbone = build_backbone(network["backbone"], network["weights"], device, network["precision"])
        cls.describer, cls.plan, cls.quality, cls.methods = describer, plan, quality, methods
        if methods is not None and plugins is not None:
            from ..methods import load_plugins, names

            if not set(methods.fits) <= set(names()):
                load_plugins(plugins)
        if plan is not None:
            from .synth import scene_material

            cls.material = scene_material(plan)

    @classmethod
    def describe(cls, jobs: list) -> list[tuple[np.ndarray, np.ndarray, tuple[int, int]]]:
        """Each job's ``(rows float16 (M, D), boxes float32 (M, 4), image (H, W), methods)``, ``methods``
        ``{name: {storage key: float16 vectors}}`` (:meth:`rdfa.methods.table1.DistractorMethods.vectors`)."""
        from .describe import describe_image
        from .stage import blas_threads

        out = []
        with blas_threads(1):
            for job in jobs:
                image = load_job(job, cls.plan, cls.quality, cls.material)
                found = describe_image(cls.describer, cls.backbone, image, job.name)
                boxes = np.array([[*h.min(0), *h.max(0)] for h in found.hulls], dtype=np.float32)
                h, w = found.image_hw
                np.clip(boxes, 0, [w - 1, h - 1, w - 1, h - 1], out=boxes)
                vectors = {} if cls.methods is None else {
                    name: {key: v.astype(np.float16) for key, v in by_key.items()} for name, by_key in
                    cls.methods.vectors(f"distractor/{job.name}", found.fmap, found.masks, found.pooled).items()}
                out.append((found.rows.astype(np.float16), boxes, found.image_hw, vectors))
        return out


    @classmethod
    def pooled(cls, jobs: list) -> list[np.ndarray]:
        """Each job's eq. 5 rows before eq. 6 (float32 ``(M, K'(K'+1)/2)``): the collection
        whitening's first pass (``rdfa.io.collection_whitening``)."""
        from .describe import describe_image
        from .stage import blas_threads

        with blas_threads(1):
            return [describe_image(cls.describer, cls.backbone, load_job(job, cls.plan, cls.quality, cls.material),
                                   job.name).pooled for job in jobs]


def distractor_methods(settings, paths, basis: np.ndarray) -> tuple:
    """Table 1's methods the distractor pass keeps besides O2_R's rows (``methods.distractor_methods``),
    whitened with the methods stage's fits, mode and ``methods.D`` (``paths.method_fits``):
    ``(DistractorMethods or None, what the shards' digest records of them)``. Unknown names are
    refused naming the key."""
    from ..methods import MethodSettings, load_plugins, select
    from ..methods.table1 import Config, DistractorMethods
    from ..whitening import Whitening
    from .method_vectors import read_fits, read_header
    from .provenance import array_digest

    load_plugins(paths.root / "plugins")
    chosen = [m for m in select(settings.methods.distractor_methods) if not m.pipeline]
    if not chosen:
        return None, None
    whitening, dims = read_header(paths.method_fits)
    conf = Config(tuple(dims), (("", Whitening(**whitening)),), settings.ranking.n_qe,
                  settings.ranking.qe_include_query, settings.runtime.chunk_rows, settings.whitening.D)
    fits = read_fits(paths.method_fits, [m.name for m in chosen], conf.dims)
    m = settings.methods
    method_settings = MethodSettings(m.gem_p, m.crow_a, m.crow_b, m.rmac_levels, m.rmac_overlap,
                                     settings.weights.beta_eps)
    record = {"settings": vars(method_settings), "D": list(conf.dims), "whitening": whitening,
              "fits": {name: [array_digest(a) for a in (fit.pca.mean, fit.pca.components, fit.pca.eigenvalues)]
                       if fit.pca is not None else None for name, fit in fits.items()}}
    return DistractorMethods(fits, method_settings, conf, basis), record


def stored_methods(methods) -> dict:
    """What index.json says of the methods the shards keep: kind, plain, which stored array serves each
    D (``rdfa.methods.table1.storage_keys``), and the D that cannot be learned, with the reason."""
    from ..methods.table1 import storage_keys

    out = {}
    for name, fit in methods.fits.items():
        valid = [d for d in methods.conf.dims if fit.plain or d not in fit.reasons]
        out[name] = {"kind": fit.kind, "plain": fit.plain,
                     "keys": {str(d): k for d, k in storage_keys(fit.kind, valid, fit.plain).items()},
                     "reasons": {str(d): why for d, why in fit.reasons.items()}}
    return out
