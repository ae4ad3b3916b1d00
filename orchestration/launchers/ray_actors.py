"""Workers as Ray actors: one actor per worker, each running the worker's gRPC server on a thread
of its own. One GPU per actor when the cluster has GPUs, else one CPU. All actors go in one
placement group packed onto as few nodes as possible, so prefill and decode sit together and
pages travel over the fastest link. (GPUs are used when the cluster has one for every worker.) Ray restarts a dead actor (max_restarts); it comes back on
the same port, so the gateway's addresses stay valid. Ray is the control plane only: tokens and
KV pages go over gRPC, never through the object store."""

from __future__ import annotations

from orchestration.launchers import WorkerSpec, make_worker
from services.addresses import free_port
from services.engine.errors import ConfigError


class WorkerActor:
    """The body of one Ray actor: starts serving in its constructor, so a restart serves again."""

    def __init__(self, spec: WorkerSpec) -> None:
        import dataclasses

        import ray

        from services.worker.hosting import WorkerThread
        from services.worker.server import WILDCARDS
        if spec.host in WILDCARDS and not spec.config.advertise_host:
            # A worker listening on every interface is reached through its node's address.
            config = dataclasses.replace(spec.config, advertise_host=ray.util.get_node_ip_address())
            spec = WorkerSpec(spec.role, config, spec.host, spec.port)
        self._thread = WorkerThread(make_worker(spec), f"{spec.role}-actor")
        self._address = self._thread.start(spec.host, spec.port)

    def address(self) -> str:
        return self._address

    def stop(self) -> None:
        self._thread.stop()


class RayLauncher:
    def __init__(self, start_timeout_s: float, ray_address: str | None = None,
                 num_cpus: int | None = None, max_restarts: int = 3) -> None:
        self._start_timeout_s = start_timeout_s
        self._ray_address = ray_address
        self._num_cpus = num_cpus
        self._max_restarts = max_restarts
        self._started_ray = False
        self.actors: list = []
        self._groups: list = []

    def _ensure_ray(self):
        import ray
        if not ray.is_initialized():
            if self._ray_address:
                ray.init(address=self._ray_address, log_to_driver=False)
            else:
                ray.init(num_cpus=self._num_cpus, include_dashboard=False, log_to_driver=False)
                self._started_ray = True
        return ray

    def start(self, specs: list[WorkerSpec]) -> list[str]:
        ray = self._ensure_ray()
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        use_gpu = ray.cluster_resources().get("GPU", 0) >= len(specs)
        bundle = {"GPU": 1, "CPU": 1} if use_gpu else {"CPU": 1}
        group = placement_group([dict(bundle) for _ in specs], strategy="PACK")
        self._groups.append(group)
        try:
            ray.get(group.ready(), timeout=self._start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(f"Ray could not place {len(specs)} workers of {bundle} within "
                              f"{self._start_timeout_s}s (cluster resources: "
                              f"{ray.cluster_resources()})") from None
        actor_class = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0,
                                 max_restarts=self._max_restarts, max_task_retries=0)(WorkerActor)
        local = not self._ray_address
        actors = []
        for index, spec in enumerate(specs):
            if local and spec.port == 0:
                spec = WorkerSpec(spec.role, spec.config, spec.host, free_port(spec.host))
            actors.append(actor_class.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=index)).remote(spec))
        self.actors += actors
        try:
            return ray.get([a.address.remote() for a in actors], timeout=self._start_timeout_s)
        except Exception as exc:
            raise ConfigError(f"Ray workers failed to start: {exc}") from exc

    def stop(self) -> None:
        import ray
        if not ray.is_initialized():
            return
        actors, self.actors = self.actors, []
        for actor in actors:
            try:
                ray.get(actor.stop.remote(), timeout=30)
            except Exception:
                pass    # already dead: nothing left to stop
            ray.kill(actor, no_restart=True)
        from ray.util.placement_group import remove_placement_group
        groups, self._groups = self._groups, []
        for group in groups:
            remove_placement_group(group)
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
