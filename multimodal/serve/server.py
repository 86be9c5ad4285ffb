"""Running the server: uvicorn over the app, with a graceful drain on SIGTERM / SIGINT.

`serve` starts the decoding thread, builds the app and runs uvicorn. On a signal the scheduler stops
taking jobs: new requests get 503 and ``/health`` turns 503, so a load balancer takes the replica out,
while the queued and running requests finish. Only when they have (or after `drain_timeout` seconds)
is uvicorn told to exit, so until then the replica keeps accepting connections and answers them 503
rather than refusing them; uvicorn then closes the open connections within the same timeout and the
decoding thread ends. A second signal exits at once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from multimodal.serve.app import create_app
from multimodal.serve.scheduler import Scheduler
from multimodal.sources import Backend

log = logging.getLogger(__name__)


def _server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server that first tells the scheduler to drain when asked to exit."""

        scheduler: Scheduler | None = None
        draining = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.scheduler is None or self.draining:  # no scheduler, or a second signal: exit now
                super().handle_exit(sig, frame)
                return
            self.draining = True
            self.scheduler.drain()
            log.info("draining: new requests get 503; exiting once the open ones finish")
            threading.Thread(target=self._exit_when_idle, args=(sig, frame), daemon=True).start()

        def _exit_when_idle(self, sig: int, frame: Any) -> None:
            timeout = self.config.timeout_graceful_shutdown  # None: wait as long as the requests take
            deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
            while (self.scheduler.running or self.scheduler.waiting) and time.monotonic() < deadline:
                time.sleep(0.05)
            uvicorn.Server.handle_exit(self, sig, frame)

    return DrainingServer


def build_server(
    backend: Backend,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 32,
    max_queue: int = 64,
    call_columns: int = 4096,
    drain_timeout: float = 60.0,
    log_level: str = "info",
) -> Any:
    """A uvicorn server (not started) over `backend`, with its scheduler running."""
    import uvicorn

    scheduler = Scheduler(
        backend.engine, backend.engine.sampler_config.loop, max_batch, max_queue, call_columns
    ).start()
    config = uvicorn.Config(
        create_app(backend, scheduler),
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=drain_timeout,
    )
    server = _server_class()(config)
    server.scheduler = scheduler
    return server


def serve(backend: Backend, **kwargs: Any) -> None:
    """Serve until SIGTERM / SIGINT, then drain (module docstring)."""
    server = build_server(backend, **kwargs)
    log.info("serving %s on http://%s:%d", backend.model_id, server.config.host, server.config.port)
    server.run()
