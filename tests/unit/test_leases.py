"""LeaseKeeper counts a reservation as lost only when the worker no longer knows one this gateway
still holds: a lease dropped while its Renew call was out (its Decode claimed the blocks
meanwhile) moved on and is not lost."""

from __future__ import annotations

from services.gateway.leases import LeaseKeeper
from services.gateway.workers import WorkerHandle
from services.rpc.tandem.v1 import worker_pb2


class _Worker:
    """Renew answers that every id is gone, after the gateway dropped `moves_on` meanwhile."""

    def __init__(self, keeper: LeaseKeeper, moves_on: str) -> None:
        self.keeper, self.moves_on, self.handle = keeper, moves_on, None

    async def Renew(self, request, timeout=None):
        self.keeper.drop(self.handle, self.moves_on)
        return worker_pb2.RenewResponse(missing_request_ids=list(request.request_ids))


async def test_only_ids_still_held_count_as_lost():
    keeper = LeaseKeeper(ttl_s=3.0, rpc_timeout_s=1.0)
    worker = _Worker(keeper, moves_on="claimed")
    worker.handle = WorkerHandle(address="decode-0", role="decode", channel=None, stub=worker)
    keeper.hold(worker.handle, "claimed")
    keeper.hold(worker.handle, "expired")
    await keeper.renew_once()
    assert keeper.lost == ["expired"]
    assert keeper.holding() == 0        # the lost one is not renewed again
    await keeper.stop()
