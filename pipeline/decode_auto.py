"""``decode.backend: auto``: the fastest correct decoder this worker can load.

Measured with ``benchmarks/decode.py`` (figures in benchmarks/README.md): torchcodec with exact
seeks returns the requested frames (open-GOP files included) and reads each file once, while
the decord path first demuxes every packet with PyAV to guard against decord's wrong-frame
reads. torchcodec needs FFmpeg's shared libraries (Debian/Ubuntu: the ``libavcodec*`` family;
the Dockerfile installs them); where they or the package are missing, ``auto`` is PyAV, said
once per process in one line. Resolved on each worker, whose libraries are what count.
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)

AUTO = "auto"


@functools.lru_cache(maxsize=None)
def _torchcodec_loads() -> str | None:
    """None when torchcodec decodes here, else why not (one line)."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401  (loads the FFmpeg libraries)
    except Exception as exc:  # not installed, no FFmpeg libraries, a torch it does not pair with
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


@functools.lru_cache(maxsize=None)
def resolve_backend(name: str) -> str:
    """``auto`` -> ``torchcodec`` where it loads, else ``pyav``; any other name as given."""
    if name != AUTO:
        return name
    from pipeline.decode import available_backends

    installed = "torchcodec" in available_backends()
    why = _torchcodec_loads() if installed else "the package is not installed"
    if why is None:
        return "torchcodec"
    # not installed is a choice (it is an optional extra): info; installed but broken: a warning
    log.log(logging.WARNING if installed else logging.INFO,
            "decode.backend auto: torchcodec is not usable here (%s); decoding with pyav", why)
    return "pyav"
