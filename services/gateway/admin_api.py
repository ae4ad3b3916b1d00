"""The gateway's worker membership over HTTP, for deployments where nothing runs in the gateway's
process (containers, a Ray job's external orchestrator): authenticated with the API keys like
the rest, errors mapped by services/gateway/status.py.

    GET    /admin/workers                 -> {"workers": [{"address", "role", "healthy", "draining"}]}
    POST   /admin/workers {"address": "10.0.0.5:50061", "role": "decode"}
                                          -> 200 once the worker has reported (routing takes it)
    DELETE /admin/workers/{address}       -> 200 once it is drained (its running requests
                                             finished) and disconnected
"""

from __future__ import annotations

import json

from aiohttp import web

from services.engine.errors import InvalidRequestError
from services.gateway.errors import WorkerUnavailableError

ROLES = ("prefill", "decode")


class AdminApi:
    def __init__(self, gateway, authenticate, error_response, api_key) -> None:
        """gateway: its add_worker / retire_worker / pool; the rest: http_api's own helpers."""
        self._gateway = gateway
        self._authenticate = authenticate
        self._error_response = error_response
        self._api_key = api_key

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/admin/workers", self.list_workers),
                web.post("/admin/workers", self.add_worker),
                web.delete("/admin/workers/{address}", self.retire_worker)]

    async def list_workers(self, request: web.Request) -> web.Response:
        try:
            self._authenticate(self._api_key(request))
        except Exception as exc:
            return self._error_response(exc)
        return web.json_response({"workers": [_describe(w) for w in self._gateway.pool.all]})

    async def add_worker(self, request: web.Request) -> web.Response:
        try:
            self._authenticate(self._api_key(request))
            body = await _json_object(request)
            address, role = body.get("address"), body.get("role")
            if not isinstance(address, str) or ":" not in address:
                raise InvalidRequestError("address", "must be host:port of a worker")
            if role not in ROLES:
                raise InvalidRequestError("role", f"must be one of {ROLES}")
            if self._gateway.pool.find(address) is not None:
                raise InvalidRequestError("address", f"{address} is already in the pool")
            try:
                await self._gateway.add_worker(address, role)
            except TimeoutError as exc:
                raise WorkerUnavailableError(str(exc)) from None
        except Exception as exc:
            return self._error_response(exc)
        return web.json_response(_describe(self._gateway.pool.find(address)))

    async def retire_worker(self, request: web.Request) -> web.Response:
        try:
            self._authenticate(self._api_key(request))
            address = request.match_info["address"]
            if self._gateway.pool.find(address) is None:
                raise InvalidRequestError("address", f"no worker {address} in the pool")
            try:
                worker = await self._gateway.retire_worker(address)
            except TimeoutError as exc:
                raise WorkerUnavailableError(str(exc)) from None
        except Exception as exc:
            return self._error_response(exc)
        return web.json_response({**_describe(worker), "removed": True})


async def _json_object(request: web.Request) -> dict:
    try:
        body = await request.json()
    except json.JSONDecodeError:
        raise InvalidRequestError("body", "must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("body", "must be a JSON object")
    return body


def _describe(worker) -> dict:
    return {"address": worker.address, "role": worker.role, "healthy": worker.healthy,
            "draining": worker.draining}
