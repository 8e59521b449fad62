"""Bring locale/pt.po up to date with the messages in the code.

Finds every `_("...")` and `ngettext("...", "...", n)` in src/socketlab (string literals only: a message
built at run time cannot be translated), adds the ones argparse itself translates, keeps the translations
already made, and writes the catalog back in order of first appearance. New messages get an empty msgstr
for a translator to fill; a message whose English changed a little gets its old translation marked
`#, fuzzy` (with the old English in a `#|` comment), which the build leaves out until a translator
reviews it and deletes the flag. tests/test_i18n.py fails while any message is empty or fuzzy.

    python scripts/update_catalog.py          # rewrite locale/pt.po
    python scripts/update_catalog.py --check  # exit 1 if messages are missing or untranslated
"""

from __future__ import annotations

import argparse
import ast
import difflib
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


# How alike an old message must be to a new one for its translation to be offered as a fuzzy start
# (difflib's ratio): a changed word or two, not a different message.
FUZZY_CUTOFF = 0.75


def extract(paths: list[Path]) -> list[tuple[str, str]]:
    """(message, where) for each translatable literal, in order of first appearance."""
    found: dict[str, tuple[str, int]] = {}
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
                    where = (path.relative_to(ROOT).as_posix(), node.lineno)
                    found.setdefault(arg.value, min(where, found.get(arg.value, where)))
    ordered = sorted(found.items(), key=lambda item: item[1])  # by file, then by line number
    return [(message, f"{file}:{line}") for message, (file, line) in ordered]


# Characters escaped inside a quoted PO string besides `\\`, `"` and the newline (which ends a quoted
# line): every other control character, and the ones at which str.splitlines() (used by the build's
# parser) would break a line; written as escapes that ast.literal_eval, the build's parser, reads back.
PO_ESCAPES = {
    **{chr(c): f"\\x{c:02x}" for c in range(32) if chr(c) != "\n"},
    "\t": "\\t",
    "\r": "\\r",
    "\x85": "\\x85",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
PO_TABLE = {ord(char): escape for char, escape in PO_ESCAPES.items()}


def po_quote(text: str) -> str:
    """`text` as a PO string: one quoted line per line of text, after an empty one when there are several."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').translate(PO_TABLE)
    parts = escaped.split("\n")
    if len(parts) == 1:
        return f'"{escaped}"'
    lines = [p + "\\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    return '""\n' + "\n".join(f'"{line}"' for line in lines)


def messages() -> list[tuple[str, str]]:
    code = extract(sorted(SRC.rglob("*.py")))
    return [(m, "argparse") for m in ARGPARSE_MESSAGES] + code


def read_catalog(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(translations, fuzzy): the reviewed translations, and the fuzzy ones still awaiting review."""
    done = parse_po(text)
    everything = parse_po(text.replace("#, fuzzy", "#"))  # the build's parser skips fuzzy entries
    return done, {k: v for k, v in everything.items() if k and k not in done}


def suggest(msgid: str, old: dict[str, str]) -> tuple[str, str] | None:
    """(old message, its translation) for the old message most like `msgid`, if one is close enough."""
    close = difflib.get_close_matches(msgid, list(old), n=1, cutoff=FUZZY_CUTOFF)
    return (close[0], old[close[0]]) if close else None


def render(entries: list[tuple[str, str]], known: dict[str, str], fuzzy: dict[str, str] | None = None) -> str:
    """The catalog: every message in `entries`, translated from `known`, else from `fuzzy` (flagged),
    else from the closest message no longer used (flagged, with that message as `#| msgid`), else empty.
    """
    fuzzy = fuzzy or {}
    current = {msgid for msgid, _where in entries}
    unused = {k: v for k, v in {**fuzzy, **known}.items() if k and k not in current}
    out = ["# Portuguese (Brazil) messages of socketlab. Update with scripts/update_catalog.py.", HEADER]
    for msgid, where in entries:
        head = f"#: {where}\n"
        translation = known.get(msgid, "")
        if not translation and msgid in fuzzy:
            head, translation = head + "#, fuzzy\n", fuzzy[msgid]
        elif not translation and (match := suggest(msgid, unused)):
            previous = "\n".join("#| " + line for line in f"msgid {po_quote(match[0])}".split("\n"))
            head, translation = f"{head}#, fuzzy\n{previous}\n", match[1]
        out.append(f"{head}msgid {po_quote(msgid)}\nmsgstr {po_quote(translation)}\n")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report missing translations, write nothing")
    args = parser.parse_args()
    text = CATALOG.read_text(encoding="utf-8") if CATALOG.exists() else ""
    known, fuzzy = read_catalog(text)
    entries = messages()
    missing = [m for m, _where in entries if not known.get(m)]
    if args.check:
        for m in missing:
            print(f"{'fuzzy, to review' if m in fuzzy else 'untranslated'}: {m!r}")
        return 1 if missing else 0
    rendered = render(entries, known, fuzzy)
    CATALOG.write_text(rendered, encoding="utf-8")
    review = len(read_catalog(rendered)[1])
    print(
        f"{CATALOG.relative_to(ROOT)}: {len(entries)} messages, {len(missing)} untranslated ({review} fuzzy)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
