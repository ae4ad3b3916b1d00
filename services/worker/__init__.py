"""What every worker kind (prefill, decode) shares: its config, its gRPC server lifecycle and
error edge, and hosting in a thread of its own (in-process clusters, Ray actors)."""
