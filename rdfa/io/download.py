"""Resumable, verified downloads with the standard library (urllib).

``download(url, dest)`` writes into ``<dest>.part`` and renames it onto
``dest`` only once the whole file is there and its size and sha256 (when
known) are right, so ``dest`` is never a partial file.

* Resume: after a cut connection or in a later run, an http(s) download
  continues from the length of ``<dest>.part`` with a ``Range`` request. The
  server's ``ETag`` / ``Last-Modified`` of the file being written are kept in
  ``<dest>.part.json`` and sent as ``If-Range``, so a file that changed on the
  server is downloaded anew instead of being glued onto the old bytes. A
  ``.part`` left by an earlier run without either validator is started over
  (nothing proves the remote file is still the same). A server that ignores
  ``Range`` (answers 200) or answers with another range makes the download
  start over. ftp:// and file:// URLs are supported for whole downloads only
  (urllib cannot resume them): a leftover ``.part`` is restarted.
* Giving up: an attempt counts as progress only when the ``.part`` grows
  beyond the furthest byte reached so far, so a server that always cuts at
  the same byte (and restarts from 0) cannot keep the retries going forever;
  ``retries`` attempts in a row without progress, ``max_attempts`` attempts in
  all or ``max_seconds`` in all end the download with ``DownloadError`` (the
  ``.part`` is kept: a rerun resumes it).
* Content: with ``kind="binary"`` or ``"archive"`` an HTML page (an error or
  login page served with status 200) is refused; with ``"archive"`` the file
  must also start with the magic bytes of a tar/gzip/bzip2/xz/zip archive,
  else it is moved to ``<dest>.corrupt`` and ``DownloadError`` says so.
* Verification: a size or sha256 mismatch removes the bad ``.part`` (a rerun
  starts over) and raises ``DownloadError`` naming the URL and both values.
  Without a known sha256 the file's digest is logged as *unverified* so it
  can be pinned.
* The cache is keyed by what a file was fetched from: beside each completed
  download, ``<dest>.source.json`` records its address, the pinned sha256
  (if any), and the file's size and mtime. An existing ``dest`` is kept when
  it matches the pinned sha256, or, without one, when its record names this
  same address. A file this module downloaded from another address (or that
  no longer matches a checksum pinned since) is downloaded again and replaced
  (the log says why). A file with no record (put there by hand, or by an
  older version) is never overwritten: with a wrong pinned checksum, or with
  no checksum to check it, it is an error saying why (delete it to download
  it again, or pin its sha256).
* Timeouts: ``connect_timeout`` (default :data:`CONNECT_TIMEOUT`) for the
  connection, ``timeout`` (default :data:`READ_TIMEOUT`) for each read once
  connected; a server that accepts the connection but never answers is
  reported as such (``connected to HOST but no answer in N s``), not as a
  connection failure.

Not meant for two processes downloading the same ``dest`` at once.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from .archive import sniff_archive

log = logging.getLogger(__name__)

USER_AGENT = "rdfa-pipeline/1.0 (python-urllib; dataset download)"

#: Seconds to wait for the TCP (and TLS) connection to a server.
CONNECT_TIMEOUT = 30.0
#: Seconds to wait for the server's answer, and for each block of the file, once connected: long enough
#: for a slow mirror to start sending, short enough that a server that never answers is reported
#: within minutes (each retry waits this long again).
READ_TIMEOUT = 60.0

#: What ``kind`` may be: anything, anything but an HTML page, an archive.
KINDS = ("any", "binary", "archive")
_HTML_TYPES = ("text/html", "application/xhtml+xml")


class DownloadError(RuntimeError):
    """A download failed or gave the wrong bytes; the message names the URL/file."""


class _Transient(Exception):
    """A failure worth retrying (cut connection, timeout, 5xx)."""


class _Restart(Exception):
    """The partial file cannot be continued: start over from byte 0."""


@dataclass(frozen=True)
class Validators:
    """What identifies one version of the remote file (HTTP ``ETag`` / ``Last-Modified``)."""

    etag: str | None = None
    last_modified: str | None = None

    def if_range(self) -> str | None:
        """The ``If-Range`` value: a strong ETag, else the date; None: the part cannot be resumed.

        A weak ETag (``W/"..."``) may not be used in If-Range (RFC 9110 13.1.5).
        """
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified or None


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


def meta_path(dest: str | os.PathLike) -> Path:
    """Where the validators of the remote version being written to the ``.part`` are kept."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part.json")


