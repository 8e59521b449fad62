"""Build hook: compile the gettext catalogs (locale/<lang>.po) into the package as .mo files, and the
servers' hot paths (src/socketlab/transports/chunk_path.py and datagram_path.py) with mypyc when it can.

The .mo writer is here, in a few lines, so the catalogs need nothing beyond hatchling: the format is GNU
gettext's (magic, revision, counts, two tables of (length, offset), then the strings).

The mypyc step is optional by design: it needs a C compiler and Python's headers, which a student's
machine may lack. When it cannot run, the build says why and socketlab installs as pure Python, the
same code a little slower. SOCKETLAB_PURE_PYTHON=1 skips it on purpose.
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

ROOT = Path(__file__).parent
PO_DIR = ROOT / "locale"
OUT_DIR = ROOT / "src" / "socketlab" / "locale"
TRANSPORTS = ROOT / "src" / "socketlab" / "transports"
# The modules of transports/ compiled, each into `_<name>_native`, stamped with SOURCE_SHA256 of its
# source; transports/compiled.py (which has the same list) loads a copy only if the stamp matches.
HOT_PATHS = ("chunk_path", "datagram_path")


def parse_po(text: str) -> dict[str, str]:
    """msgid -> msgstr for every translated, non-fuzzy entry (msgctxt and plurals unsupported)."""
    entries: dict[str, str] = {}
    msgid: list[str] = []
    msgstr: list[str] = []
    target: list[str] | None = None
    fuzzy = False

    def flush() -> None:
        nonlocal fuzzy
        key, value = "".join(msgid), "".join(msgstr)
        if value and not fuzzy:
            entries[key] = value
        msgid.clear()
        msgstr.clear()
        fuzzy = False

    for raw in [*text.splitlines(), ""]:
        line = raw.strip()
        if line.startswith("#,") and "fuzzy" in line:
            if msgstr:
                flush()
            fuzzy = True
        elif line.startswith("msgid "):
            if msgstr:
                flush()
            target = msgid
            target.append(ast.literal_eval(line[6:]))
        elif line.startswith("msgstr "):
            target = msgstr
            target.append(ast.literal_eval(line[7:]))
        elif line.startswith('"') and target is not None:
            target.append(ast.literal_eval(line))
        elif not line and msgstr:
            flush()
    return entries


def compile_mo(entries: dict[str, str]) -> bytes:
    keys = sorted(entries)
    ids = [k.encode() for k in keys]
    strs = [entries[k].encode() for k in keys]
    header = 7 * 4
    n = len(keys)
    ids_table = header
    strs_table = ids_table + n * 8
    data_start = strs_table + n * 8
    table_ids, table_strs, blob = [], [], b""
    for s in ids:
        table_ids.append((len(s), data_start + len(blob)))
        blob += s + b"\0"
    for s in strs:
        table_strs.append((len(s), data_start + len(blob)))
        blob += s + b"\0"
    out = struct.pack("<7I", 0x950412DE, 0, n, ids_table, strs_table, 0, 0)
    out += b"".join(struct.pack("<2I", *e) for e in table_ids)
    out += b"".join(struct.pack("<2I", *e) for e in table_strs)
    return out + blob


def compile_all() -> list[Path]:
    written = []
    for po in sorted(PO_DIR.glob("*.po")):
        target = OUT_DIR / po.stem / "LC_MESSAGES" / "socketlab.mo"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(compile_mo(parse_po(po.read_text(encoding="utf-8"))))
        written.append(target)
    return written


def say(message: str) -> None:
    # pip shows a build's output only with -v or when the build fails; the reason is there for whoever looks.
    print(f"socketlab build: {message}", file=sys.stderr)


def compile_hot_paths() -> list[Path]:
    """Compile each of HOT_PATHS with mypyc into src/socketlab/transports; the files written, or none
    for a module it cannot compile, with the reason printed."""
    written = []
    for name in HOT_PATHS:
        for old in TRANSPORTS.glob(f"_{name}_native*"):
            old.unlink()  # never leave a copy of some other source behind
        if os.environ.get("SOCKETLAB_PURE_PYTHON"):
            say(f"SOCKETLAB_PURE_PYTHON is set: {name}.py stays Python")
            continue
        written += compile_one(name)
    return written


def compile_one(name: str) -> list[Path]:
    native = f"_{name}_native"
    source = (TRANSPORTS / f"{name}.py").read_bytes()
    stamp = f'\n\nSOURCE_SHA256 = "{hashlib.sha256(source).hexdigest()}"\n'.encode()
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    with tempfile.TemporaryDirectory() as tmp:
        # The module must be compiled under its full name, so it gets a package around it; alone,
        # because it imports nothing from socketlab.
        package = Path(tmp, "socketlab", "transports")
        package.mkdir(parents=True)
        Path(tmp, "socketlab", "__init__.py").write_text("")
        (package / "__init__.py").write_text("")
        (package / f"{native}.py").write_bytes(source + stamp)
        command = [sys.executable, "-m", "mypyc", f"socketlab/transports/{native}.py"]
        try:
            done = subprocess.run(command, check=False, cwd=tmp, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            say(f"could not run mypyc ({exc}): {name}.py stays Python")
            return []
        built = sorted(package.glob(f"{native}*{suffix}"))
        if done.returncode != 0 or not built:
            why = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
            say(f"mypyc could not compile {name}.py, so it stays Python: " + " / ".join(why))
            return []
        written = []
        for path in built:
            target = TRANSPORTS / path.name
            shutil.copyfile(path, target)
            written.append(target)
    say(f"{name}.py compiled with mypyc: " + ", ".join(p.name for p in written))
    return written


class CustomBuildHook(BuildHookInterface[Any]):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        written = compile_all()
        compiled = compile_hot_paths()
        if version == "editable":
            return  # the package is imported from src/, where the catalogs and the compiled copy now are
        # .mo and .so files are ignored by git; hatch leaves ignored files out unless told to include them.
        for path in written + compiled:
            rel = path.relative_to(ROOT / "src").as_posix()
            build_data["force_include"][str(path)] = rel
        if compiled:
            build_data["pure_python"] = False
            build_data["infer_tag"] = True  # the wheel holds code for this Python and platform only


if __name__ == "__main__":
    for p in compile_all() + compile_hot_paths():
        print(p)
