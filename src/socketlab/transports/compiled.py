"""Which copy of a hot path runs: the one the build compiled with mypyc, or its Python source.

Two modules hold the code that runs once per chunk or datagram: chunk_path.py (TCP) and
datagram_path.py (UDP). When a C compiler is at hand, the build (hatch_build.py) compiles each with mypyc
and installs the result beside it as `_<name>_native`, stamped with the SHA-256 of the source it came
from. `load` takes that copy only if the stamp matches the source next to it: in a development install
the copy sits in src/ and goes stale as soon as the source is edited, and a stale copy would run code
that is no longer in the repository.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from types import ModuleType

HOT_PATHS = ("chunk_path", "datagram_path")
COMPILED = "compiled with mypyc"
PURE_PYTHON_VARIABLE = "SOCKETLAB_PURE_PYTHON"  # set (non-empty) at install or run time: Python only


def load(name: str) -> tuple[ModuleType, str]:
    """socketlab.transports.NAME, compiled if possible; and which copy it is, in words."""
    source = importlib.import_module(f"socketlab.transports.{name}")
    if os.environ.get(PURE_PYTHON_VARIABLE):
        return source, f"Python ({PURE_PYTHON_VARIABLE} is set)"
    try:
        native = importlib.import_module(f"socketlab.transports._{name}_native")
    except ImportError:
        return source, "Python (no compiled copy: the build had no C compiler, or was asked for Python)"
    origin = source.__file__
    digest = hashlib.sha256(Path(origin).read_bytes()).hexdigest() if origin else ""
    if getattr(native, "SOURCE_SHA256", None) != digest:
        return source, f"Python (the compiled copy is older than {name}.py: reinstall socketlab)"
    return native, COMPILED
