"""Build hook: compile the gettext catalogs (locale/<lang>.po) into the package as .mo files, and the
TCP server's per-chunk path (src/socketlab/transports/chunk_path.py) with mypyc when it can.

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
# The compiled copy's module name; tcp_server imports it if its SOURCE_SHA256 matches chunk_path.py.
NATIVE = "_chunk_path_native"


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


def compile_chunk_path() -> list[Path]:
    """Compile chunk_path.py with mypyc into src/socketlab/transports as `NATIVE` (a module and its
    runtime library); the files written, or [] with the reason printed when it cannot."""
    for old in TRANSPORTS.glob(f"{NATIVE}*"):
        old.unlink()  # never leave a copy of some other source behind
    if os.environ.get("SOCKETLAB_PURE_PYTHON"):
        say("SOCKETLAB_PURE_PYTHON is set: chunk_path.py stays Python")
        return []
    source = (TRANSPORTS / "chunk_path.py").read_bytes()
    stamp = f'\n\nSOURCE_SHA256 = "{hashlib.sha256(source).hexdigest()}"\n'.encode()
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    with tempfile.TemporaryDirectory() as tmp:
        # The module must be compiled under its full name, so it gets a package around it; alone,
        # because chunk_path.py imports nothing from socketlab.
        package = Path(tmp, "socketlab", "transports")
        package.mkdir(parents=True)
        Path(tmp, "socketlab", "__init__.py").write_text("")
        (package / "__init__.py").write_text("")
        (package / f"{NATIVE}.py").write_bytes(source + stamp)
        command = [sys.executable, "-m", "mypyc", f"socketlab/transports/{NATIVE}.py"]
        try:
            done = subprocess.run(command, cwd=tmp, check=False, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            say(f"could not run mypyc ({exc}): chunk_path.py stays Python")
            return []
        built = sorted(package.glob(f"{NATIVE}*{suffix}"))
        if done.returncode != 0 or not built:
            why = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
            say("mypyc could not compile chunk_path.py, so it stays Python: " + " / ".join(why))
            return []
        written = []
        for path in built:
            target = TRANSPORTS / path.name
            shutil.copyfile(path, target)
            written.append(target)
    say("chunk_path.py compiled with mypyc: " + ", ".join(p.name for p in written))
    return written


class CustomBuildHook(BuildHookInterface[Any]):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        written = compile_all()
        compiled = compile_chunk_path()
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
    for p in compile_all() + compile_chunk_path():
        print(p)
