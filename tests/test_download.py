"""download() against a loopback HTTP server, and archive.extract() safety checks."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rdfa.io.archive import ArchiveError, extract
from rdfa.io.download import DownloadError, corrupt_path, download, meta_path, part_path
from rdfa.io.gnd import DatasetError

# --------------------------------------------------------------------------- loopback server

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        srv.headers.append(dict(self.headers))
        if self.path in srv.redirects:
            self.send_response(301)
            self.send_header("Location", srv.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range not in (srv.etag, srv.last_modified):
            rng = None  # RFC 9110: the validator does not match, send the whole (new) file
        if rng and srv.honor_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", srv.content_types.get(self.path, "application/octet-stream"))
        if srv.etag:
            self.send_header("ETag", srv.etag)
        if srv.last_modified:
            self.send_header("Last-Modified", srv.last_modified)
        self.send_header("Connection", "close")
        self.end_headers()
        cut = srv.cuts.pop(0) if srv.cuts else None
        if cut is not None:
            body = body[:cut]  # then close: the client gets fewer bytes than announced
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files = {}
    srv.requests = []  # (path, Range header) per request
    srv.headers = []  # all request headers, per request
    srv.etag = '"v1"'  # validators of the served files (None: not sent)
    srv.last_modified = "Mon, 06 Jan 2025 10:00:00 GMT"
    srv.content_types = {}  # path -> Content-Type (default application/octet-stream)
    srv.cuts = []  # per request: cut the body after this many bytes (None: whole body)
    srv.honor_range = True
    srv.redirects = {}
    srv.url = lambda path: f"http://127.0.0.1:{srv.server_address[1]}{path}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


PAYLOAD = bytes(range(256)) * 40  # 10240 bytes
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


def _get(server, dest, **kw):
    kw.setdefault("backoff", 0)
    kw.setdefault("timeout", 5)
    return download(server.url("/f.bin"), dest, chunk=1000, **kw)


def _leftover_validators(dest, etag=None, last_modified=None):
    """What an earlier run saved beside its .part."""
    meta_path(dest).write_text(json.dumps({"url": None, "etag": etag, "last_modified": last_modified}))


# --------------------------------------------------------------------------- download

def test_download_verifies_and_leaves_no_part(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "sub" / "f.bin"
    assert _get(server, dest, sha256=DIGEST, size=len(PAYLOAD)) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not part_path(dest).exists()


def test_resume_after_cut_connection(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cuts = [3000, 2500]  # two cut connections, then a full answer
    dest = tmp_path / "f.bin"
    _get(server, dest, sha256=DIGEST, retries=3)
    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [None, "bytes=3000-", "bytes=5500-"]


def test_resume_through_redirect(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.redirects["/old/f.bin"] = server.url("/f.bin")
    server.cuts = [6000]
    dest = tmp_path / "f.bin"
    download(server.url("/old/f.bin"), dest, sha256=DIGEST, backoff=0, timeout=5)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/f.bin", "bytes=6000-")


def test_rerun_resumes_kept_part(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cuts = [4000, 0]
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=r"f\.bin.*kept"):
        _get(server, dest, sha256=DIGEST, retries=1)
    assert not dest.exists()
    assert part_path(dest).read_bytes() == PAYLOAD[:4000]
    _get(server, dest, sha256=DIGEST)  # a later run
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1][1] == "bytes=4000-" and server.headers[-1]["If-Range"] == '"v1"'


def test_server_ignoring_range_restarts(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.honor_range = False
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(b"stale bytes from elsewhere")
    _leftover_validators(dest, etag=server.etag)
    _get(server, dest, sha256=DIGEST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", "bytes=26-")]


def test_complete_part_from_earlier_run(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(PAYLOAD)
    _leftover_validators(dest, etag=server.etag)
    _get(server, dest)  # no size known: the server answers 416, the part is whole
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", f"bytes={len(PAYLOAD)}-")]


def test_sha256_mismatch(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as err:
        _get(server, dest, sha256=wrong)
    msg = str(err.value)
    assert server.url("/f.bin") in msg and wrong in msg and DIGEST in msg
    assert not dest.exists() and not part_path(dest).exists()


def test_size_mismatch(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=r"size mismatch.*10240"):
        _get(server, dest, size=len(PAYLOAD) + 1)
    assert not dest.exists() and not part_path(dest).exists()


def test_present_file_not_downloaded_again(server, tmp_path, caplog):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    dest.write_bytes(PAYLOAD)
    _get(server, dest, sha256=DIGEST, size=len(PAYLOAD))  # the pinned checksum proves it
    assert server.requests == []
    # No checksum, and nothing records where the file came from: it may be another address's file.
    with pytest.raises(DownloadError, match=r"f\.bin: already present, but nothing records where it came from "
                                            r"\(f\.bin\.source\.json is missing .*and no sha256 is pinned"):
        _get(server, dest)
    assert server.requests == [] and dest.read_bytes() == PAYLOAD
    # Downloaded here from this address: kept without a request (no UNVERIFIED "not downloading").
    dest.unlink()
    _get(server, dest)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rdfa.io.download"):
        _get(server, dest)
    assert len(server.requests) == 1
    assert "downloaded from this same address" in caplog.text and "UNVERIFIED" not in caplog.text


def test_changed_address_downloads_again(server, tmp_path, caplog):
    # Before: "already present; UNVERIFIED ...; not downloading", and the old address's file stayed.
    other = PAYLOAD[::-1]
    server.files["/f.bin"], server.files["/mirror/f.bin"] = PAYLOAD, other
    dest = tmp_path / "f.bin"
    _get(server, dest)
    with caplog.at_level(logging.WARNING, logger="rdfa.io.download"):
        download(server.url("/mirror/f.bin"), dest, backoff=0, timeout=5)
    assert dest.read_bytes() == other
    assert [p for p, _ in server.requests] == ["/f.bin", "/mirror/f.bin"]
    assert f"already present but it was downloaded from {server.url('/f.bin')}; downloading " \
           f"{server.url('/mirror/f.bin')} again" in caplog.text
    assert "not downloading" not in caplog.text
    # The record follows the file: back to the first address downloads it again too.
    _get(server, dest)
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 3
    # A checksum pinned since that the file does not match: downloaded again (then verified).
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        _get(server, dest, sha256="2" * 64)
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 4
    # With the right pinned checksum, the address does not matter: the bytes are proven.
    download(server.url("/mirror/f.bin"), dest, sha256=DIGEST, backoff=0, timeout=5)
    assert len(server.requests) == 4


def test_partial_file_of_another_address_starts_over(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(b"x" * 3000)
    meta_path(dest).write_text(json.dumps({"url": server.url("/old.bin"), "etag": server.etag,
                                           "last_modified": None}))
    _get(server, dest, sha256=DIGEST)
    assert dest.read_bytes() == PAYLOAD and server.requests == [("/f.bin", None)]


def test_server_that_never_answers_is_reported_as_such(tmp_path):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel accepts the connections; nobody ever answers
    port = listener.getsockname()[1]
    try:
        with pytest.raises(DownloadError) as err:
            download(f"http://127.0.0.1:{port}/x.tgz", tmp_path / "x.tgz", retries=1, backoff=0, timeout=0.3,
                     connect_timeout=5)
    finally:
        listener.close()
    msg = str(err.value)
    assert f"connected to 127.0.0.1:{port} but no answer in 0.3 s (read timeout" in msg, msg
    assert "cannot connect" not in msg and not (tmp_path / "x.tgz").exists()


def test_server_that_never_accepts_is_a_connect_timeout(tmp_path):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # a backlog of one, never accepted: further connections get no answer to their SYN
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(filler)
        with pytest.raises(DownloadError) as err:
            download(f"http://127.0.0.1:{port}/x.tgz", tmp_path / "x.tgz", retries=0, backoff=0, timeout=5,
                     connect_timeout=0.3)
    finally:
        for sock in [listener, *fillers]:
            sock.close()
    msg = str(err.value)
    if "no answer" in msg:
        pytest.skip("this kernel completed the connection despite the full backlog")
    assert f"cannot connect to 127.0.0.1:{port}: no connection within 0.3 s (connect timeout)" in msg, msg
    assert "Nothing of it was saved" in msg and not part_path(tmp_path / "x.tgz").exists()


def test_timeouts_are_stated():
    from rdfa.io import download as module

    assert module.CONNECT_TIMEOUT == 30 and module.READ_TIMEOUT == 60
    assert "connect_timeout" in module.download.__doc__ and "READ_TIMEOUT" in module.__doc__


def test_present_file_with_wrong_checksum_is_an_error(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"the user's own file")
    with pytest.raises(DownloadError, match=r"f\.bin: already present but its sha256"):
        _get(server, dest, sha256=DIGEST)
    assert dest.read_bytes() == b"the user's own file" and server.requests == []


def test_unverified_download_is_logged(server, tmp_path, caplog):
    server.files["/f.bin"] = PAYLOAD
    with caplog.at_level(logging.WARNING, logger="rdfa.io.download"):
        _get(server, tmp_path / "f.bin")
    assert "UNVERIFIED" in caplog.text and DIGEST in caplog.text


def test_http_error_names_url(server, tmp_path):
    with pytest.raises(DownloadError, match=r"127\.0\.0\.1.*/f\.bin: HTTP 404"):
        _get(server, tmp_path / "f.bin")
    assert not (tmp_path / "f.bin").exists()


def test_unreachable_server_keeps_nothing(tmp_path):
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=rf"127\.0\.0\.1:{port}/x.*2 attempt"):
        download(f"http://127.0.0.1:{port}/x", tmp_path / "x", retries=1, backoff=0, timeout=2)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- hangs: progress, attempts, time

def test_same_cut_without_range_support_gives_up(server, tmp_path):
    # The server ignores Range and always cuts at byte 3000: every retry starts over from 0 and
    # reaches 3000 again. That is no progress; before, it counted as such and retried forever.
    server.files["/f.bin"] = PAYLOAD
    server.honor_range = False
    server.cuts = [3000] * 50
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=r"after 4 attempt\(s\) without progress beyond byte 3000.*kept"):
        _get(server, dest, retries=3)
    assert len(server.requests) == 4
    assert [r for _, r in server.requests[1:]] == ["bytes=3000-"] * 3
    assert part_path(dest).stat().st_size == 3000 and not dest.exists()


def test_total_attempts_capped(server, tmp_path):
    # Each attempt brings 500 new bytes (progress), but never the whole file.
    server.files["/f.bin"] = PAYLOAD
    server.cuts = [500] * 100
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=r"after 5 attempts in all \(max_attempts\).*kept"):
        _get(server, dest, max_attempts=5)
    assert len(server.requests) == 5 and part_path(dest).stat().st_size == 2500


def test_total_time_capped(server, tmp_path, monkeypatch):
    import types

    from rdfa.io import download as download_module

    # The download's clock, stopped: only its own waits (backoff sleeps) move it, so what it does does
    # not depend on how fast this machine serves the attempts.
    clock = {"now": 1000.0, "slept": []}

    def sleep(seconds):
        clock["slept"].append(seconds)
        clock["now"] += seconds

    fake = types.SimpleNamespace(**vars(download_module.time))
    fake.monotonic, fake.sleep = (lambda: clock["now"]), sleep
    monkeypatch.setattr(download_module, "time", fake)
    server.files["/f.bin"] = PAYLOAD
    server.cuts = [500] * 100
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=r"max_seconds=0\.35.*kept"):
        _get(server, dest, backoff=0.1, max_seconds=0.35)
    # Every attempt resumes and brings 500 new bytes, so the backoff starts again at 0.1 s each time; after
    # three waits (0.3 s) the next would end past max_seconds (0.4 > 0.35): it gives up instead of waiting.
    assert clock["slept"] == [0.1, 0.1, 0.1]
    assert len(server.requests) == 4  # 21 attempts would be needed to finish


# --------------------------------------------------------------------------- HTML pages, wrong bytes

HTML = b"<!DOCTYPE html><html><body><h1>Service unavailable</h1></body></html>" * 10


def test_html_page_refused_for_an_archive(server, tmp_path):
    server.files["/a.tgz"] = HTML
    server.content_types["/a.tgz"] = "text/html; charset=utf-8"
    dest = tmp_path / "a.tgz"
    with pytest.raises(DownloadError, match=r"/a\.tgz: the server answered with an HTML page "
                                            r"\(Content-Type: text/html; charset=utf-8\), not the archive"):
        download(server.url("/a.tgz"), dest, kind="archive", backoff=0, timeout=5)
    assert list(tmp_path.iterdir()) == []  # nothing saved, so nothing for a rerun to trust
    # kind="any" (the default) takes whatever comes
    download(server.url("/a.tgz"), dest, backoff=0, timeout=5)
    assert dest.read_bytes() == HTML


def test_non_archive_bytes_moved_aside(server, tmp_path):
    # An error page without an HTML Content-Type: caught by the magic bytes, before the rename.
    server.files["/a.tgz"] = HTML
    dest = tmp_path / "a.tgz"
    with pytest.raises(DownloadError, match=r"not a tar/gzip/bzip2/xz/zip archive \(it starts with "
                                            r"b'<!DOCTYPE html>.*moved it to .*a\.tgz\.corrupt"):
        download(server.url("/a.tgz"), dest, kind="archive", backoff=0, timeout=5)
    assert not dest.exists() and not part_path(dest).exists()
    assert corrupt_path(dest).read_bytes() == HTML
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w:gz") as tf:
        info = tarfile.TarInfo("x.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    server.files["/a.tgz"] = good.getvalue()
    download(server.url("/a.tgz"), dest, kind="archive", backoff=0, timeout=5)  # a rerun
    assert dest.read_bytes() == good.getvalue()


# --------------------------------------------------------------------------- resuming only the same file

def test_validators_saved_and_sent_as_if_range(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cuts = [4000, 0]
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError):
        _get(server, dest, retries=1)
    assert json.loads(meta_path(dest).read_text())["etag"] == '"v1"'
    _get(server, dest, sha256=DIGEST)  # a later run
    assert server.requests[-1][1] == "bytes=4000-" and server.headers[-1]["If-Range"] == '"v1"'
    assert dest.read_bytes() == PAYLOAD
    assert not meta_path(dest).exists() and not part_path(dest).exists()


def test_leftover_part_of_a_changed_file_starts_over(server, tmp_path):
    new = bytes(reversed(PAYLOAD))
    server.files["/f.bin"] = new
    server.etag = '"v2"'  # the file changed on the server since the .part was written
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(PAYLOAD[:4000])
    _leftover_validators(dest, etag='"v1"')
    _get(server, dest)
    assert server.headers[0]["Range"] == "bytes=4000-" and server.headers[0]["If-Range"] == '"v1"'
    assert len(server.requests) == 1
    assert dest.read_bytes() == new  # not the old head glued to the new tail


def test_last_modified_used_without_etag(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.etag = None
    server.cuts = [3000]
    dest = tmp_path / "f.bin"
    _get(server, dest, sha256=DIGEST)
    assert server.headers[1]["Range"] == "bytes=3000-"
    assert server.headers[1]["If-Range"] == server.last_modified


def test_leftover_part_without_validators_starts_over(server, tmp_path, caplog):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(b"X" * 4000)  # no .part.json: which version is it?
    with caplog.at_level(logging.WARNING, logger="rdfa.io.download"):
        _get(server, dest)
    assert "Range" not in server.headers[0] and len(server.requests) == 1
    assert dest.read_bytes() == PAYLOAD
    assert "without the server's ETag or Last-Modified" in caplog.text


def test_weak_etag_alone_is_no_validator(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.etag, server.last_modified = 'W/"weak"', None
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(PAYLOAD[:4000])
    _leftover_validators(dest, etag='W/"weak"')  # may not be used in If-Range
    _get(server, dest)
    assert "Range" not in server.headers[0] and "If-Range" not in server.headers[0]
    assert dest.read_bytes() == PAYLOAD


# --------------------------------------------------------------------------- archives

def _tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]], mode="w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _file(name: str, data: bytes = b"hello"):
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def test_extract_tar_and_members(tmp_path):
    arc = _tar(tmp_path / "a.tgz", [_file("./top/a.txt", b"A"), _file("top/sub/b.txt", b"B"),
                                    _file("other.txt", b"C"), _link("top/l", "a.txt")])
    out = extract(arc, tmp_path / "out")
    assert (out / "top" / "sub" / "b.txt").read_bytes() == b"B"
    assert (out / "top" / "l").read_bytes() == b"A"
    part = extract(arc, tmp_path / "part", members=["top/sub"])
    assert sorted(p.relative_to(part).as_posix() for p in part.rglob("*") if p.is_file()) == ["top/sub/b.txt"]
    with pytest.raises(ArchiveError, match="no member named 'nope'"):
        extract(arc, tmp_path / "none", members=["nope"])
    with pytest.raises(FileExistsError, match="not empty"):
        extract(arc, tmp_path / "out")


@pytest.mark.parametrize("entries, why", [
    ([_file("ok.txt"), _file("../evil")], r"'\.\./evil'.*'\.\.' component"),
    ([_file("ok.txt"), _file("a/../../evil")], r"'\.\.' component"),
    ([_file("ok.txt"), _file("/tmp/rdfa-abs-evil")], "absolute path"),
    ([_link("l", "../../etc/passwd")], "symbolic link"),
    ([_link("l", "/etc/passwd")], "symbolic link"),
    ([_link("sub/l", "../../x")], "symbolic link"),
    ([_file("x"), _link("h", "../x", tarfile.LNKTYPE)], "hard link"),
])
def test_unsafe_tar_refused(tmp_path, entries, why):
    work = tmp_path / "w"
    work.mkdir()
    arc = _tar(tmp_path / "evil.tgz", entries)
    with pytest.raises(ArchiveError, match=why) as err:
        extract(arc, work / "out")
    assert "evil.tgz" in str(err.value) and "nothing was extracted" in str(err.value)
    assert list(work.iterdir()) == []  # nothing written, not even the out folder
    assert not (tmp_path / "evil").exists() and not Path("/tmp/rdfa-abs-evil").exists()


@pytest.mark.parametrize("name", ["../evil", "/abs-evil", "a/../../evil"])
def test_unsafe_zip_refused(tmp_path, name):
    arc = tmp_path / "evil.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("fine.txt", "x")
        zf.writestr(zipfile.ZipInfo(name), "evil")
    with pytest.raises(ArchiveError, match=r"evil\.zip: refusing member"):
        extract(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists()


def test_truncated_tgz_reported(tmp_path):
    import os

    arc = _tar(tmp_path / "t.tgz", [_file(f"f{i}.bin", os.urandom(20000)) for i in range(5)])
    data = arc.read_bytes()
    arc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match=r"t\.tgz: truncated or corrupt"):
        extract(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["t.tgz"]


def test_truncated_plain_tar_reported(tmp_path):
    arc = _tar(tmp_path / "t.tar", [_file("a.bin", b"a" * 5000), _file("b.bin", b"b" * 5000)], mode="w")
    data = arc.read_bytes()
    arc.write_bytes(data[:7000])  # inside b.bin's data
    with pytest.raises(ArchiveError, match=r"t\.tar: truncated or corrupt"):
        extract(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_zip_reported(tmp_path):
    arc = tmp_path / "c.zip"
    with zipfile.ZipFile(arc, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.txt", b"x" * 1000)
    data = bytearray(arc.read_bytes())
    data[100] ^= 0xFF  # inside a.txt's stored bytes: CRC check fails
    arc.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"c\.zip: truncated or corrupt"):
        extract(arc, tmp_path / "out")
    arc.write_bytes(bytes(data[:50]))
    with pytest.raises(ArchiveError, match=r"c\.zip: truncated or corrupt"):
        extract(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _three_files(tmp_path, fmt: str) -> Path:
    """An archive of three 100-byte files (and a folder entry)."""
    if fmt == "zip":
        arc = tmp_path / "big.zip"
        with zipfile.ZipFile(arc, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("d/", "")
            for i in range(3):
                zf.writestr(f"d/f{i}", bytes(100))
        return arc
    folder = tarfile.TarInfo("d")
    folder.type = tarfile.DIRTYPE
    return _tar(tmp_path / "big.tgz", [(folder, None)] + [_file(f"d/f{i}", bytes(100)) for i in range(3)])


@pytest.mark.parametrize("fmt", ["tgz", "zip"])
def test_extract_caps_total_size_and_members(tmp_path, fmt):
    arc = _three_files(tmp_path, fmt)
    out = tmp_path / "out"
    # 300 bytes of zeros compress to a few: the cap is on what would be written.
    with pytest.raises(ArchiveError, match=rf"big\.{fmt}: would extract 300 bytes, more than the limit of 299 "
                                           r"\(max_bytes\); nothing was extracted"):
        extract(arc, out, max_bytes=299)
    with pytest.raises(ArchiveError, match=rf"big\.{fmt}: more than 3 entries \(limit max_members\)"):
        extract(arc, out, max_members=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [arc.name]  # not even a temporary folder
    extract(arc, out, max_bytes=300, max_members=4)
    assert (out / "d" / "f2").read_bytes() == bytes(100)


def test_extract_checks_free_disk_space(tmp_path, monkeypatch):
    from rdfa.io import archive

    arc = _three_files(tmp_path, "tgz")
    asked = []
    monkeypatch.setattr(archive, "free_bytes", lambda path: asked.append(path) or 299)
    with pytest.raises(ArchiveError, match=r"big\.tgz: would extract 300 bytes, but only 299 are free on the "
                                           r"disk of .*; nothing was extracted"):
        extract(arc, tmp_path / "new" / "out")
    assert asked == [tmp_path]  # the nearest folder that exists
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tgz"]


def test_dataset_options_set_the_extraction_caps(tmp_path):
    from rdfa.io.datasets import prepare_dataset

    arc = _three_files(tmp_path, "tgz")
    with pytest.raises(ArchiveError, match=r"big\.tgz: more than 2 entries"):
        prepare_dataset("custom", arc, tmp_path / "c", {"max_extract_files": 2})
    with pytest.raises(DatasetError, match="option max_extract_bytes must be a positive integer"):
        prepare_dataset("custom", arc, tmp_path / "c", {"max_extract_bytes": "1G"})


# --------------------------------------------------------------------------- download source of a dataset

def test_prepare_dataset_from_download(server, tmp_path, shared_dir, caplog):
    from rdfa.io.datasets import prepare_dataset

    src = shared_dir / "datasets" / "coil100" / "images"
    names = sorted(p.name for p in src.glob("obj7__*.png"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n in names:
            zf.write(src / n, f"coil-100/{n}")
    server.files["/coil-100.zip"] = buf.getvalue()
    opts = {"urls": {"coil-100.zip": server.url("/coil-100.zip")}, "download_dir": str(tmp_path / "dl")}
    with caplog.at_level(logging.WARNING):
        gnd = prepare_dataset("coil100", "download", tmp_path / "coil100", opts)
    assert "UNVERIFIED" in caplog.text
    assert len(gnd["imlist"]) == len(names) and len(gnd["qimlist"]) == 4
    assert (tmp_path / "dl" / "coil-100.zip").is_file()
    # A rerun takes the downloaded archive, without a request.
    n = len(server.requests)
    prepare_dataset("coil100", None, tmp_path / "coil100", opts)
    assert len(server.requests) == n
    # A pinned checksum that the downloaded archive does not match: downloaded again, then refused.
    with pytest.raises(DownloadError, match=r"coil-100\.zip: sha256 mismatch: expected 1111"):
        prepare_dataset("coil100", "download", tmp_path / "c2", dict(opts, sha256={"coil-100.zip": "1" * 64}))
    assert len(server.requests) == n + 1 and not (tmp_path / "c2").exists()


def test_changed_download_address_changes_the_dataset(server, tmp_path, shared_dir, caplog):
    """data.coil100.urls pointed at another archive: the new archive's images, not the old ones."""
    from rdfa.io.datasets import prepare_dataset

    src = shared_dir / "datasets" / "coil100" / "images"
    for obj in (7, 8):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for p in sorted(src.glob(f"obj{obj}__*.png")):
                zf.write(p, f"coil-100/{p.name}")
        server.files[f"/obj{obj}.zip"] = buf.getvalue()
    opts = {"download_dir": str(tmp_path / "dl")}
    gnd = prepare_dataset("coil100", "download", tmp_path / "coil100",
                          dict(opts, urls={"coil-100.zip": server.url("/obj7.zip")}))
    assert {n.split("__")[0] for n in gnd["imlist"]} == {"obj7"}
    with caplog.at_level(logging.WARNING):
        gnd = prepare_dataset("coil100", "download", tmp_path / "coil100",
                              dict(opts, urls={"coil-100.zip": server.url("/obj8.zip")}))
    assert {n.split("__")[0] for n in gnd["imlist"]} == {"obj8"}
    assert sorted(p.name for p in (tmp_path / "coil100" / "images").iterdir()) == \
        sorted(p.name for p in src.glob("obj8__*.png"))
    assert "not downloading" not in caplog.text


