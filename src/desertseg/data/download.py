"""``desertseg download``: fetch and unpack Duality AI's public desert dataset zips.

Standard library only (urllib, zipfile). A download goes to ``<name>.zip.part`` and resumes
from there with an HTTP ``Range`` request after a dropped connection or a second run; its size
is checked against ``Content-Length``/``Content-Range`` before it is renamed to ``<name>.zip``.
Extraction refuses members with absolute paths or ``..`` (nothing is written outside the
destination), drops macOS ``__MACOSX`` junk and flattens a doubled top folder
(``X/X/train`` -> ``X/train``), which the published zips sometimes have.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlsplit

DEFAULT_BASE_URL = "https://storage.googleapis.com/duality-public-share/Hackathons/Duality%20Hackathon/"
BASE_URL_ENV = "DESERTSEG_BASE_URL"
PARTS = {
    "train": "Offroad_Segmentation_Training_Dataset.zip",
    "test": "Offroad_Segmentation_testImages.zip",
    "scripts": "Offroad_Segmentation_Scripts.zip",
}
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download or unzip that failed; the message says what and how to go on."""


def base_url(url: str | None = None) -> str:
    url = url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return url if url.endswith("/") else url + "/"


def _total_from(resp, offset: int) -> int | None:
    """Full file size from a 206's ``Content-Range`` or a 200's ``Content-Length``."""
    if resp.status == 206:
        m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != offset:
            raise DownloadError(f"server answered a resume request with a bad Content-Range: {resp.headers.get('Content-Range')!r}")
        return int(m.group(3)) if m.group(3) != "*" else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _offline(url: str, reason) -> DownloadError:
    host = urlsplit(url).hostname
    return DownloadError(f"cannot reach {host} ({reason}); are you offline? Retry later, use a mirror with --base-url or ${BASE_URL_ENV}, or put the zip into the destination folder by hand")


