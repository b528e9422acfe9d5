"""download: a real HTTP server on 127.0.0.1 (started here) serves zips built from real files."""

import os
import socket
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from desertseg.data.check import check_data
from desertseg.data.download import PARTS, DownloadError, extract, fetch
from desertseg.data.download import download as run_download

TRAIN_TOP = "Offroad_Segmentation_Training_Dataset"
TEST_TOP = "Offroad_Segmentation_testImages"


class Server:
    """Serves ``files`` (path -> bytes) with HTTP Range support; can cut responses short."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}  # path -> how many responses to cut in half
        self.ranges = True
        self.log: list[tuple[str, str | None, int]] = []  # (path, Range header, status)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = unquote(self.path)
                data = server.files.get(path)
                rng = self.headers.get("Range")
                if data is None:
                    server.log.append((path, rng, 404))
                    self.send_error(404)
                    return
                start = 0
                if rng and server.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        server.log.append((path, rng, 416))
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                server.log.append((path, rng, 206 if start else 200))
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut.get(path, 0) > 0:
                    server.cut[path] -= 1
                    self.wfile.write(body[: len(body) // 2])  # then the connection drops
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/base%20dir/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def put(self, name: str, data: bytes) -> None:
        self.files[f"/base dir/{name}"] = data

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _pairs(split_dir: Path, n: int) -> list[Path]:
    return sorted((split_dir / "Color_Images").iterdir())[:n]


def build_train_zip(path: Path, duality_root: Path, doubled: bool = True, evil: bool = True) -> dict[str, Path]:
    """A zip like Duality's, made of real files: ``X/X/{train,val}/...`` plus hostile members.
    Returns member name (after flattening) -> source file."""
    prefix = f"{TRAIN_TOP}/{TRAIN_TOP}/" if doubled else f"{TRAIN_TOP}/"
    sources = {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(prefix, "")  # directory entries, as zip tools write them
        for split, n in (("train", 3), ("val", 2)):
            for img in _pairs(duality_root / split, n):
                for sub in ("Color_Images", "Segmentation"):
                    src = duality_root / split / sub / img.name
                    zf.write(src, f"{prefix}{split}/{sub}/{img.name}")
                    sources[f"{TRAIN_TOP}/{split}/{sub}/{img.name}"] = src
        zf.writestr(f"__MACOSX/{TRAIN_TOP}/._junk", b"resource fork")
        if evil:
            zf.writestr("../evil.txt", b"written outside dest")
            zf.writestr("/tmp/desertseg_abs_evil.txt", b"absolute path")
            zf.writestr(f"{TRAIN_TOP}/../../evil2.txt", b"climbs out")
    return sources


def build_test_zip(path: Path, unseen_dir: Path) -> dict[str, Path]:
    sources = {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for img in _pairs(unseen_dir, 2):
            for sub in ("Color_Images", "Segmentation"):
                src = unseen_dir / sub / img.name
                zf.write(src, f"{TEST_TOP}/{sub}/{img.name}")
                sources[f"{TEST_TOP}/{sub}/{img.name}"] = src
    return sources


def test_interrupted_download_resumes_with_range_and_unzips_safely(server, duality_root, tmp_path):
    zpath = tmp_path / "src.zip"
    sources = build_train_zip(zpath, duality_root)
    data = zpath.read_bytes()
    name = PARTS["train"]
    server.put(name, data)
    server.cut[f"/base dir/{name}"] = 1  # the first response stops half way
    dest = tmp_path / "a" / "dest"

    result = run_download(dest, ["train"], url=server.url, progress=False, backoff=0)

    # The second request resumed from exactly the bytes already on disk.
    assert [s for _, _, s in server.log] == [200, 206]
    assert server.log[1][1] == f"bytes={len(data) // 2}-"
    assert (dest / name).read_bytes() == data and not (dest / (name + ".part")).exists()
    # Hostile members were refused and reported; nothing appeared outside dest.
    assert sorted(result["rejected"]["train"]) == sorted(["../evil.txt", "/tmp/desertseg_abs_evil.txt", f"{TRAIN_TOP}/../../evil2.txt"])
    assert not (tmp_path / "a" / "evil.txt").exists() and not (tmp_path / "evil2.txt").exists()
    assert not Path("/tmp/desertseg_abs_evil.txt").exists()
    # The doubled top folder was flattened, macOS junk dropped, files are byte-identical.
    assert result["folders"]["train"] == [str(dest / TRAIN_TOP)]
    assert not (dest / TRAIN_TOP / TRAIN_TOP).exists() and not (dest / "__MACOSX").exists()
    for member, src in sources.items():
        assert (dest / member).read_bytes() == src.read_bytes()
    report = check_data(dest / TRAIN_TOP, progress=False)
    assert report["ok"] and [s["pairs"] for s in report["splits"]] == [3, 2]


def test_server_without_range_support_restarts_from_zero(server, duality_root, tmp_path):
    zpath = tmp_path / "src.zip"
    build_test_zip(zpath, duality_root.parent / TEST_TOP)
    data = zpath.read_bytes()
    server.put("f.zip", data)
    server.ranges = False
    server.cut["/base dir/f.zip"] = 1
    out = fetch(server.url + "f.zip", tmp_path / "f.zip", backoff=0, progress=False)
    assert out.read_bytes() == data
    assert [s for _, _, s in server.log] == [200, 200] and server.log[1][1] is not None  # asked, got the whole file


def test_complete_part_file_is_finished_by_a_416(server, tmp_path):
    server.put("f.zip", b"x" * 1000)
    (tmp_path / "f.zip.part").write_bytes(b"x" * 1000)
    out = fetch(server.url + "f.zip", tmp_path / "f.zip", backoff=0, progress=False)
    assert out.read_bytes() == b"x" * 1000 and [s for _, _, s in server.log] == [416]


def test_short_responses_give_up_with_a_resumable_part_file(server, tmp_path):
    server.put("f.zip", bytes(range(256)) * 64)
    server.cut["/base dir/f.zip"] = 99  # every response is cut
    with pytest.raises(DownloadError, match="giving up after 2 retries.*run again to resume"):
        fetch(server.url + "f.zip", tmp_path / "f.zip", retries=2, backoff=0, progress=False)
    part = tmp_path / "f.zip.part"
    assert part.exists() and 0 < part.stat().st_size < 256 * 64
    assert not (tmp_path / "f.zip").exists()  # an incomplete file never gets the final name
    server.cut.clear()
    assert fetch(server.url + "f.zip", tmp_path / "f.zip", backoff=0, progress=False).read_bytes() == bytes(range(256)) * 64


def test_missing_file_is_a_clear_error_without_retries(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.url + "nope.zip", tmp_path / "nope.zip", backoff=0, progress=False)
    assert len(server.log) == 1


def test_offline_gives_one_line_message(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connection refused, like a dead network
    with pytest.raises(DownloadError, match=r"cannot reach 127\.0\.0\.1.*offline.*--base-url"):
        fetch(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", retries=1, backoff=0, progress=False)
    env = {**os.environ, "DESERTSEG_BASE_URL": f"http://127.0.0.1:{port}/"}
    r = subprocess.run([sys.executable, "-m", "desertseg.cli", "download", "--dest", str(tmp_path / "d"), "--retries", "0"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: cannot reach 127.0.0.1") and len(r.stderr.strip().splitlines()) == 1


def test_cli_download_checks_data_and_prints_splits(server, duality_root, unseen_dir, tmp_path):
    build_train_zip(tmp_path / "t.zip", duality_root, doubled=False, evil=False)
    build_test_zip(tmp_path / "u.zip", unseen_dir)
    server.put(PARTS["train"], (tmp_path / "t.zip").read_bytes())
    server.put(PARTS["test"], (tmp_path / "u.zip").read_bytes())
    dest = tmp_path / "dest"
    env = {**os.environ, "DESERTSEG_BASE_URL": server.url}
    r = subprocess.run([sys.executable, "-m", "desertseg.cli", "download", "--dest", str(dest), "--parts", "train,test"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"train: train: {dest / TRAIN_TOP / 'train'} (3 pairs)" in r.stdout
    assert f"train: val: {dest / TRAIN_TOP / 'val'} (2 pairs)" in r.stdout
    assert f"test: {TEST_TOP}: {dest / TEST_TOP} (2 pairs)" in r.stdout
    assert r.stdout.count("OK:") == 2
    # A second run uses the zips already there: no new requests.
    before = len(server.log)
    r = subprocess.run([sys.executable, "-m", "desertseg.cli", "download", "--dest", str(dest)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and len(server.log) == before


def test_cli_download_exits_non_zero_when_members_were_refused(server, duality_root, tmp_path):
    build_train_zip(tmp_path / "t.zip", duality_root)
    server.put(PARTS["train"], (tmp_path / "t.zip").read_bytes())
    env = {**os.environ, "DESERTSEG_BASE_URL": server.url}
    r = subprocess.run([sys.executable, "-m", "desertseg.cli", "download", "--dest", str(tmp_path / "d"), "--parts", "train"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1
    assert "refused unsafe zip member '../evil.txt'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "evil.txt").exists()


def test_damaged_zip_is_reported_with_what_to_do(tmp_path):
    bad = tmp_path / PARTS["train"]
    bad.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(DownloadError, match="not a readable zip file.*download again"):
        extract(bad, tmp_path / "out")


def test_unknown_part_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown part"):
        run_download(tmp_path, ["trian"])
