"""`lingbot-rt serve`: one process serving a release: the gRPC gateway (with its scheduler
and engine thread), the browser player with its WebSocket bridge, and `/metrics`; the DiT and
VAE stages run in it too, or in two Ray actors (`--stages ray`, `ray_stages.py`).

    browser --WebSocket--> web bridge --gRPC Play--> gateway --> scheduler --> DiT --> VAE
    gRPC clients (load tests, apps) -------------------^

SIGINT/SIGTERM drain: the gateway refuses new sessions and lets running ones play for `grace`
seconds before ending them with UNAVAILABLE.

`run_serve` (`lingbot-rt serve --ingress serve`) puts Ray Serve's gRPC proxy where the gateway's
server was: local Ray (or the cluster in RAY_ADDRESS), the `serve_app` application with one
replica, and the same browser bridge, talking gRPC to the proxy. On SIGINT/SIGTERM running
sessions play on for up to `grace` seconds, then are cut (Serve kills the replica):

    browser --WebSocket--> web bridge --gRPC Play--> Serve gRPC proxy --> replica: gateway --> scheduler --> ...
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

SERVE_APP_NAME = "lingbot"

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


def run_serve(args, addresses: ServeAddresses, grace: float = 5.0) -> None:
    """Serve `args` (`serve_app.ServeAppArgs`) through Ray Serve's gRPC proxy on
    `addresses.grpc_port`, the web bridge in front of it, until SIGINT/SIGTERM; then Serve
    shuts down, its replicas draining for up to `grace` seconds."""
    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions

    from .serve_app import SERVICER_FUNCTION, deployment
    ray.init()                               # joins the cluster in RAY_ADDRESS if set, else starts one here
    try:
        # Serve's HTTP proxy always starts; nothing here uses it: any free port
        serve.start(http_options={"host": addresses.host, "port": 0},
                    grpc_options=gRPCOptions(port=addresses.grpc_port, grpc_servicer_functions=[SERVICER_FUNCTION],
                                             request_timeout_s=None))
        app = deployment(args).options(graceful_shutdown_timeout_s=grace).bind(args)
        serve.run(app, name=SERVE_APP_NAME)
        asyncio.run(_bridge(args, addresses))
        # the app first, with the proxy still up: its replica's sessions play on for up to `grace`
        # seconds, then are cut (serve.shutdown alone stops the proxy at once: streams cut at once)
        serve.delete(SERVE_APP_NAME)
    finally:
        serve.shutdown()
        ray.shutdown()


async def _bridge(args, addresses: ServeAddresses) -> None:
    runner = web.AppRunner(make_app(f"127.0.0.1:{addresses.grpc_port}"))
    await runner.setup()
    await web.TCPSite(runner, addresses.host, addresses.web_port).start()
    web_port = runner.addresses[0][1]
    metrics = (f", metrics of replica i on :{args.metrics_port}+i/metrics" if args.metrics_port else "")
    print(f"play at http://{addresses.host}:{web_port}  (gRPC lingbot.v1.WorldService on Ray Serve's proxy, "
          f"port {addresses.grpc_port}{metrics}; Ctrl-C stops)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
