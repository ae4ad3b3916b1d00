"""Entry point for a Ray job: the workers as actors of the Ray cluster the job runs in, and the
gateway in the job's driver process. Same flags as `tandem serve`.

    ray job submit --working-dir . -- python -m orchestration.ray_main \\
        --prefill-workers 2 --decode-workers 2 --worker-host 0.0.0.0 --host 0.0.0.0 --api-key KEY

(a gateway beyond loopback needs --api-key, or --insecure)."""

from __future__ import annotations

import argparse
import sys

from orchestration.commands import serve
from services.engine.errors import TandemError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.ray_main", description=__doc__.splitlines()[0])
    # Inside a Ray job, "auto" joins the job's cluster.
    serve.add_arguments(parser, default_launcher="ray", default_ray_address="auto")
    args = parser.parse_args(argv)
    try:
        return serve.run(args)
    except TandemError as exc:
        print(f"ray_main: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
