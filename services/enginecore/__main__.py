"""`python -m services.enginecore FD`: an engine process, started by EngineCoreClient with its end
of the socket pair as descriptor FD."""

import sys
from multiprocessing.connection import Connection

from services.enginecore.core import run_engine_process

if __name__ == "__main__":
    run_engine_process(Connection(int(sys.argv[1])))
