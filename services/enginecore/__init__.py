"""The engine core in a process of its own: the worker's gRPC front end and the engine's step loop
no longer share one interpreter lock (docs/enginecore.md)."""
