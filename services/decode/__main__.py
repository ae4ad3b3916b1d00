"""`python -m services.decode --host H --port P [--colocated] [--model M] [--num-kv-blocks N] ...`:
one decode (or, with --colocated, colocated) worker, until SIGINT / SIGTERM (flags:
services/worker/cli.py)."""

import sys

from services.decode.worker import DecodeWorker
from services.worker.cli import main

if __name__ == "__main__":
    sys.exit(main(DecodeWorker, "python -m services.decode"))
