"""Build hook: compile the gettext catalogs (locale/<lang>.po) into the package as .mo files.

Written here, in a few lines, so building needs nothing beyond hatchling: the .mo format is GNU
gettext's (magic, revision, counts, two tables of (length, offset), then the strings).
"""

from __future__ import annotations

import ast
import struct
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

ROOT = Path(__file__).parent
PO_DIR = ROOT / "locale"
OUT_DIR = ROOT / "src" / "socketlab" / "locale"


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


class CustomBuildHook(BuildHookInterface[Any]):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        written = compile_all()
        if version == "editable":
            return  # the package is imported from src/, where the catalogs now are
        # .mo files are ignored by git, and hatch leaves ignored files out unless told to include them.
        for path in written:
            rel = path.relative_to(ROOT / "src").as_posix()
            build_data["force_include"][str(path)] = rel


if __name__ == "__main__":
    for p in compile_all():
        print(p)
