"""`python -m services.prefill --host H --port P [--model M] [--num-kv-blocks N] ...`: one prefill
worker, until SIGINT / SIGTERM (flags: services/worker/cli.py)."""

import sys

from services.prefill.worker import PrefillWorker
from services.worker.cli import main

if __name__ == "__main__":
    sys.exit(main(PrefillWorker, "python -m services.prefill"))
