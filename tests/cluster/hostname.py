"""``[core] hostname_callable`` for the cluster test: both workers share one machine, so each
names itself from the environment, and the metadata DB can tell which worker ran a task."""

from __future__ import annotations

import os
import socket


def worker_name() -> str:
    return os.environ.get("BETTERTOKEN_WORKER_NAME") or socket.getfqdn()
