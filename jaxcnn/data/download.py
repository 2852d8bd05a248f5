"""Download one file over HTTP(S): sha256-checked, atomic, cached, failing fast.

:func:`fetch` is the only way jaxcnn downloads anything. Its promises:

* **checked** -- the bytes are hashed while they arrive; a file whose sha256 differs from the
  expected one is deleted and :class:`ChecksumError` names both digests;
* **atomic** -- bytes go to a hidden temporary file in the destination folder
  (``.<name>.<random>.part``) that is renamed onto the destination (``os.replace``) only after
  the length and the checksum are verified, so a partial file never looks complete;
* **cached** -- a destination that already exists with the right checksum is used as is, never
  downloaded again;
* **fails fast** -- one attempt, no retry loop: a refused connection fails at once, and a
  connection that delivers no byte for ``timeout`` seconds (default 30, or
  ``$JAXCNN_DOWNLOAD_TIMEOUT``) is abandoned. The timeout applies to each read, not to the
  whole transfer, so a slow but live download goes on;
* **visible** -- a tqdm bar shows bytes, size and speed (``progress=False`` hides it).

Proxies are honoured the way ``urllib`` honours them (``https_proxy``, ``no_proxy``, ...).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_TIMEOUT = 30.0
TIMEOUT_ENV = "JAXCNN_DOWNLOAD_TIMEOUT"
_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(OSError):
    """A download failed (network, HTTP status, truncation). ``url`` and ``reason`` tell why."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{reason} (URL: {url})")
        self.url = url
        self.reason = reason


class ChecksumError(DownloadError):
    """A file's sha256 is not the expected one. ``expected``, ``got`` and ``path`` tell which."""

    def __init__(self, url: str, path: Path, expected: str, got: str, reason: str):
        super().__init__(url, reason)
        self.path = Path(path)
        self.expected = expected
        self.got = got


def download_timeout(timeout: float | None = None) -> float:
    """The stall timeout in seconds: ``timeout`` if given, else ``$JAXCNN_DOWNLOAD_TIMEOUT``,
    else 30."""
    if timeout is None:
        text = os.environ.get(TIMEOUT_ENV, "").strip()
        if not text:
            return DEFAULT_TIMEOUT
        try:
            timeout = float(text)
        except ValueError:
            raise ValueError(
                f"{TIMEOUT_ENV}={text!r} is not a number; expected seconds > 0, e.g. 30"
            ) from None
        where = TIMEOUT_ENV
    else:
        where = "timeout"
    if not timeout > 0:
        raise ValueError(f"{where} must be a number of seconds > 0, got {timeout!r}")
    return float(timeout)


def check_sha256(sha256: str, where: str = "sha256") -> str:
    """``sha256`` as 64 lower-case hex digits; ValueError naming ``where`` otherwise."""
    text = str(sha256).strip().lower()
    if not _SHA256_RE.match(text):
        raise ValueError(f"{where} must be 64 hexadecimal digits, got {sha256!r}")
    return text


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _size_text(n: int | None) -> str:
    if n is None:
        return "unknown size"
    return f"{n:,} bytes"


def _reason(exc: BaseException, timeout: float) -> str:
    """One line that says what went wrong with the connection."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP error {exc.code}: {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        inner = exc.reason
        if isinstance(inner, TimeoutError):
            return f"no answer within {timeout:g} s (connection timed out)"
        if isinstance(inner, BaseException):
            return f"{type(inner).__name__}: {inner}"
        return f"URLError: {inner}"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s (timed out)"
    return f"{type(exc).__name__}: {exc}"


def fetch(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str,
    size: int | None = None,
    progress: bool = True,
    timeout: float | None = None,
    desc: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` unless ``dest`` already holds the file; return ``dest``.

    Args:
      url: an ``http://``, ``https://`` (or ``file://``) address.
      dest: the final path; its folder is created. The download goes to a hidden ``.part``
        file next to it and is renamed only once it is complete and verified.
      sha256: the expected sha256 (64 hex digits) of the file.
      size: the expected size in bytes, if known (used for the progress bar when the server
        sends no ``Content-Length``, and checked).
      progress: show a tqdm bar (bytes, with units scaled).
      timeout: seconds without a single byte after which the attempt is abandoned; also the
        connect timeout. Default ``$JAXCNN_DOWNLOAD_TIMEOUT``, else 30.
      desc: the progress bar's label (default: the file name).

    Returns:
      ``dest`` as a Path.

    Raises:
      ChecksumError: the downloaded file (now deleted) or an existing ``dest`` (left in place,
        since jaxcnn did not write it) has another sha256.
      DownloadError: the connection failed, stalled, returned an HTTP error or ended early;
        nothing is left at ``dest``.
      ValueError: a malformed ``sha256`` or ``timeout``.
    """
    from tqdm.auto import tqdm

    sha256 = check_sha256(sha256)
    timeout = download_timeout(timeout)
    dest = Path(dest)
    if dest.exists():
        got = sha256_file(dest)
        if got == sha256:
            return dest
        raise ChecksumError(
            url, dest, sha256, got,
            f"the existing file {dest} has sha256 {got}, expected {sha256}; it was not written "
            "by this download (jaxcnn only renames verified files into place), so it is left "
            "alone: delete or replace it",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    received = 0
    try:
        with os.fdopen(fd, "wb") as out:
            digest = hashlib.sha256()
            request = urllib.request.Request(url, headers={"User-Agent": "jaxcnn (urllib)"})
            try:
                response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise DownloadError(url, _reason(exc, timeout)) from None
            with response:
                header = response.headers.get("Content-Length")
                length = int(header) if header and header.strip().isdigit() else None
                total = length if length is not None else size
                with tqdm(total=total, desc=desc or f"downloading {dest.name}", unit="B",
                          unit_scale=True, unit_divisor=1024, disable=not progress,
                          leave=False) as bar:
                    read = getattr(response, "read1", response.read)  # as bytes arrive
                    while True:
                        try:
                            chunk = read(_CHUNK)
                        except TimeoutError:
                            raise DownloadError(
                                url, f"download stalled: no data for {timeout:g} s after "
                                f"{received:,} of {_size_text(total)}",
                            ) from None
                        except (OSError, http.client.HTTPException) as exc:
                            raise DownloadError(
                                url, f"connection lost after {received:,} of "
                                f"{_size_text(total)} ({_reason(exc, timeout)})",
                            ) from None
                        if not chunk:
                            break
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            expected_len = length if length is not None else size
            if expected_len is not None and received != expected_len:
                raise DownloadError(
                    url, f"incomplete download: the connection ended after {received:,} of "
                    f"{expected_len:,} bytes",
                )
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != sha256:
            raise ChecksumError(
                url, dest, sha256, got,
                f"checksum mismatch for {dest.name}: expected sha256 {sha256}, got {got} "
                f"({received:,} bytes); the download was deleted",
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return dest
