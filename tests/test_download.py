"""download() against a loopback HTTP server, and archive.extract() safety checks."""
from __future__ import annotations

import hashlib
import io
import logging
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rdfa.io.archive import ArchiveError, extract
from rdfa.io.download import DownloadError, download, part_path

# --------------------------------------------------------------------------- loopback server

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
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
    srv.requests = []
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
    assert server.requests[-1][1] == "bytes=4000-"


def test_server_ignoring_range_restarts(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.honor_range = False
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(b"stale bytes from elsewhere")
    _get(server, dest, sha256=DIGEST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", "bytes=26-")]


def test_complete_part_from_earlier_run(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(PAYLOAD)
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
    _get(server, dest, sha256=DIGEST, size=len(PAYLOAD))
    assert server.requests == []
    with caplog.at_level(logging.WARNING, logger="rdfa.io.download"):
        _get(server, dest)  # nothing to verify against: kept, logged unverified
    assert server.requests == [] and "UNVERIFIED" in caplog.text


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
    # A pinned wrong checksum for the present archive is an error naming it.
    with pytest.raises(DownloadError, match=r"coil-100\.zip: already present but its sha256"):
        prepare_dataset("coil100", "download", tmp_path / "c2", dict(opts, sha256={"coil-100.zip": "1" * 64}))


def test_file_url_downloads_whole(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "f.bin"
    part_path(dest).parent.mkdir()
    part_path(dest).write_bytes(b"leftover")  # no resume for file:// (nor ftp://): started over
    download(src.as_uri(), dest, sha256=DIGEST, size=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD and not part_path(dest).exists()
