"""A load-test target: a server speaking the OpenAI SSE protocol (aiohttp) and Tandem's gRPC
Generation API (grpc.aio) whose timing and faults are injected, so the load generator's
measurements can be checked against known values. Runs in its own process (see process.py)."""
