"""Resumable, verified downloads with the standard library (urllib).

``download(url, dest)`` writes into ``<dest>.part`` and renames it onto
``dest`` only once the whole file is there and its size and sha256 (when
known) are right, so ``dest`` is never a partial file.

* Resume: after a cut connection (retried up to ``retries`` times in a row
  without progress) or in a later run, an http(s) download continues from the
  length of ``<dest>.part`` with a ``Range`` request. A server that ignores
  ``Range`` (answers 200) or answers with another range makes the download
  start over. ftp:// and file:// URLs are supported for whole downloads only
  (urllib cannot resume them): a leftover ``.part`` is restarted.
* Verification: a size or sha256 mismatch removes the bad ``.part`` (a rerun
  starts over) and raises ``DownloadError`` naming the URL and both values.
  Without a known sha256 the file's digest is logged as *unverified* so it
  can be pinned.
* An existing ``dest`` is never downloaded again nor overwritten: with the
  right checksum (or no checksum to check) it is kept; with a wrong one it is
  an error naming it (the file may be the user's own; delete it to download
  again).
* If all retries fail, the ``.part`` is kept so that a rerun resumes it.

Not meant for two processes downloading the same ``dest`` at once.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

log = logging.getLogger(__name__)

USER_AGENT = "rdfa-pipeline/1.0 (python-urllib; dataset download)"


class DownloadError(RuntimeError):
    """A download failed or gave the wrong bytes; the message names the URL/file."""


class _Transient(Exception):
    """A failure worth retrying (cut connection, timeout, 5xx)."""

    def __init__(self, message: str, progressed: bool = False):
        super().__init__(message)
        self.progressed = progressed


class _Restart(Exception):
    """The partial file cannot be continued: start over from byte 0."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            buf = f.read(chunk)
            if not buf:
                break
            h.update(buf)
    return h.hexdigest()


