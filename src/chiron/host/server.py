"""Run the service over HTTP with uvicorn: in the foreground (`chiron serve`) or in a thread.

The listening socket is bound before uvicorn starts, so `--port 0` picks a free port and
the real address is known (and printed) before the first request.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import uvicorn

from chiron.core.errors import ServiceError
from chiron.host.api import create_app
from chiron.host.config import ServiceConfig
from chiron.host.service import Service


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio turns Nagle's algorithm off only on sockets
    # whose protocol says TCP, and with it on every request waits ~40 ms for an ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServiceError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(service: Service) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(service),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


def serve_forever(
    config: ServiceConfig, *, host: str, port: int, on_ready: Callable[[Service, str], None]
) -> None:
    """Open the service, serve until SIGINT/SIGTERM, then stop every enclave it started."""
    service = Service.open(config)
    try:
        sock = bind(host, port)
        on_ready(service, url_of(sock))
        _server(service).run(sockets=[sock])
    finally:
        service.close()


@contextlib.contextmanager
def running_service(
    config: ServiceConfig, *, host: str = "127.0.0.1"
) -> Iterator[tuple[Service, str]]:
    """A service on a free loopback port in a background thread; yields (service, url)."""
    service = Service.open(config)
    sock = bind(host, 0)
    server = _server(service)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise ServiceError("the service failed to start")
            threading.Event().wait(0.02)
        yield service, url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        service.close()
