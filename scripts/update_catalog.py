"""Bring locale/pt.po up to date with the messages in the code.

Finds every `_("...")` in src/socketlab (string literals only: a message built at run time cannot be
translated), adds the ones argparse itself translates, keeps the translations already made, and writes
the catalog back sorted by first appearance. New messages get an empty msgstr for a translator to fill;
tests/test_i18n.py fails while any is empty.

    python scripts/update_catalog.py          # rewrite locale/pt.po
    python scripts/update_catalog.py --check  # exit 1 if messages are missing or untranslated
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hatch_build import parse_po  # noqa: E402 - the build hook's parser is the one the build uses

SRC = ROOT / "src" / "socketlab"
CATALOG = ROOT / "locale" / "pt.po"

# argparse looks these up through its own `_` and `ngettext` (which socketlab.i18n points at our
# catalog): the ones a user can meet, from Python 3.11's argparse.py. Its errors for programmers
# (conflicting options, bad `dest`) are left in English.
ARGPARSE_MESSAGES = [
    "usage: ",
    "positional arguments",
    "options",
    "show this help message and exit",
    "argument %(argument_name)s: %(message)s",
    "unrecognized arguments: %s",
    "not allowed with argument %s",
    "the following arguments are required: %s",
    "one of the arguments %s is required",
    "expected one argument",
    "expected at most one argument",
    "expected at least one argument",
    "expected %s argument",
    "expected %s arguments",
    "ignored explicit argument %r",
    "unexpected option string: %s",
    "unknown parser %(parser_name)r (choices: %(choices)s)",
    "ambiguous option: %(option)s could match %(matches)s",
    "invalid %(type)s value: %(value)r",
    "invalid choice: %(value)r (choose from %(choices)s)",
    "%(prog)s: error: %(message)s\n",
]

HEADER = 'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n"Language: pt_BR\\n"\n'


def extract(paths: list[Path]) -> list[tuple[str, str]]:
    """(message, where) for each translatable literal, in order of first appearance."""
    found: dict[str, str] = {}
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id == "_" and node.args:
                literals = node.args[:1]
            elif node.func.id == "ngettext" and len(node.args) >= 2:
                literals = node.args[:2]
            else:
                continue
            for arg in literals:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    where = f"{path.relative_to(ROOT).as_posix()}:{node.lineno}"
                    found.setdefault(arg.value, where)
    return sorted(found.items(), key=lambda item: item[1])


def po_quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t")
    parts = escaped.split("\n")
    if len(parts) == 1:
        return f'"{escaped}"'
    lines = [p + "\\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    return '""\n' + "\n".join(f'"{line}"' for line in lines)


def messages() -> list[tuple[str, str]]:
    code = extract(sorted(SRC.rglob("*.py")))
    return [(m, "argparse") for m in ARGPARSE_MESSAGES] + code


def render(entries: list[tuple[str, str]], known: dict[str, str]) -> str:
    out = ["# Portuguese (Brazil) messages of socketlab. Update with scripts/update_catalog.py.", HEADER]
    for msgid, where in entries:
        out.append(f"#: {where}\nmsgid {po_quote(msgid)}\nmsgstr {po_quote(known.get(msgid, ''))}\n")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report missing translations, write nothing")
    args = parser.parse_args()
    known = parse_po(CATALOG.read_text(encoding="utf-8")) if CATALOG.exists() else {}
    entries = messages()
    missing = [m for m, _where in entries if not known.get(m)]
    if args.check:
        for m in missing:
            print(f"untranslated: {m!r}")
        return 1 if missing else 0
    CATALOG.write_text(render(entries, known), encoding="utf-8")
    print(f"{CATALOG.relative_to(ROOT)}: {len(entries)} messages, {len(missing)} untranslated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