def source_path(dest: str | os.PathLike) -> Path:
    """Where what ``dest`` was downloaded from is recorded (address, pinned sha256, size, mtime)."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".source.json")


def read_source(dest: str | os.PathLike) -> dict | None:
    """The record of where ``dest`` came from, or None when there is none or it does not describe the
    file there now (another size or mtime: the file was replaced by something else)."""
    dest = Path(dest)
    try:
        record = json.loads(source_path(dest).read_text())
        st = dest.stat()
    except (OSError, ValueError):
        return None
    if (not isinstance(record, dict) or not isinstance(record.get("url"), str)
            or record.get("size") != st.st_size or record.get("mtime_ns") != st.st_mtime_ns):
        return None
    return record


def _record_source(part: Path, dest: Path, url: str, sha256: str | None, digest: str) -> None:
    """Write ``dest``'s record before ``part`` is renamed onto it: the size and mtime are the part's (a
    rename keeps them), so a crash between the two leaves a record that matches no file."""
    st = part.stat()
    record = {"url": url, "sha256": sha256, "digest": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    target = source_path(dest)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, target)


def corrupt_path(dest: str | os.PathLike) -> Path:
    """Where a downloaded file that is not what it should be is moved aside."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".corrupt")


def read_validators(dest: str | os.PathLike) -> Validators:
    """The saved validators of ``dest``'s ``.part`` (empty when none or unreadable)."""
    try:
        data = json.loads(meta_path(dest).read_text())
    except (OSError, ValueError):
        return Validators()
    if not isinstance(data, dict):
        return Validators()
    return Validators(*(v if isinstance(v, str) and v else None
                        for v in (data.get("etag"), data.get("last_modified"))))


def _save_validators(dest: Path, url: str, found: Validators) -> None:
    meta = meta_path(dest)
    if found.if_range() is None:
        meta.unlink(missing_ok=True)
        return
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(json.dumps({"url": url, "etag": found.etag, "last_modified": found.last_modified}))
    os.replace(tmp, meta)


