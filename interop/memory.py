"""Give freed heap memory back to the operating system after work that allocates big, short-lived buffers
(building heat-map, SEG and SR objects for the write-back; reading an app's result arrays).

CPython hands large blocks to glibc's malloc, and glibc keeps what is freed in the arena of the thread that
freed it: after a few results the node's resident size swings by a hundred MB or more with the work mix (the
soak test saw 430-580 MB, up and down, with nothing alive), which hides real growth from the operator's
graphs. :func:`limit_arenas` (called as ``interop serve`` and ``interop worker`` start) caps the number of
arenas; :func:`release` (``malloc_trim(0)``) returns the free pages of every arena after a batch of such work
(about a millisecond), not per object. Both are no-ops where the C library lacks them (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _find_trim() -> Callable[[int], int] | None:
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _find_trim()
#: glibc's mallopt parameter for the number of malloc arenas (malloc.h: M_ARENA_MAX).
M_ARENA_MAX = -8
#: Arenas for the node's processes: glibc's default is 8 per core, and each of the node's ~18 threads may then
#: keep its own arena full of freed pages (the soak test saw the resident size of a quiet node anywhere between
#: 330 and 620 MB); two keep it near the live size, at a little lock contention the GIL makes moot.
ARENAS = 2


def limit_arenas(n: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``n`` (before threads start), unless ``MALLOC_ARENA_MAX`` is set in the
    environment (the operator's choice wins). True when the cap was set here."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, n))


def release() -> bool:
    """Return free heap pages to the OS; True when the C library could (and did) release some."""
    if _TRIM is None:
        return False
    try:
        return bool(_TRIM(0))
    except Exception:  # never let housekeeping fail the work it follows
        log.debug("malloc_trim failed", exc_info=True)
        return False
