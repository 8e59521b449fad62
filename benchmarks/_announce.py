"""The one line every baseline server prints when it listens, in `socketlab serve`'s own format.

`socketlab bench compare` starts each server with `--port 0` and reads the port from this line.
"""

from __future__ import annotations

import sys


def announce(proto: str, port: int) -> None:
    print(f"{proto} upper listening on 127.0.0.1:{port}", flush=True)
    sys.stdout.flush()