def fetch(url: str, dest: Path | str, retries: int = 5, backoff: float = 2.0, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` and retrying with exponential backoff.

    Returns ``dest``. Raises :class:`DownloadError` with a one-line reason.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "desertseg", **({"Range": f"bytes={offset}-"} if offset else {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                if resp.status == 200 and offset:
                    offset = 0  # the server ignored Range: start over
                total = _total_from(resp, offset)
                _copy(resp, part, offset, total, dest.name, progress)
            size = part.stat().st_size
            if total is not None and size != total:
                raise DownloadError(f"{dest.name}: got {size:,} of {total:,} bytes")
            os.replace(part, dest)
            return dest
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:  # the .part is complete already, or from another file
                m = re.match(r"bytes \*/(\d+)", e.headers.get("Content-Range", "") if e.headers else "")
                if m and int(m.group(1)) == offset:
                    os.replace(part, dest)
                    return dest
                part.unlink()
                continue
            if e.code < 500 and e.code != 429:
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
            error = f"HTTP {e.code} {e.reason}"
        except urllib.error.URLError as e:
            if isinstance(e.reason, socket.gaierror):  # no DNS: offline, retrying will not help
                raise _offline(url, e.reason) from None
            error = str(e.reason)
        except (OSError, http.client.HTTPException, DownloadError, ValueError) as e:  # dropped connection, short read, timeout
            error = f"{type(e).__name__}: {e}"
        attempt += 1
        if attempt > retries:
            if part.exists() and part.stat().st_size:
                raise DownloadError(f"{url}: giving up after {retries} retries ({error}); run again to resume from {part.stat().st_size:,} bytes")
            raise _offline(url, error)
        wait = backoff * 2 ** (attempt - 1)
        print(f"warning: {dest.name}: {error}; retry {attempt}/{retries} in {wait:.0f} s", flush=True)
        time.sleep(wait)


def _copy(resp, part: Path, offset: int, total: int | None, label: str, progress: bool) -> None:
    from tqdm import tqdm

    with open(part, "ab" if offset else "wb") as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress, leave=False) as bar:
        while True:
            chunk = resp.read(CHUNK)
            if not chunk:
                break
            f.write(chunk)
            bar.update(len(chunk))


def _member_target(name: str, dest: Path, strip: str | None) -> Path | None:
    """Where a zip member goes under ``dest``, or None when it must be refused."""
    name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    parts = PurePosixPath(name).parts
    if ".." in parts:
        return None
    if strip and parts[:1] == (strip,) and len(parts) > 1:
        parts = parts[1:]
    target = dest.joinpath(*parts).resolve()
    root = dest.resolve()
    return target if target == root or root in target.parents else None


def _doubled_top(names: list[str]) -> str | None:
    """``X`` when every member lies under ``X/X/`` (a zip of a folder that held its namesake)."""
    tops = {PurePosixPath(n.replace("\\", "/")).parts[:2] for n in names}
    tops.discard(())
    if len({t[0] for t in tops}) != 1:
        return None
    top = next(iter(tops))[0]
    return top if all(len(t) == 2 and t[1] == top for t in tops if len(t) > 1) and any(len(t) == 2 for t in tops) else None


def extract(zip_path: Path | str, dest: Path | str, progress: bool = True) -> tuple[list[Path], list[str]]:
    """Unzip safely into ``dest``. Returns ``(top-level folders written, rejected member names)``.

    Members with absolute paths, drive letters or ``..`` are rejected (and reported), never
    written. A doubled top folder is flattened while extracting. Files already present with
    the right size are kept, so an interrupted extraction can simply be run again.
    """
    from tqdm import tqdm

    zip_path, dest = Path(zip_path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rejected: list[str] = []
    tops: set[Path] = set()
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"{zip_path}: not a readable zip file ({e}); delete it and download again") from None
    with zf:
        members = [m for m in zf.infolist() if not m.filename.replace("\\", "/").startswith("__MACOSX/")]
        need = sum(m.file_size for m in members)
        free = shutil.disk_usage(dest).free
        if need > free:
            raise DownloadError(f"{zip_path}: unpacking needs {need / 1e9:.1f} GB but {dest} has {free / 1e9:.1f} GB free")
        safe = []
        for m in members:
            if _member_target(m.filename, dest, None) is None:
                rejected.append(m.filename)
            else:
                safe.append(m)
        strip = _doubled_top([m.filename for m in safe])
        for m in tqdm(safe, desc=f"unzip {zip_path.name}", unit="file", disable=not progress, leave=False):
            target = _member_target(m.filename, dest, strip)
            rel = target.relative_to(dest.resolve())
            if rel.parts:
                tops.add(dest / rel.parts[0])
            if m.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if target.is_file() and target.stat().st_size == m.file_size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".unzip-tmp")
            try:
                with zf.open(m) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                os.replace(tmp, target)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                tmp.unlink(missing_ok=True)
                raise DownloadError(f"{zip_path}: member {m.filename} is damaged ({e}); delete the zip and download again") from None
    return sorted(tops), rejected


def download(dest: Path | str, parts: list[str], url: str | None = None, progress: bool = True, retries: int = 5, backoff: float = 2.0) -> dict:
    """Download and unpack ``parts`` (train, test, scripts) into ``dest``.

    A zip already in ``dest`` is not downloaded again. Returns
    ``{"folders": {part: [folders]}, "rejected": {part: [members]}}``.
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    dest = Path(dest)
    root = base_url(url)
    folders: dict[str, list[str]] = {}
    rejected: dict[str, list[str]] = {}
    for part in parts:
        name = PARTS[part]
        zip_path = dest / name
        if not zip_path.is_file():
            print(f"Downloading {root}{quote(name)}", flush=True)
            fetch(root + quote(name), zip_path, retries=retries, backoff=backoff, progress=progress)
        tops, bad = extract(zip_path, dest, progress=progress)
        folders[part] = [str(t) for t in tops]
        rejected[part] = bad
    return {"folders": folders, "rejected": rejected}