def _discard_part(dest: Path) -> None:
    part_path(dest).unlink(missing_ok=True)
    meta_path(dest).unlink(missing_ok=True)


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
             size: int | None = None, chunk: int = 1 << 20, retries: int = 3,
             timeout: float = READ_TIMEOUT, backoff: float = 1.0, max_attempts: int = 100,
             max_seconds: float = 6 * 3600, kind: str = "any",
             progress: bool | None = None, connect_timeout: float = CONNECT_TIMEOUT) -> Path:
    """Download ``url`` to ``dest`` (resumable, verified); return ``dest`` as a Path.

    ``sha256``/``size``: expected digest (hex) and length in bytes, or None when
    unknown. ``retries``: further attempts after a failed one (the count starts
    again whenever an attempt brought bytes beyond the furthest reached).
    ``max_attempts`` / ``max_seconds``: give up after that many attempts or
    seconds in all, progress or not. ``connect_timeout``: seconds for the
    connection; ``timeout``: seconds for the answer and each read once
    connected. ``backoff``: seconds before the first retry, doubled after
    each (at most 60). ``kind``: "any", "binary" (refuse an HTML page) or
    "archive" (also check the archive's magic bytes). ``progress``: tqdm bar
    (None: only on a terminal).
    """
    dest = Path(dest)
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError(f"sha256 for {url} must be 64 hex digits, got {sha256!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if dest.is_dir():
        raise DownloadError(f"{dest}: is a folder, expected the file to download from {url}")
    if dest.exists() and _keep_present(url, dest, sha256, size, chunk):
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    resumable = urlsplit(url).scheme.lower() in ("http", "https")
    _check_leftover(url, dest, resumable)
    timeouts = (connect_timeout, timeout)
    started = time.monotonic()
    furthest = part.stat().st_size if part.exists() else 0
    failures = attempts = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:
            log.warning("%s: holds %d bytes, more than the expected %d; starting over", part, have, size)
            have = 0
        if size is not None and have == size and have > 0:
            log.info("%s: already complete (%d bytes), verifying", part, have)
            break
        if have == 0 and part.exists():
            _discard_part(dest)
        if attempts >= max_attempts:
            raise DownloadError(_gave_up(url, dest, f"{attempts} attempts in all (max_attempts)", resumable))
        attempts += 1
        try:
            _fetch(url, dest, have, read_validators(dest) if have else Validators(), size=size,
                   chunk=chunk, timeouts=timeouts, progress=progress, kind=kind,
                   deadline=started + max_seconds)
            break
        except _Restart as err:
            log.warning("%s: %s; starting over", url, err)
            _discard_part(dest)
            failures += 1  # guards against a server that keeps answering oddly
            if failures > retries:
                raise DownloadError(f"{url}: the server's answers to range requests keep being "
                                    f"unusable; gave up after {failures} restarts") from None
            continue
        except _Transient as err:
            reached = part.stat().st_size if part.exists() else 0
            # Progress is only new ground: bytes written again after a restart from 0 are not.
            failures = 1 if reached > furthest else failures + 1
            furthest = max(furthest, reached)
            if failures > retries:
                raise DownloadError(_gave_up(
                    url, dest, f"{failures} attempt(s) without progress beyond byte {furthest}: {err}",
                    resumable)) from None
            delay = min(backoff * 2 ** (failures - 1), 60.0)
            elapsed = time.monotonic() - started
            if elapsed + delay >= max_seconds:
                raise DownloadError(_gave_up(
                    url, dest, f"{elapsed:.1f} s (max_seconds={max_seconds:g}): {err}", resumable)) from None
            log.warning("%s: %s (%d bytes so far); retry %d/%d in %.1f s",
                        url, err, reached, failures, retries, delay)
            if delay > 0:
                time.sleep(delay)

    got = part.stat().st_size
    if size is not None and got != size:
        _discard_part(dest)
        raise DownloadError(
            f"{url}: size mismatch: expected {size} bytes, got {got}; removed {part} "
            f"(a rerun downloads it again)")
    digest = sha256_file(part, chunk)
    if sha256 is not None and digest != sha256:
        _discard_part(dest)
        raise DownloadError(
            f"{url}: sha256 mismatch: expected {sha256}, got {digest} ({got} bytes); "
            f"removed {part} (a rerun downloads it again)")
    if kind == "archive" and sniff_archive(part) is None:
        with open(part, "rb") as f:
            head = f.read(32)
        aside = corrupt_path(dest)
        os.replace(part, aside)
        meta_path(dest).unlink(missing_ok=True)
        raise DownloadError(
            f"{url}: the downloaded file is not a tar/gzip/bzip2/xz/zip archive (it starts with "
            f"{head!r}); moved it to {aside} (a rerun downloads it again)")
    if sha256 is None:
        log.warning("%s: UNVERIFIED download (no known sha256): %s is %d bytes, sha256 %s",
                    url, dest, got, digest)
    _record_source(part, dest, url, sha256, digest)
    os.replace(part, dest)
    meta_path(dest).unlink(missing_ok=True)
    log.info("%s: downloaded to %s (%d bytes)", url, dest, got)
    return dest


def _check_leftover(url: str, dest: Path, resumable: bool) -> None:
    """Start over a ``.part`` of an earlier run that cannot be proven to match the remote file."""
    part = part_path(dest)
    if not part.exists():
        meta_path(dest).unlink(missing_ok=True)
        return
    try:
        saved_url = json.loads(meta_path(dest).read_text()).get("url")
    except (OSError, ValueError, AttributeError):
        saved_url = None
    if not resumable:
        log.info("%s: cannot resume a %s download; starting over", part, urlsplit(url).scheme)
    elif saved_url is not None and saved_url != url:
        log.warning("%s: the partial file was fetched from %s, not %s; starting over", part, saved_url, url)
    elif read_validators(dest).if_range() is None:
        log.warning("%s: left by an earlier run without the server's ETag or Last-Modified, so "
                    "nothing shows the remote file is unchanged; starting over", part)
    else:
        return
    _discard_part(dest)


def _gave_up(url: str, dest: Path, why: str, resumable: bool) -> str:
    part = part_path(dest)
    if not part.exists() or part.stat().st_size == 0:
        return f"{url}: download failed after {why}. Nothing of it was saved."
    have = part.stat().st_size
    if not resumable:
        rerun = "starts it over"
    elif read_validators(dest).if_range() is None:
        rerun = "starts it over (the server gave no ETag or Last-Modified to resume it safely)"
    else:
        rerun = "resumes it"
    return f"{url}: download failed after {why}. The partial file {part} ({have} bytes) is kept; a rerun {rerun}."


def _keep_present(url: str, dest: Path, sha256: str | None, size: int | None, chunk: int) -> bool:
    """Whether the existing ``dest`` is the file to download from ``url`` (True: keep it); False: it is
    this module's download of something else, to be downloaded again and replaced. Raises
    ``DownloadError`` saying why for a file it cannot tell is right and must not overwrite.

    With a pinned ``sha256`` the bytes are proven whatever address they came from; without one, the
    record must name this same address.
    """
    record = read_source(dest)
    got = dest.stat().st_size
    why = None
    if size is not None and got != size:
        why = f"it is {got} bytes, expected {size}"
    elif sha256 is not None:
        digest = record.get("digest") if record is not None else None
        if digest != sha256:
            digest = sha256_file(dest, chunk)
        if digest == sha256:
            log.info("%s: already present, sha256 verified; not downloading %s", dest, url)
            return True
        why = f"its sha256 is {digest}, expected {sha256}"
    elif record is not None and record["url"] != url:
        why = f"it was downloaded from {record['url']}"
    elif record is not None:
        log.info("%s: already present, downloaded from this same address %s (sha256 %s; no pinned sha256 to "
                 "check it against); not downloading", dest, url, record.get("digest"))
        return True
    if record is not None:
        # Downloaded here: ours to replace, since it is not what is asked for now.
        log.warning("%s: already present but %s; downloading %s again (the old file is replaced once the new "
                    "one is complete and verified)", dest, why, url)
        return False
    if why is not None:
        raise DownloadError(f"{dest}: already present but {why} for {url}; nothing records that it was "
                            f"downloaded here, so it is left untouched: delete it to download it again")
    raise DownloadError(
        f"{dest}: already present, but nothing records where it came from ({source_path(dest).name} is "
        f"missing or describes another file) and no sha256 is pinned to check it, so it may not be the "
        f"file of {url}; it is left untouched: delete it to download it again, or pin its sha256 to use it")


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.I)


