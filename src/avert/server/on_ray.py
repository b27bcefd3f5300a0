"""`avert serve --ray`: the same HTTP API as a Ray Serve deployment whose replicas each hold a model.

Each replica builds the app of `avert.server.app.create_app` from the same `ServerConfig` (keys, limits, models,
styles: one value, sent to every replica) and loads the default model before it takes requests; Ray Serve's
proxy listens on `config.host:config.port` and spreads requests over the replicas. What differs from one process:
a job started with `?wait=false` lives on the replica that took it, so polling `GET /v1/jobs/{id}` may reach
another replica and get 404 (waiting requests, the default, and A1111's API are unaffected); the rate limit and
the queue bound count per replica.

Run on a cluster with `avert serve --ray --ray-address ADDR`, or with Ray Serve's CLI (`serve run
avert.server.on_ray:app_builder model=PATH replicas=2`), see docs/scale-out.md.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from avert.errors import AvertError
from avert.server.config import ServerConfig

INSTALL = "pip install 'avert[ray]'"


def import_serve():
    try:
        import ray
        from ray import serve
    except ImportError:
        raise AvertError(f"ray: serving on Ray needs Ray Serve; install it with {INSTALL}") from None
    return ray, serve


def deployment(config: ServerConfig, replicas: int = 2, cpus: float = 1.0, gpus: float = 0.0):
    """The bound Ray Serve application: `replicas` replicas of the avert app, each reserving `cpus` CPUs (and
    `gpus` GPUs)."""
    _, serve = import_serve()

    @serve.deployment(name="avert", num_replicas=replicas,
                      ray_actor_options={"num_cpus": cpus, **({"num_gpus": gpus} if gpus else {})})
    @serve.ingress()
    class AvertReplica:
        def __init__(self, config: ServerConfig):
            self.config = config

        def __serve_build_asgi_app__(self):
            from avert.server.app import create_app

            app = create_app(self.config)
            state = app.state.avert
            state.registry.components(state.current_model)  # loaded before the replica takes requests
            return app

    return AvertReplica.bind(config)


def serve_on_ray(config: ServerConfig, *, address: str | None = None, replicas: int = 2, cpus: float = 1.0,
                 gpus: float = 0.0) -> None:
    """Start (or join, with `address`) a Ray instance, deploy, and serve until SIGTERM or Ctrl+C; then shut Serve
    down and leave Ray (a Ray instance this call started is stopped)."""
    ray, serve = import_serve()
    config.check_bind()
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        else:  # a Ray instance of this machine's own, on loopback, with just enough CPUs for the replicas
            ray.init(num_cpus=max(1, int(replicas * cpus + 0.999)) + 1, include_dashboard=False,
                     _node_ip_address="127.0.0.1", log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise AvertError(f"ray-address: {address!r}: no Ray cluster could be reached ({str(error)[:200]})") from None
    # After ray.init, which installs Ray's own SIGTERM handler (it aborts the process): a SIGTERM at any point from
    # here, also while the deployment is still starting, stops the server cleanly.
    signal.signal(signal.SIGTERM, _stop)
    try:
        # one proxy, on the head node (the one entry point; it spreads requests over the replicas on every node;
        # Ray's default of a proxy per node would bind the same port twice where nodes share a machine)
        serve.start(http_options={"host": config.host, "port": config.port}, proxy_location="HeadOnly")
        serve.run(deployment(config, replicas, cpus, gpus), name="avert", route_prefix="/")
        print(f"avert serve: http://{config.host}:{config.port}/  on Ray Serve, {replicas} replicas of "
              f"{config.model or 'the default model'}; Ctrl+C stops", flush=True)
        while True:
            time.sleep(3600)
    except (_Stopped, KeyboardInterrupt):
        print("avert serve: stopping", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop is enough; shutting down takes seconds
        serve.shutdown()
        ray.shutdown()
    _leave()


class _Stopped(Exception):
    """SIGTERM arrived."""


def _stop(*_) -> None:
    raise _Stopped()


def _leave() -> None:
    """End the process once Serve and Ray are shut down, without the interpreter's exit handlers (Ray's among them),
    which have nothing left to do."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def app_builder(args: dict):
    """For Ray Serve's own CLI and config files (`serve run avert.server.on_ray:app_builder model=PATH replicas=2`):
    the deployment with the server's defaults otherwise (keys from $AVERT_API_KEY; Ray Serve's --host/--port decide
    where its proxy listens)."""
    import os

    keys = (os.environ["AVERT_API_KEY"],) if os.environ.get("AVERT_API_KEY") else ()
    config = ServerConfig(model=args.get("model") or os.environ.get("AVERT_MODEL"), api_keys=keys,
                          models_dir=args.get("models_dir"))
    return deployment(config, replicas=int(args.get("replicas", 2)), cpus=float(args.get("cpus", 1.0)))
