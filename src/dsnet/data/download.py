"""Fetching dataset files: resumable HTTP download, MD5 verification and safe tar extraction.

A download goes to `<file>.part` and is renamed into place only after its MD5 matches, so a file without the
`.part` suffix is always complete. An interrupted download resumes with an HTTP Range request from where the
`.part` file stops. Archives are extracted member by member: absolute paths, `..`, links and special files are
refused (a tar file can otherwise write anywhere on disk), and each file is written to a temporary name and
renamed, so an interrupted extraction never leaves a half-written batch under its real name.

Every problem a user can fix (no network, a wrong checksum, a corrupt archive) is raised as a one-line
`DataError` that names the file and what to do.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import sys
import tarfile
import zlib
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from dsnet.errors import DataError

__all__ = ["file_md5", "download_file", "extract_tar"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


def file_md5(path: str | os.PathLike[str]) -> str:
    """Hex MD5 digest of a file, read in 1 MiB chunks so a 1.3 GB archive never sits in memory."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _one_line(exc: BaseException | str) -> str:
    """An exception (or a reason string) as `Type: message` on one line, for embedding in a `DataError`."""
    text = " ".join(str(exc).split())
    if isinstance(exc, str):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def download_file(url: str, dest: str | os.PathLike[str], md5: str | None = None, *, progress: bool = True) -> Path:
    """Downloads `url` to `dest`, resuming a previous partial download and checking the MD5.

    Does nothing when `dest` already exists with the right MD5. Bytes arrive in `<dest>.part`; when a
    `.part` file exists, only the missing tail is requested (HTTP Range). A server that ignores the range
    answers with the whole file, which then replaces the partial one.

    Args:
        url: where to fetch the file from.
        dest: the final path of the file; its folder is created if needed.
        md5: expected hex MD5 of the whole file, or None to skip the check.
        progress: show a byte progress bar on stderr (only when stderr is a terminal).

    Returns:
        `dest` as a `Path`.

    Raises:
        DataError: the network failed, the transfer stopped early, or the MD5 does not match (a complete
            download with the wrong MD5 is deleted so that the next run starts afresh).
    """
    dest = Path(dest)
    if dest.exists():
        if md5 is not None and (actual := file_md5(dest)) != md5:
            raise DataError(
                f"{dest}: MD5 {actual} does not match the expected {md5}; delete it and rerun to download again"
            )
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the data folder {dest.parent} ({_one_line(exc)}); choose a writable --data-dir"
        ) from exc
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "dsnet"}
    if start:
        headers["Range"] = f"bytes={start}-"
        logger.info("resuming download of %s at byte %d", url, start)
    else:
        logger.info("downloading %s to %s", url, dest)

    complete = False
    try:
        response = urlopen(Request(url, headers=headers), timeout=_TIMEOUT_S)
    except HTTPError as exc:
        if exc.code == 416 and start:  # the range starts at or past the end: the .part file is already whole
            complete = True
        else:
            raise DataError(
                f"cannot download {url}: HTTP {exc.code} {exc.reason}; check the address and the network, then rerun"
            ) from exc
    except (URLError, OSError) as exc:
        raise DataError(
            f"cannot download {url}: {_one_line(getattr(exc, 'reason', exc))}; check the network and rerun"
        ) from exc

    if not complete:
        with response:
            resumed = start > 0 and getattr(response, "status", 200) == 206
            offset = start if resumed else 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            bar = tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                file=sys.stderr,
                disable=not progress or not sys.stderr.isatty(),
                mininterval=0.25,
            )
            try:
                with open(part, "ab" if resumed else "wb") as f, bar:
                    while chunk := response.read(_CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
            except (URLError, HTTPException, ConnectionError, TimeoutError, EOFError) as exc:
                raise DataError(
                    f"download of {url} stopped ({_one_line(exc)}); rerun to resume from {part}"
                ) from exc
            except OSError as exc:  # a read-only folder, a full disk, an SSL error
                raise DataError(f"download of {url} to {part} failed ({_one_line(exc)}); check the network and the "
                                "free disk space (or choose a writable --data-dir), then rerun to resume") from exc
        if total is not None and part.stat().st_size < total:
            raise DataError(
                f"download of {url} stopped at {part.stat().st_size} of {total} bytes; rerun to resume from {part}"
            )

    if md5 is not None and (actual := file_md5(part)) != md5:
        part.unlink()
        raise DataError(
            f"{dest}: downloaded file has MD5 {actual}, expected {md5}; it was deleted, rerun to download again"
        )
    os.replace(part, dest)
    return dest


def _member_target(root: Path, name: str, archive: Path) -> Path:
    """Where an archive member goes under `root`; refuses names that would land outside it."""
    pure = PurePosixPath(name)
    target = (root / Path(*pure.parts)).resolve() if pure.parts else root
    if pure.is_absolute() or ".." in pure.parts or not target.is_relative_to(root):
        raise DataError(f"{archive}: member {name!r} points outside the target folder, which the official archive "
                        "never does; delete it and rerun to download again")
    return target


def extract_tar(archive: str | os.PathLike[str], dest_dir: str | os.PathLike[str]) -> list[Path]:
    """Extracts a (gzipped) tar archive into `dest_dir`, safely.

    Only plain files and folders are written; absolute paths, `..`, symbolic or hard links and device files
    raise `DataError` before anything outside `dest_dir` is touched.

    Args:
        archive: the `.tar` or `.tar.gz` file.
        dest_dir: the folder to extract into (created if needed).

    Returns:
        The extracted files, in archive order.

    Raises:
        DataError: the archive is truncated or corrupt, or holds a member that is not safe to extract.
    """
    archive = Path(archive)
    root = Path(dest_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    logger.info("extracting %s to %s", archive, root)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                target = _member_target(root, member.name, archive)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_name(target.name + ".part")
                    source = tar.extractfile(member)
                    assert source is not None  # a regular file member always has a data stream
                    with source, open(tmp, "wb") as out:
                        shutil.copyfileobj(source, out, _CHUNK)
                    os.replace(tmp, target)
                    written.append(target)
                else:
                    raise DataError(f"{archive}: member {member.name!r} is a link or special file, which a dataset "
                                    "archive never holds; delete it and rerun to download again")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(
            f"{archive}: cannot extract ({_one_line(exc)}); the archive is corrupt, delete it and rerun to download "
            "again"
        ) from exc
    return written