def part_path(dest: str | os.PathLike) -> Path:
    """The partial file that ``download`` writes before renaming onto ``dest``."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
             size: int | None = None, chunk: int = 1 << 20, retries: int = 3,
             timeout: float = 60, backoff: float = 1.0,
             progress: bool | None = None) -> Path:
    """Download ``url`` to ``dest`` (resumable, verified); return ``dest`` as a Path.

    ``sha256``/``size``: expected digest (hex) and length in bytes, or None when
    unknown. ``retries``: further attempts after a failed one (the count starts
    again whenever an attempt brought new bytes). ``timeout``: seconds for the
    connection and each read. ``backoff``: seconds before the first retry,
    doubled after each (at most 60). ``progress``: tqdm bar (None: only on a
    terminal).
    """
    dest = Path(dest)
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError(f"sha256 for {url} must be 64 hex digits, got {sha256!r}")
    if dest.is_dir():
        raise DownloadError(f"{dest}: is a folder, expected the file to download from {url}")
    if dest.exists():
        _check_present(url, dest, sha256, size, chunk)
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    resumable = urlsplit(url).scheme.lower() in ("http", "https")
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if have and not resumable:
            log.info("%s: cannot resume a %s download; starting over", part, urlsplit(url).scheme)
            have = 0
        if size is not None and have > size:
            log.warning("%s: holds %d bytes, more than the expected %d; starting over", part, have, size)
            have = 0
        if size is not None and have == size and have > 0:
            log.info("%s: already complete (%d bytes), verifying", part, have)
            break
        if have == 0 and part.exists():
            part.unlink()
        try:
            _fetch(url, part, have, size=size, chunk=chunk, timeout=timeout, progress=progress)
            break
        except _Restart as err:
            log.warning("%s: %s; starting over", url, err)
            part.unlink(missing_ok=True)
            failures += 1  # guards against a server that keeps answering oddly
        except _Transient as err:
            failures = 1 if err.progressed else failures + 1
            have = part.stat().st_size if part.exists() else 0
            if failures > retries:
                raise DownloadError(
                    f"{url}: download failed after {failures} attempt(s) without progress: {err}. "
                    f"The partial file {part} ({have} bytes) is kept; a rerun resumes it"
                    + ("" if resumable else " from the start") + ".") from None
            delay = min(backoff * 2 ** (failures - 1), 60.0)
            log.warning("%s: %s (%d bytes so far); retry %d/%d in %.1f s",
                        url, err, have, failures, retries, delay)
            if delay > 0:
                time.sleep(delay)
            continue
        if failures > retries:
            raise DownloadError(f"{url}: the server's answers to range requests keep being "
                                f"unusable; gave up after {failures} restarts")

    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{url}: size mismatch: expected {size} bytes, got {got}; removed {part} "
            f"(a rerun downloads it again)")
    digest = sha256_file(part, chunk)
    if sha256 is not None and digest != sha256:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{url}: sha256 mismatch: expected {sha256}, got {digest} ({got} bytes); "
            f"removed {part} (a rerun downloads it again)")
    if sha256 is None:
        log.warning("%s: UNVERIFIED download (no known sha256): %s is %d bytes, sha256 %s",
                    url, dest, got, digest)
    os.replace(part, dest)
    log.info("%s: downloaded to %s (%d bytes)", url, dest, got)
    return dest


def _check_present(url: str, dest: Path, sha256: str | None, size: int | None, chunk: int) -> None:
    got = dest.stat().st_size
    if size is not None and got != size:
        raise DownloadError(
            f"{dest}: already present but {got} bytes, expected {size} for {url}; "
            f"it is left untouched: delete it to download it again")
    if sha256 is not None:
        digest = sha256_file(dest, chunk)
        if digest != sha256:
            raise DownloadError(
                f"{dest}: already present but its sha256 is {digest}, expected {sha256} "
                f"for {url}; it is left untouched: delete it to download it again")
        log.info("%s: already present, sha256 verified; not downloading %s", dest, url)
    else:
        log.warning("%s: already present; UNVERIFIED (no known sha256 for %s); not downloading",
                    dest, url)


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.I)


def _fetch(url: str, part: Path, offset: int, *, size: int | None, chunk: int,
           timeout: float, progress: bool | None) -> None:
    """One attempt: append to ``part`` from ``offset`` (0: write it anew)."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            total = _total_from_range(err.headers.get("Content-Range", ""))
            if total is not None and total == offset:
                log.info("%s: %s already holds the whole file (%d bytes)", url, part, offset)
                return
            raise _Restart(f"range request from byte {offset} refused (HTTP 416)") from None
        if err.code in (408, 425, 429) or err.code >= 500:
            raise _Transient(f"HTTP {err.code} {err.reason}") from None
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, (OSError, socket.timeout)):
            raise _Transient(f"cannot connect: {reason}") from None
        raise DownloadError(f"{url}: {reason}") from None
    except (OSError, http.client.HTTPException) as err:
        raise _Transient(f"cannot connect: {err}") from None

    with response:
        status = getattr(response, "status", None)
        total = None
        if offset and status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
            if not match or int(match.group(1)) != offset:
                raise _Restart(f"asked for bytes from {offset}, the server answered with "
                               f"Content-Range {response.headers.get('Content-Range')!r}")
            total = None if match.group(3) == "*" else int(match.group(3))
            mode = "ab"
        else:
            if offset:
                log.info("%s: the server ignored the range request (status %s); starting over",
                         url, status)
            offset = 0
            mode = "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.strip().isdigit() else None
        if size is not None and total is not None and total != size:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{url}: size mismatch: the server announces {total} bytes, expected {size}; "
                f"nothing kept")

        written = offset
        with open(part, mode) as out, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                           unit_divisor=1024, desc=part.name[:-5], leave=False,
                                           disable=None if progress is None else not progress) as bar:
            try:
                while True:
                    buf = response.read(chunk)
                    if not buf:
                        break
                    out.write(buf)
                    written += len(buf)
                    bar.update(len(buf))
            except (OSError, http.client.HTTPException, ValueError) as err:
                out.flush()
                raise _Transient(f"connection lost after {written} bytes: {err!r}",
                                 progressed=written > offset) from None
            finally:
                out.flush()
                os.fsync(out.fileno())
        if total is not None and written < total:
            raise _Transient(f"connection closed after {written} of {total} bytes",
                             progressed=written > offset)


def _total_from_range(value: str) -> int | None:
    match = re.match(r"bytes\s+\*/(\d+)", value.strip(), re.I)
    return int(match.group(1)) if match else None
