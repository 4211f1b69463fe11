"""Running the app under uvicorn: the socket is bound before the address is printed, and SIGHUP reloads."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from typing import Sequence, TextIO

from vidfuse.errors import VidfuseError
from vidfuse.serve.engine import Engine

log = logging.getLogger(__name__)


def reload_all(engines: Sequence[Engine]) -> None:
    """SIGHUP: reload every engine; one that fails keeps serving what it had."""
    for engine in engines:
        try:
            engine.reload()
        except VidfuseError as exc:
            log.error("reload of %s failed, still serving the previous index: %s", engine.name, exc)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise VidfuseError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)  # connections made from now on wait in the backlog until uvicorn accepts them
    return sock


def serve(engines: Sequence[Engine], sock: socket.socket, host: str, cache_dir: str | None, announce: TextIO) -> int:
    """Serve until SIGINT/SIGTERM on ``sock`` (from :func:`bind`); prints the address once it is listening."""
    import uvicorn

    from vidfuse.serve.app import create_app
    from vidfuse.serve.media import Thumbnails

    app = create_app(engines, Thumbnails(cache_dir))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reload_all, args=(engines,), daemon=True).start())
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    names = ", ".join(f"{e.name} ({e.describe()['count']} videos)" for e in engines)
    print(f"vidfuse serve: http://{shown}:{bound}/ serving {names}; API docs at /docs", file=announce, flush=True)
    server.run(sockets=[sock])
    return 0
