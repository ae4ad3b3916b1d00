"""Generated gRPC code for proto/tandem/v1 (never edited by hand; see build.py)."""
