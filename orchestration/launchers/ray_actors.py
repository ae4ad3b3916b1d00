"""Workers as Ray actors: one actor per worker, each running the worker's gRPC server on a thread
of its own. Each actor reserves the GPU share the cluster's placement gave it: a whole GPU when
there is one per worker, else a fraction (1/k of a GPU shared by k workers, Ray then hands the
same device to each), or none on a cluster without GPUs; and one CPU.

Locality: the workers of one node group (WorkerSpec.node_group: a prefill worker and the decode
workers it feeds) share one bundle of one placement group, and a bundle always sits on one node,
so their pages travel over that node's fastest link (cuda_ipc with CUDA). The groups' bundles are
packed onto as few nodes as possible (strategy "pack") or spread across nodes ("spread"). The
bundles are booked at `reserve` for every worker the cluster may run, so a worker the autoscaler
adds later finds its node's room. An actor is ready once its worker has warmed up. Ray restarts a
dead actor (max_restarts); it comes back on the same port, so the gateway's addresses stay
valid. Ray is the control plane only: tokens and KV pages go over gRPC, never through the object
store."""

from __future__ import annotations

import dataclasses
import logging
import time

from orchestration.gpus import local_gpus
from orchestration.launchers import RAY_STRATEGIES, WorkerSpec, make_worker
from orchestration.placement import Gpus
from services.addresses import free_port
from services.engine.errors import ConfigError

log = logging.getLogger("tandem.launcher")


class WorkerActor:
    """The body of one Ray actor: starts serving in its constructor, so a restart serves again."""

    def __init__(self, spec: WorkerSpec) -> None:
        import ray

        from services.worker.hosting import WorkerThread
        from services.worker.server import WILDCARDS
        if spec.host in WILDCARDS and not spec.config.advertise_host:
            # A worker listening on every interface is reached through its node's address.
            config = dataclasses.replace(spec.config, advertise_host=ray.util.get_node_ip_address())
            spec = dataclasses.replace(spec, config=config)
        if spec.gpu_share:
            # Ray makes the GPU it assigned the only one visible to this actor.
            engine = dataclasses.replace(spec.config.engine, device="cuda")
            spec = dataclasses.replace(spec, config=dataclasses.replace(spec.config, engine=engine))
        self._role = spec.role
        self._thread = WorkerThread(make_worker(spec), f"{spec.role}-actor")
        self._address = self._thread.start(spec.host, spec.port)

    def __repr__(self) -> str:
        # Ray shows this in its logs and state API (`ray list actors`: repr_name).
        return f"{self._role}-worker-{getattr(self, '_address', 'starting')}"

    def address(self) -> str:
        return self._address

    def node_id(self) -> str:
        import ray
        return ray.get_runtime_context().get_node_id()

    def stop(self) -> None:
        self._thread.stop()


class RayLauncher:
    def __init__(self, start_timeout_s: float, ray_address: str | None = None,
                 num_cpus: int | None = None, max_restarts: int = 3, strategy: str = "pack") -> None:
        if strategy not in RAY_STRATEGIES:
            raise ConfigError(f"ray strategy must be one of {RAY_STRATEGIES}, got {strategy!r}")
        self._start_timeout_s = start_timeout_s
        self._ray_address = ray_address
        self._num_cpus = num_cpus
        self._max_restarts = max_restarts
        self._strategy = strategy
        self._started_ray = False
        self.actors: list = []
        self.by_address: dict[str, object] = {}
        self._group = None
        self._bundle_of: dict[int, int] = {}     # node group -> bundle index

    def _ensure_ray(self):
        import ray
        if not ray.is_initialized():
            if self._ray_address:
                ray.init(address=self._ray_address, log_to_driver=False)
            else:
                ray.init(num_cpus=self._num_cpus, include_dashboard=False, log_to_driver=False)
                self._started_ray = True
        return ray

    def gpus(self) -> Gpus:
        """The Ray cluster's GPUs; their memory is known only on a local instance (this machine)."""
        ray = self._ensure_ray()
        count = int(ray.cluster_resources().get("GPU", 0))
        memory = local_gpus().memory_bytes if count and not self._ray_address else None
        return Gpus(count, memory)

    def reserve(self, slots: list[WorkerSpec]) -> None:
        """One bundle per node group, holding the CPUs and GPU shares of all its workers."""
        ray = self._ensure_ray()
        from ray.util.placement_group import placement_group
        groups = sorted({s.node_group for s in slots})
        self._bundle_of = {g: i for i, g in enumerate(groups)}
        bundles = []
        for g in groups:
            members = [s for s in slots if s.node_group == g]
            bundle = {"CPU": float(len(members))}
            gpu = sum(s.gpu_share for s in members)
            if gpu:
                bundle["GPU"] = round(gpu, 4)
            bundles.append(bundle)
        self._group = placement_group(bundles, strategy="SPREAD" if self._strategy == "spread" else "PACK")
        try:
            ray.get(self._group.ready(), timeout=self._start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(f"Ray could not place {len(slots)} workers in {len(bundles)} node "
                              f"groups {bundles} within {self._start_timeout_s}s (each group must "
                              f"fit on one node; cluster resources: {ray.cluster_resources()})") from None

    def start(self, specs: list[WorkerSpec]) -> list[str]:
        ray = self._ensure_ray()
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        if self._group is None:
            self.reserve(specs)
        actor_class = ray.remote(num_cpus=1, max_restarts=self._max_restarts,
                                 max_task_retries=0)(WorkerActor)
        local = not self._ray_address
        actors = []
        for spec in specs:
            if local and spec.port == 0:
                spec = dataclasses.replace(spec, port=free_port(spec.host))
            strategy = PlacementGroupSchedulingStrategy(
                placement_group=self._group, placement_group_bundle_index=self._bundle_of[spec.node_group])
            actors.append(actor_class.options(num_gpus=spec.gpu_share,
                                              scheduling_strategy=strategy).remote(spec))
        self.actors += actors
        try:
            addresses = ray.get([a.address.remote() for a in actors], timeout=self._start_timeout_s)
        except Exception as exc:
            raise ConfigError(f"Ray workers failed to start: {exc}") from exc
        self.by_address.update(zip(addresses, actors))
        return addresses

    def node_of(self, address: str) -> str:
        """The Ray node id the worker at `address` runs on."""
        import ray
        return ray.get(self.by_address[address].node_id.remote(), timeout=30)

    def local_worker(self, address: str) -> None:
        return None     # its workers live in other processes: reached over gRPC

    def stop_worker(self, address: str) -> None:
        actor = self.by_address.pop(address)
        self.actors.remove(actor)
        self._stop_actor(actor)

    @staticmethod
    def _stop_actor(actor) -> None:
        import ray
        try:
            ray.get(actor.stop.remote(), timeout=30)
        except Exception:
            pass    # already dead: nothing left to stop
        ray.kill(actor, no_restart=True)
        _await_exit(actor)

    def stop(self) -> None:
        import ray
        if not ray.is_initialized():
            return
        actors, self.actors, self.by_address = self.actors, [], {}
        for actor in actors:
            self._stop_actor(actor)
        from ray.util.placement_group import remove_placement_group
        group, self._group = self._group, None
        if group is not None:
            remove_placement_group(group)
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def _await_exit(actor, timeout_s: float = 30.0) -> None:
    """ray.kill only sends the kill: waits until the actor no longer answers, so that a removed
    worker's slot (its GPU memory, its port) is free when stop_worker returns."""
    import ray
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=1.0)
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            continue
        time.sleep(0.1)
    log.warning("a killed worker actor still answers after %.0f s", timeout_s)