def _coil_zip(shared_dir) -> bytes:
    src = shared_dir / "datasets" / "coil100" / "images"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(src.glob("obj7__*.png")):
            zf.write(p, f"coil-100/{p.name}")
    return buf.getvalue()


def test_bad_downloaded_archive_is_not_trusted_again(server, tmp_path, shared_dir):
    from rdfa.io.datasets import prepare_dataset

    good = _coil_zip(shared_dir)
    dl = tmp_path / "dl"
    opts = {"urls": {"coil-100.zip": server.url("/coil-100.zip")}, "download_dir": str(dl)}
    # An HTML error page with status 200 is refused: nothing saved.
    server.files["/coil-100.zip"] = HTML
    server.content_types["/coil-100.zip"] = "text/html"
    with pytest.raises(DownloadError, match=r"coil-100\.zip: the server answered with an HTML page"):
        prepare_dataset("coil100", "download", tmp_path / "coil100", opts)
    assert list(dl.iterdir()) == []
    # A truncated archive from an earlier download (served so, its Content-Length agreeing) fails to
    # extract: moved aside, with a message saying so.
    server.files["/coil-100.zip"] = good[: len(good) // 2]
    server.content_types.pop("/coil-100.zip")
    with pytest.raises(DatasetError, match=r"coil-100\.zip: truncated or corrupt archive.*moved it to "
                                           r".*dl/coil-100\.zip\.corrupt so that a rerun downloads it again"):
        prepare_dataset("coil100", "download", tmp_path / "coil100", opts)
    assert sorted(p.name for p in dl.iterdir()) == ["coil-100.zip.corrupt"]
    # The rerun downloads it again instead of trusting the bad file.
    server.files["/coil-100.zip"] = good
    n = len(server.requests)
    gnd = prepare_dataset("coil100", "download", tmp_path / "coil100", opts)
    assert len(server.requests) == n + 1 and len(gnd["qimlist"]) == 4
    assert (dl / "coil-100.zip").read_bytes() == good


def test_users_own_corrupt_archive_is_left_in_place(tmp_path, shared_dir):
    from rdfa.io.datasets import prepare_dataset

    arc = tmp_path / "coil-100.zip"
    good = _coil_zip(shared_dir)
    arc.write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match=r"coil-100\.zip: truncated or corrupt archive") as err:
        prepare_dataset("coil100", arc, tmp_path / "coil100", {})
    assert "moved" not in str(err.value) and arc.read_bytes() == good[: len(good) // 2]


def test_file_url_downloads_whole(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "f.bin"
    part_path(dest).parent.mkdir()
    part_path(dest).write_bytes(b"leftover")  # no resume for file:// (nor ftp://): started over
    download(src.as_uri(), dest, sha256=DIGEST, size=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD and not part_path(dest).exists()
