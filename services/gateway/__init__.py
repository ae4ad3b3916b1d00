"""The gateway: public gRPC (tandem.v1.Generation, health, reflection) and OpenAI-compatible HTTP
APIs on one routing core, with admission control in front of the workers.

Interfaces:
- `GatewayConfig` (config.py): frozen; host, grpc_port, http_port (0: a free port), model,
  served_model_name, mode ("disaggregated" | "colocated"), prefill_workers, decode_workers
  (host:port of the workers' gRPC services), api_keys (empty: no auth; required beyond loopback
  unless insecure), cluster_token (sent to the workers), tls (TlsConfig or None), kv_transport,
  max_model_len, request_timeout_s, reservation_ttl_s, load_poll_interval_s,
  worker_ready_timeout_s, warm_path_timeout_s (0: no warm path), admission
  (AdmissionConfig: queue bound and timeout, running limit, prefill queue tokens and wait,
  tenant rate). kv_transport: "" / "auto" (by locality), "grpc", "cuda_ipc", "local".
- `Gateway(config)` (gateway.py): `await gateway.start()` (returns once serving: workers reported,
  warm path done), then `gateway.grpc_port`,
  `gateway.http_port` (bound ports), `gateway.grpc_address`, `gateway.http_url`; `await gateway.stop()`.
  Also an async context manager.
- `python -m services.gateway --decode ADDR [--decode ADDR] [--prefill ADDR ...] [--mode colocated]
  [--model NAME] [--grpc-port P] [--http-port P] [--api-key K] [--insecure] [--cluster-token-file F]
  [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]` (__main__.py): for containers.
- `remote_outputs(target, prompt, params)` (client.py): RequestOutputs streamed from a running
  server, for `tandem generate --target HOST:PORT`.

Layout: config.py, admission.py (+ token_bucket.py), routing.py, workers.py (channels, load
reports, booking ledger), session.py (one request on the workers; worker_calls.py: their failures
as typed errors), warm_path.py (real requests to every worker before the gateway serves), service.py (the shared core; request.py: the shapes between layers),
grpc_api.py, http_api.py (+ openai_protocol.py, openai_responses.py), output_text.py (stop strings),
errors.py + status.py (the gateway's errors; every error -> gRPC / HTTP, in one table), client.py.
See docs/gateway.md.
"""
