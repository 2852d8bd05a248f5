"""Small synthetic stand-ins for the official dataset archives, and a 127.0.0.1 file server.

The archives have exactly the official layouts, so the real download-and-decode code runs on
them:

* ``cifar-10-binary.tar.gz``: ``cifar-10-batches-bin/data_batch_{1..5}.bin``, ``test_batch.bin``
  and ``batches.meta.txt``; each record is 1 label byte, then the R, G and B planes (1,024 bytes
  each) of a 32x32 image.
* ``flower_photos.tgz``: ``flower_photos/{daisy,dandelion,roses,sunflowers,tulips}/*.jpg`` and a
  ``LICENSE.txt``.

The server binds to 127.0.0.1 only (never another address). Handlers for the failure modes a
download must survive: :func:`recording_handler` (counts requests), :func:`truncating_handler`
(announces the full length, sends less, hangs up), :func:`stalling_handler` (headers, then
silence), :func:`trickling_handler` (slow but live); :func:`closed_port_url` gives an address
where nothing listens.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
FLOWER_FOLDERS = ("daisy", "dandelion", "roses", "sunflowers", "tulips")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def cifar10_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR-10 binary records: per image 1 label byte, then R, G, B planes (row-major)."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), 3 * 32 * 32)
    rows = np.concatenate([labels.astype(np.uint8)[:, None], planes], axis=1)
    return rows.astype(np.uint8).tobytes()


def _learnable(images: np.ndarray, labels: np.ndarray, rng) -> np.ndarray:
    """Images whose mean colour encodes the label (plus noise), so a model can learn them."""
    base = (labels[:, None, None, None] * 25).astype(np.float32)
    return np.clip(base + rng.normal(0, 20, images.shape), 0, 255).astype(np.uint8)


def make_cifar10_archive(
    path: Path, *, per_batch: int = 6, test: int = 8, seed: int = 0, learnable: bool = False
) -> dict:
    """Write a CIFAR-10-format ``cifar-10-binary.tar.gz`` to ``path``.

    The images are uniform noise, or with ``learnable=True`` noise around a colour that encodes
    the label (so that a model trained on them does better than chance).

    Returns ``{"sha256", "train_images" (5*per_batch, 32, 32, 3) uint8, "train_labels",
    "test_images", "test_labels"}`` in the official file order (batches 1..5, then test).
    """
    rng = np.random.default_rng(seed)
    n_train = 5 * per_batch
    train_images = rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8)
    train_labels = (np.arange(n_train) % 10).astype(np.int32)
    rng.shuffle(train_labels)
    test_images = rng.integers(0, 256, (test, 32, 32, 3), dtype=np.uint8)
    test_labels = rng.integers(0, 10, test).astype(np.int32)
    if learnable:
        train_images = _learnable(train_images, train_labels, rng)
        test_images = _learnable(test_images, test_labels, rng)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for b in range(5):
            sl = slice(b * per_batch, (b + 1) * per_batch)
            _add_bytes(tar, f"cifar-10-batches-bin/data_batch_{b + 1}.bin",
                       cifar10_records(train_images[sl], train_labels[sl]))
        _add_bytes(tar, "cifar-10-batches-bin/test_batch.bin",
                   cifar10_records(test_images, test_labels))
        _add_bytes(tar, "cifar-10-batches-bin/batches.meta.txt",
                   ("\n".join(CIFAR10_CLASSES) + "\n\n").encode())
        _add_bytes(tar, "cifar-10-batches-bin/readme.html", b"<html>synthetic</html>")
    return dict(sha256=sha256_of(path), train_images=train_images, train_labels=train_labels,
                test_images=test_images, test_labels=test_labels)


def make_flowers_archive(
    path: Path, *, per_class: int = 3, size: tuple[int, int] = (40, 56), seed: int = 0
) -> dict:
    """Write a ``flower_photos.tgz`` of small JPEGs whose colour encodes the class.

    Returns ``{"sha256", "counts": {folder: n}}``.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = {}
    with tarfile.open(path, "w:gz") as tar:
        _add_bytes(tar, "flower_photos/LICENSE.txt", b"synthetic photos for tests\n")
        for c, folder in enumerate(FLOWER_FOLDERS):
            for i in range(per_class):
                base = np.array([40 * c + 30, 200 - 30 * c, 60 + 20 * c], np.float32)
                pixels = np.clip(base + rng.normal(0, 12, (*size, 3)), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
                _add_bytes(tar, f"flower_photos/{folder}/{1000 + 7 * i}_{c}.jpg", buf.getvalue())
            counts[folder] = per_class
    return dict(sha256=sha256_of(path), counts=counts)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@contextlib.contextmanager
def serve_directory(directory: Path, handler=None) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (a free port); yields the base URL.

    ``handler``: an optional ``SimpleHTTPRequestHandler`` subclass (e.g. one that truncates or
    stalls), given the directory through ``functools.partial``.
    """
    cls = handler or _QuietHandler
    factory = functools.partial(cls, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def recording_handler(log: list):
    """A quiet handler that appends each requested path to ``log``."""

    class Recording(_QuietHandler):
        def do_GET(self):
            log.append(self.path)
            super().do_GET()

    return Recording


def _send_headers(handler, length: int) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Content-Length", str(length))
    handler.end_headers()
    handler.wfile.flush()


def _file_bytes(handler) -> bytes | None:
    path = Path(handler.translate_path(handler.path))
    if not path.is_file():
        handler.send_error(404)
        return None
    return path.read_bytes()


def truncating_handler(fraction: float = 0.5, log: list | None = None):
    """Sends the full ``Content-Length`` but only ``fraction`` of the bytes, then hangs up."""

    class Truncating(_QuietHandler):
        def do_GET(self):
            if log is not None:
                log.append(self.path)
            data = _file_bytes(self)
            if data is None:
                return
            _send_headers(self, len(data))
            self.wfile.write(data[: int(len(data) * fraction)])
            self.wfile.flush()
            self.close_connection = True

    return Truncating


def stalling_handler(release: threading.Event, max_wait: float = 30.0):
    """Sends the headers (full ``Content-Length``), then nothing until ``release`` is set."""

    class Stalling(_QuietHandler):
        def do_GET(self):
            data = _file_bytes(self)
            if data is None:
                return
            _send_headers(self, len(data))
            release.wait(max_wait)
            self.close_connection = True

    return Stalling


def trickling_handler(pieces: int = 4, pause: float = 0.5):
    """Sends the whole file in ``pieces`` parts, ``pause`` seconds apart (slow but live)."""

    class Trickling(_QuietHandler):
        def do_GET(self):
            data = _file_bytes(self)
            if data is None:
                return
            _send_headers(self, len(data))
            step = -(-len(data) // pieces)
            for start in range(0, len(data), step):
                self.wfile.write(data[start : start + step])
                self.wfile.flush()
                time.sleep(pause)

    return Trickling


def closed_port_url(path: str = "/archive.tar.gz") -> str:
    """An http URL on 127.0.0.1 whose port has no listener (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
