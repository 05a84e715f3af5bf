"""`lingbot-rt serve`: one process serving a release: the gRPC gateway (with its scheduler
and engine thread), the browser player with its WebSocket bridge, and `/metrics`; the DiT and
VAE stages run in it too, or in two Ray actors (`--stages ray`, `ray_stages.py`).

    browser --WebSocket--> web bridge --gRPC Play--> gateway --> scheduler --> DiT --> VAE
    gRPC clients (load tests, apps) -------------------^

SIGINT/SIGTERM drain: the gateway refuses new sessions and lets running ones play for `grace`
seconds before ending them with UNAVAILABLE.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from .executor import Executor
from .gateway import GatewayConfig, WorldGateway
from .metrics import serve_metrics
from .scheduler import SchedulerConfig
from .web import make_app

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeAddresses:
    host: str = "127.0.0.1"
    grpc_port: int = 50051
    web_port: int = 8000
    metrics_port: int | None = 9100


class Server:
    """The gateway and the web player on one event loop; `start` returns the bound ports."""

    def __init__(self, executor: Executor, scheduler_config: SchedulerConfig = SchedulerConfig(),
                 gateway_config: GatewayConfig = GatewayConfig(), addresses: ServeAddresses = ServeAddresses()):
        self.addresses = addresses
        self.registry = CollectorRegistry()
        self.gateway = WorldGateway(executor, scheduler_config, gateway_config, self.registry)
        self._runner: web.AppRunner | None = None
        self.grpc_port = self.web_port = None

    async def start(self) -> tuple[int, int]:
        host = self.addresses.host
        self.grpc_port = await self.gateway.start(f"{host}:{self.addresses.grpc_port}")
        self._runner = web.AppRunner(make_app(f"127.0.0.1:{self.grpc_port}"))
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, self.addresses.web_port)
        await site.start()
        self.web_port = self._runner.addresses[0][1]
        if self.addresses.metrics_port is not None:
            serve_metrics(self.addresses.metrics_port, self.registry, host)
        return self.grpc_port, self.web_port

    async def stop(self, grace: float = 5.0) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.gateway.stop(grace)


async def run(executor: Executor, scheduler_config: SchedulerConfig, gateway_config: GatewayConfig,
              addresses: ServeAddresses, grace: float = 5.0) -> None:
    server = Server(executor, scheduler_config, gateway_config, addresses)
    grpc_port, web_port = await server.start()
    stream = executor.config
    metrics = f", metrics on :{addresses.metrics_port}/metrics" if addresses.metrics_port else ""
    print(f"play at http://{addresses.host}:{web_port}  (gRPC lingbot.v1.WorldService on {addresses.host}:"
          f"{grpc_port}{metrics}; {stream.height}x{stream.width} at {stream.fps} fps; Ctrl-C stops)",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining for up to %.0f s", grace)
    await server.stop(grace)
