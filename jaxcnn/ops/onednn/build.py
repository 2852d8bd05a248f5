"""Build (once, cached) and load jaxcnn's native FFI library: the oneDNN convolutions
(``conv.cc``) and the BatchNorm kernels (``batchnorm.cc``).

Nothing here is needed by the rest of jaxcnn: when oneDNN or a C++ compiler is missing,
:func:`load` raises :class:`OnednnUnavailable` with the reason and the fix, and
:func:`available` returns False, so callers fall back to pure JAX.

Where things come from:

* headers: the ``onednn-devel`` wheel (``<prefix>/include/oneapi/dnnl/dnnl.hpp``);
* the library: the ``onednn`` wheel (``<prefix>/lib/libdnnl.so.3``), found under
  ``$JAXCNN_ONEDNN_ROOT``, then this interpreter's prefixes;
* XLA's FFI headers: ``jax.ffi.include_dir()``;
* the compiler: ``$CXX``, else ``c++`` or ``g++`` on the PATH.

The shared library is written to ``$JAXCNN_CACHE_DIR/onednn/<key>/`` (default
``~/.cache/jaxcnn``), where ``<key>`` hashes the source, the headers' location, jax's version
and the compiler, so a new jax or oneDNN builds a new copy. It is compiled to a temporary name
and renamed into place, so a crashed or concurrent build never leaves a broken file behind.
``JAXCNN_ONEDNN=0`` turns the whole path off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OnednnUnavailable", "TARGETS", "available", "load", "unavailable_reason"]

# The C++ sources of the library: the oneDNN convolutions and the BatchNorm kernels.
SOURCES = (Path(__file__).with_name("conv.cc"), Path(__file__).with_name("batchnorm.cc"))
LIBRARY_NAME = "libjaxcnn_onednn.so"
INSTALL_HINT = ('pip install "jaxcnn[onednn]" (the onednn and onednn-devel wheels) and a C++ '
                'compiler')
# FFI target name -> the handler symbol exported by conv.cc.
TARGETS = {
    "jaxcnn_onednn_conv_forward": "JaxcnnOnednnConvForward",
    "jaxcnn_onednn_conv_backward_data": "JaxcnnOnednnConvBackwardData",
    "jaxcnn_onednn_conv_backward_weights": "JaxcnnOnednnConvBackwardWeights",
    "jaxcnn_onednn_conv_forward_bias": "JaxcnnOnednnConvForwardBias",
    "jaxcnn_onednn_conv_backward_weights_bias": "JaxcnnOnednnConvBackwardWeightsBias",
    "jaxcnn_batchnorm_forward": "JaxcnnBatchNormForward",
    "jaxcnn_batchnorm_backward": "JaxcnnBatchNormBackward",
    "jaxcnn_batchnorm_pool_forward": "JaxcnnBatchNormPoolForward",
    "jaxcnn_batchnorm_pool_backward": "JaxcnnBatchNormPoolBackward",
}


class OnednnUnavailable(RuntimeError):
    """oneDNN convolutions cannot be used here; the message says why and how to fix it."""


@dataclass(frozen=True)
class Toolchain:
    """What the build needs: oneDNN's include and lib folders and a C++ compiler."""

    include_dir: Path
    lib_dir: Path
    compiler: str


def _candidate_prefixes() -> list[Path]:
    roots = [os.environ.get("JAXCNN_ONEDNN_ROOT"), sys.prefix, sys.base_prefix]
    return [Path(r) for r in dict.fromkeys(r for r in roots if r)]


def find_toolchain() -> Toolchain:
    """Locate oneDNN's headers and library and a C++ compiler, or raise OnednnUnavailable."""
    include = lib = None
    for prefix in _candidate_prefixes():
        if include is None and (prefix / "include/oneapi/dnnl/dnnl.hpp").is_file():
            include = prefix / "include"
        if lib is None and any((prefix / "lib").glob("libdnnl.so*")):
            lib = prefix / "lib"
    searched = ", ".join(str(p) for p in _candidate_prefixes())
    if include is None or lib is None:
        what = "headers (onednn-devel)" if include is None else "library (onednn)"
        raise OnednnUnavailable(
            f"oneDNN {what} not found under {searched}; install them with {INSTALL_HINT}, or "
            "point JAXCNN_ONEDNN_ROOT at a folder with include/ and lib/"
        )
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise OnednnUnavailable(
            "no C++ compiler found (set CXX, or install g++) to build jaxcnn's oneDNN kernels"
        )
    return Toolchain(include, lib, compiler)


def cache_root() -> Path:
    """``$JAXCNN_CACHE_DIR`` or ``~/.cache/jaxcnn``."""
    return Path(os.environ.get("JAXCNN_CACHE_DIR") or Path.home() / ".cache" / "jaxcnn")


def _build_key(tc: Toolchain, ffi_include: str) -> str:
    import jax

    h = hashlib.sha256()
    for source in SOURCES:
        h.update(source.read_bytes())
    for part in (str(tc.include_dir), str(tc.lib_dir), tc.compiler, ffi_include, jax.__version__):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:16]