def _with_read_timeout(base: type, read_timeout: float) -> type:
    """``base`` (an ``http.client`` connection class) whose socket waits ``read_timeout`` seconds per read
    once connected (the connection itself waits the ``timeout`` given to ``urlopen``)."""

    class Connection(base):
        def connect(self):
            super().connect()
            self.sock.settimeout(read_timeout)
            self.rdfa_connected = True

    return Connection


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, read_timeout: float):
        super().__init__()
        self.connection = _with_read_timeout(http.client.HTTPConnection, read_timeout)

    def http_open(self, req):
        return self.do_open(self.connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, read_timeout: float):
        super().__init__()
        self.connection = _with_read_timeout(http.client.HTTPSConnection, read_timeout)

    def https_open(self, req):
        return self.do_open(self.connection, req, context=self._context)


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or parts.path


def _fetch(url: str, dest: Path, offset: int, validators: Validators, *, size: int | None,
           chunk: int, timeouts: tuple[float, float], progress: bool | None, kind: str, deadline: float) -> None:
    """One attempt: append to ``dest``'s ``.part`` from ``offset`` (0: write it anew)."""
    connect_timeout, read_timeout = timeouts
    part = part_path(dest)
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validators.if_range():
            # The server sends the rest only if the file is the version we hold; else all of it.
            headers["If-Range"] = validators.if_range()
    request = urllib.request.Request(url, headers=headers)
    opener = urllib.request.build_opener(_HTTPHandler(read_timeout), _HTTPSHandler(read_timeout))
    try:
        response = opener.open(request, timeout=connect_timeout)
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
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise _Transient(f"cannot connect to {_host(url)}: no connection within {connect_timeout:g} s "
                             "(connect timeout)") from None
        if isinstance(reason, OSError):
            raise _Transient(f"cannot connect to {_host(url)}: {reason}") from None
        raise DownloadError(f"{url}: {reason}") from None
    except (TimeoutError, socket.timeout):
        # urllib sends the request inside its URLError guard, but waits for the answer outside it.
        raise _Transient(f"connected to {_host(url)} but no answer in {read_timeout:g} s (read timeout; the "
                         "server accepted the connection and sent nothing)") from None
    except (OSError, http.client.HTTPException) as err:
        raise _Transient(f"connected to {_host(url)}, then the connection failed before an answer: {err}") from None

    with response:
        status = getattr(response, "status", None)
        ctype = response.headers.get("Content-Type", "")
        if kind != "any" and ctype.split(";")[0].strip().lower() in _HTML_TYPES:
            raise DownloadError(
                f"{url}: the server answered with an HTML page (Content-Type: {ctype}), not the "
                f"{'archive' if kind == 'archive' else 'file'}; nothing of it was saved (is the address "
                f"right? an error or login page?)")
        found = Validators(response.headers.get("ETag"), response.headers.get("Last-Modified"))
        total = None
        if offset and status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
            if not match or int(match.group(1)) != offset:
                raise _Restart(f"asked for bytes from {offset}, the server answered with "
                               f"Content-Range {response.headers.get('Content-Range')!r}")
            if validators.etag and found.etag and found.etag != validators.etag:
                raise _Restart(f"the file changed on the server (ETag {found.etag}, the partial file "
                               f"holds {validators.etag})")
            total = None if match.group(3) == "*" else int(match.group(3))
            mode = "ab"
        else:
            if offset:
                log.info("%s: the server sent the whole file (status %s: it ignores ranges, or the "
                         "file changed); starting over", url, status)
            offset = 0
            mode = "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.strip().isdigit() else None
        if size is not None and total is not None and total != size:
            _discard_part(dest)
            raise DownloadError(
                f"{url}: size mismatch: the server announces {total} bytes, expected {size}; "
                f"nothing kept")
        if mode == "wb":
            # Saved before the bytes, so the .part never outlives the description of its version.
            _save_validators(dest, url, found)

        written = offset
        with open(part, mode) as out, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                           unit_divisor=1024, desc=dest.name, leave=False,
                                           disable=None if progress is None else not progress) as bar:
            try:
                while True:
                    if time.monotonic() > deadline:
                        raise _Transient(f"time limit reached after {written} bytes")
                    buf = response.read(chunk)
                    if not buf:
                        break
                    out.write(buf)
                    written += len(buf)
                    bar.update(len(buf))
            except (TimeoutError, socket.timeout):
                out.flush()
                raise _Transient(f"connected to {_host(url)} but no data for {read_timeout:g} s after {written} "
                                 "bytes (read timeout)") from None
            except (OSError, http.client.HTTPException, ValueError) as err:
                out.flush()
                raise _Transient(f"connection lost after {written} bytes: {err!r}") from None
            finally:
                out.flush()
                os.fsync(out.fileno())
        if total is not None and written < total:
            raise _Transient(f"connection closed after {written} of {total} bytes")


def _total_from_range(value: str) -> int | None:
    match = re.match(r"bytes\s+\*/(\d+)", value.strip(), re.I)
    return int(match.group(1)) if match else None