def compile_library(tc: Toolchain, out: Path) -> None:
    """Compile the C++ sources into the shared library ``out`` (atomically: a temporary file,
    then a rename)."""
    import jax.ffi

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [
        # -ffp-contract=off: batchnorm.cc rounds x*a + b alike in its forward and backward;
        # -fno-trapping-math lets its selects vectorise (no value changes).
        tc.compiler, "-O3", "-ffp-contract=off", "-fno-trapping-math", "-std=c++17",
        "-shared", "-fPIC", "-w",
        f"-I{jax.ffi.include_dir()}", f"-I{tc.include_dir}", *map(str, SOURCES),
        f"-L{tc.lib_dir}", "-ldnnl",
        # DT_RPATH (not RUNPATH): also searched for libdnnl's own dependencies (libtbb, the
        # Intel runtimes), which sit beside it and which libdnnl itself has no path for.
        f"-Wl,--disable-new-dtags,-rpath,{tc.lib_dir}", "-o", tmp,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise OnednnUnavailable(f"building jaxcnn's oneDNN kernels failed:\n{tail}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_lock = threading.Lock()
_state: dict = {}  # "lib" or "error": the outcome of the first load()
_registered: set[str] = set()  # FFI targets registered in this process (XLA allows it once)


def load() -> ctypes.CDLL:
    """The loaded library with its FFI targets registered for the CPU (built on first use).

    Raises:
      OnednnUnavailable: disabled by ``JAXCNN_ONEDNN=0``, oneDNN or a compiler missing, or the
        build failed; the message gives the reason and the fix. The outcome is remembered.
    """
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        if "error" in _state:
            raise OnednnUnavailable(_state["error"])
        try:
            _state["lib"] = _build_and_register()
        except OnednnUnavailable as err:
            _state["error"] = str(err)
            raise
        return _state["lib"]


def _build_and_register() -> ctypes.CDLL:
    if os.environ.get("JAXCNN_ONEDNN", "1") == "0":
        raise OnednnUnavailable("oneDNN convolutions are turned off (JAXCNN_ONEDNN=0)")
    import jax
    import jax.ffi

    tc = find_toolchain()
    _state["installed"] = True  # from here on a failure is worth a warning (see available())
    _point_opencl_at_cpu_runtime(tc.lib_dir)
    path = cache_root() / "onednn" / _build_key(tc, jax.ffi.include_dir()) / LIBRARY_NAME
    if not path.is_file():
        compile_library(tc, path)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as err:
        raise OnednnUnavailable(f"loading {path} failed: {err}; delete it to rebuild") from err
    lib.JaxcnnOnednnSelfTest.restype = ctypes.c_char_p
    problem = lib.JaxcnnOnednnSelfTest().decode()
    if problem:
        raise OnednnUnavailable(f"oneDNN ({tc.lib_dir}) does not run here: {problem}")
    for target, symbol in TARGETS.items():
        if target not in _registered:
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")
            _registered.add(target)
    return lib


def _point_opencl_at_cpu_runtime(lib_dir: Path) -> None:
    """Let the OpenCL loader find Intel's CPU runtime, when oneDNN is a SYCL build.

    The ``onednn`` wheels since 2025 are built for SYCL: their CPU engine is a SYCL CPU device,
    served by the ``intel-opencl-rt`` wheel's ``libintelocl.so`` beside libdnnl. The OpenCL
    loader only looks for it in ``/etc/OpenCL/vendors`` (the wheel's own .icd file points at a
    placeholder path), so without this oneDNN fails with "could not create an engine". A value
    the user set is kept; CPU-only builds (``onednn-cpu-gomp``) have no such file and need nothing.
    """
    runtime = lib_dir / "libintelocl.so"
    if runtime.is_file() and not os.environ.get("OCL_ICD_FILENAMES"):
        os.environ["OCL_ICD_FILENAMES"] = str(runtime)


def available() -> bool:
    """True when the oneDNN kernels are built (or build now) and registered.

    When oneDNN is installed but cannot be used (the build or its self-test failed), warns once
    with the reason: the caller then runs the slower pure-JAX convolutions.
    """
    try:
        load()
    except OnednnUnavailable as err:
        if _state.get("installed") and not _state.get("warned"):
            _state["warned"] = True
            warnings.warn(f"jaxcnn: oneDNN is installed but unusable, so convolutions run in "
                          f"pure JAX (slower on CPUs): {err}", RuntimeWarning, stacklevel=2)
        return False
    return True


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    try:
        load()
    except OnednnUnavailable as err:
        return str(err)
    return None


def version() -> str:
    """oneDNN's version as the built library reports it, e.g. ``"3.13.0"``."""
    lib = load()
    lib.JaxcnnOnednnVersion.restype = ctypes.c_char_p
    return lib.JaxcnnOnednnVersion().decode()
