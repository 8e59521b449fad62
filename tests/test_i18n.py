"""The command line speaks Portuguese when the locale says so, and machine output never changes with it.

The catalog tests read locale/pt.po itself; the CLI tests run `python -m socketlab` as a user would,
with LANG=pt_BR.UTF-8 (LANGUAGE and LC_ALL removed, as on a Brazilian student's machine) or --lang pt.
"""

from __future__ import annotations

import argparse
import ast
import gettext
import json
import re
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socketlab import i18n
from tests.helpers import cli_env, start_serve

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "locale" / "pt.po"
SRC = ROOT / "src" / "socketlab"

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import update_catalog  # noqa: E402 - a script, not a package
from hatch_build import parse_po  # noqa: E402 - the build's own parser, so the test reads what the build reads

# printf-style (%s, %(name)s, %%) and str.format-style ({name}, {n:,}, {text!r}) placeholders.
PLACEHOLDER = re.compile(
    r"%%|%\(\w+\)[-#0 +]*\d*(?:\.\d+)?[a-zA-Z]|%[-#0+]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]|\{[^{}]*\}"
)


def portuguese_env() -> dict[str, str]:
    """A Brazilian user's environment: LANG only, nothing overriding it."""
    env = cli_env(LANG="pt_BR.UTF-8", COLUMNS="200")
    for var in ("LANGUAGE", "LC_ALL", "LC_MESSAGES"):
        env.pop(var, None)
    return env


def english_env() -> dict[str, str]:
    return cli_env(COLUMNS="200")


def socketlab(args: list[str], env: dict[str, str], timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "socketlab", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def catalog() -> dict[str, str]:
    entries = parse_po(CATALOG.read_text(encoding="utf-8"))
    entries.pop("", None)  # the header
    return entries


# The catalog.


def test_catalog_has_every_message_translated() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "update_catalog.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, "run scripts/update_catalog.py and translate:\n" + result.stdout


def placeholders(text: str) -> list[str]:
    """The placeholders of a message, sorted; thousands grouping (`{n:,}`) ignored.

    A translation may drop the `,` of a format spec: Brazilian readers take `1,344` for one point
    three, so the Portuguese catalog prints `1344`.
    """
    found = []
    for token in PLACEHOLDER.findall(text):
        if token.startswith("{"):
            field, _colon, spec = token[1:-1].partition(":")
            spec = spec.replace(",", "")
            found.append("{" + field + (":" + spec if spec else "") + "}")
        else:
            found.append(token)
    return sorted(found)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("%(listener)s: %(peer)s left (%(reason)s)", ["%(listener)s", "%(peer)s", "%(reason)s"]),
        ("{elapsed:5.1f} s {answers:,} {text!r}", ["{answers}", "{elapsed:5.1f}", "{text!r}"]),
        ("0.1 or 10%% (default: %(default)g)", ["%%", "%(default)g"]),
        ("invalid %(type)s value: %(value)r", ["%(type)s", "%(value)r"]),
        ("from 0% to 100% of %s", ["%s"]),
    ],
)
def test_placeholders_finds_each_kind(text: str, expected: list[str]) -> None:
    assert placeholders(text) == expected


def test_translations_keep_placeholders_and_edge_whitespace() -> None:
    wrong = []
    for msgid, msgstr in catalog().items():
        if placeholders(msgid) != placeholders(msgstr):
            wrong.append(f"placeholders differ: {msgid!r} -> {msgstr!r}")
        lead = len(msgid) - len(msgid.lstrip())
        trail = len(msgid) - len(msgid.rstrip())
        if msgstr[:lead] != msgid[:lead] or msgstr[len(msgstr) - trail :] != msgid[len(msgid) - trail :]:
            wrong.append(f"leading or trailing whitespace differs: {msgid!r} -> {msgstr!r}")
    assert not wrong, "\n".join(wrong)


def test_installed_catalog_is_the_compiled_po() -> None:
    mo = SRC / "locale" / "pt" / "LC_MESSAGES" / "socketlab.mo"
    with mo.open("rb") as f:
        compiled = gettext.GNUTranslations(f)
    stale = [m for m, t in catalog().items() if compiled.gettext(m) != t]
    assert not stale, f"{mo} is older than locale/pt.po: run `pip install -e .` or `python hatch_build.py`"


def _translated_texts(node: ast.AST) -> list[ast.expr] | None:
    """The message arguments when `node` is a call to `_` or `ngettext`, else None."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        return None
    return {"_": node.args[:1], "ngettext": node.args[:2]}.get(node.func.id)


def test_every_message_is_a_literal_the_catalog_can_hold() -> None:
    # _(f"...") or _(variable) would be looked up at run time under a key no catalog has.
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        for call in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            texts = _translated_texts(call)
            if texts is not None and not all(
                isinstance(a, ast.Constant) and isinstance(a.value, str) for a in texts
            ):
                wrong.append(f"{path.relative_to(ROOT)}:{getattr(call, 'lineno', 0)}")
    assert not wrong, "translate string literals only: " + ", ".join(wrong)


def test_no_message_is_translated_at_import_time() -> None:
    # A module- or class-level _() runs before --lang is read and would stay in the wrong language.
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        pending: list[ast.AST] = [tree]
        while pending:
            node = pending.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                    continue
                if _translated_texts(child) is not None:
                    wrong.append(f"{path.relative_to(ROOT)}:{getattr(child, 'lineno', 0)}")
                pending.append(child)
    assert not wrong, "move these _() calls into functions: " + ", ".join(wrong)


# The catalog tool.


@given(msgid=st.text(min_size=1), msgstr=st.text(min_size=1))
def test_any_text_survives_the_catalog_and_the_build(msgid: str, msgstr: str) -> None:
    text = update_catalog.render([(msgid, "x.py:1")], {msgid: msgstr})
    assert parse_po(text)[msgid] == msgstr


def test_a_reworded_message_keeps_its_old_translation_for_review_only() -> None:
    old, new = "the server closed the connection", "the server closed the connection early"
    first = update_catalog.render([(old, "x.py:1")], {old: "o servidor fechou a conexão"})
    reworded = update_catalog.render([(new, "x.py:1")], *update_catalog.read_catalog(first))
    assert '#| msgid "the server closed the connection"' in reworded
    done, fuzzy = update_catalog.read_catalog(reworded)
    assert new not in done  # the build leaves it out: English until a translator reviews it
    assert new not in parse_po(reworded)
    assert fuzzy == {new: "o servidor fechou a conexão"}
    again = update_catalog.render([(new, "x.py:1")], done, fuzzy)
    assert update_catalog.read_catalog(again)[1] == fuzzy  # kept, still flagged, on the next run
    unrelated = update_catalog.render([("bandwidth must be positive", "x.py:1")], done, fuzzy)
    assert update_catalog.read_catalog(unrelated)[1] == {}


# Choosing the language.


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"LANG": "pt_BR.UTF-8"}, "pt"),
        ({"LANG": "pt_PT.UTF-8"}, "pt"),
        ({"LANG": "C.UTF-8"}, "en"),
        ({}, "en"),
        ({"LC_ALL": "C.UTF-8", "LANG": "pt_BR.UTF-8"}, "en"),  # LC_ALL overrides LANG
        ({"LANGUAGE": "pt_BR:en", "LC_ALL": "C.UTF-8"}, "pt"),  # LANGUAGE comes first, as in gettext
        ({"LANGUAGE": "", "LANG": "pt_BR.UTF-8"}, "pt"),  # empty means unset
        ({"LC_MESSAGES": "pt_BR.UTF-8", "LANG": "en_US.UTF-8"}, "pt"),
    ],
)
def test_language_from_env_reads_variables_in_gettext_order(environ: dict[str, str], expected: str) -> None:
    assert i18n.language_from_env(environ) == expected


@pytest.fixture
def restore_language() -> Iterator[None]:
    saved = argparse._, argparse.ngettext  # type: ignore[attr-defined]
    yield
    i18n.setup("en")
    argparse._, argparse.ngettext = saved  # type: ignore[attr-defined]


def test_plural_messages_take_the_right_form_in_both_languages(restore_language: None) -> None:
    one = "request {n} lost: no answer after {attempts} attempt: {text!r}"
    many = "request {n} lost: no answer after {attempts} attempts: {text!r}"
    assert i18n.setup("pt") == "pt"
    assert i18n.ngettext(one, many, 1) == catalog()[one]
    assert i18n.ngettext(one, many, 3) == catalog()[many]
    assert "tentativa:" in i18n.ngettext(one, many, 1)
    assert "tentativas:" in i18n.ngettext(one, many, 3)
    assert i18n.setup("en") == "en"
    assert i18n.ngettext(one, many, 1) == one
    assert i18n.ngettext(one, many, 0) == many


# The command line.


def test_help_is_portuguese_with_a_brazilian_locale() -> None:
    top = socketlab(["--help"], portuguese_env())
    assert top.returncode == 0, top.stderr
    assert top.stdout.startswith("uso: socketlab")
    assert "comandos:" in top.stdout
    assert "mostra esta ajuda e sai" in top.stdout
    assert "códigos de saída" in top.stdout
    client = socketlab(["client", "--help"], portuguese_env())
    assert client.returncode == 0, client.stderr
    assert client.stdout.startswith("uso: socketlab client")
    assert "argumentos posicionais:" in client.stdout
    assert "protocolo de transporte" in client.stdout
    assert "Envia linhas a um servidor de linhas TCP ou UDP" in client.stdout
    assert "usage:" not in client.stdout
    assert "Send lines" not in client.stdout


def test_lang_option_wins_over_the_locale() -> None:
    by_locale = socketlab(["client", "--help"], portuguese_env())
    by_option = socketlab(["--lang", "pt", "client", "--help"], english_env())
    assert by_option.returncode == 0, by_option.stderr
    assert by_option.stdout == by_locale.stdout
    english = socketlab(["--lang", "en", "client", "--help"], portuguese_env())
    assert english.stdout.startswith("usage: socketlab client")
    assert "transport protocol" in english.stdout
    assert socketlab(["client", "--help"], english_env()).stdout == english.stdout


def test_usage_errors_are_portuguese_and_still_exit_2() -> None:
    result = socketlab(["client", "tcp"], portuguese_env())
    assert result.returncode == 2
    assert "socketlab client: erro: os seguintes argumentos são obrigatórios: host, port" in result.stderr


@pytest.mark.timeout(20)
def test_client_error_is_portuguese_and_the_exit_code_unchanged() -> None:
    # Bound but never listening: the kernel refuses connections to it, and the port stays ours.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        args = ["client", "tcp", "127.0.0.1", str(port), "-m", "olá"]
        pt = socketlab(args, portuguese_env())
        en = socketlab(args, english_env())
    assert pt.returncode == en.returncode == 1
    assert pt.stdout == en.stdout == ""
    assert f"socketlab client: não foi possível conectar a 127.0.0.1 porta {port}" in pt.stderr
    assert f"socketlab client: could not connect to 127.0.0.1 port {port}" in en.stderr


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.timeout(30)
def test_machine_output_and_answers_do_not_change_with_the_language() -> None:
    with start_serve(["tcp", "--host", "127.0.0.1", "--port", "0"]) as server:
        port = str(server.port("tcp"))
        check = ["check", "tcp", "127.0.0.1", port, "--only", "short-line,utf8", "--json"]
        pt, en = socketlab(check, portuguese_env()), socketlab(check, english_env())
        assert pt.returncode == en.returncode == 0, pt.stdout + pt.stderr
        assert _without_timings(json.loads(pt.stdout)) == _without_timings(json.loads(en.stdout))
        assert "the basic conversation works" in en.stdout  # the JSON keeps the English explanation

        client = ["client", "tcp", "127.0.0.1", port, "-m", "ação", "-m", "olá, mundo", "--trace"]
        pt, en = socketlab(client, portuguese_env()), socketlab(client, english_env())
        assert pt.returncode == en.returncode == 0, pt.stderr
        assert pt.stdout == en.stdout == "AÇÃO\nOLÁ, MUNDO\n"
        # The trace is for people: the lecture's table of system calls, in the user's language.
        assert "cria um socket" in pt.stderr
        assert "creates a socket" in en.stderr
        assert "estabelece uma conexão por um socket até um destino" in pt.stderr


def _read_line(stream: Any, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no line from the server in time"
    line: str = stream.readline()
    return line


@pytest.mark.timeout(30)
def test_server_speaks_portuguese_to_people_and_answers_the_same_bytes() -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "socketlab", "serve", "tcp", "--host", "127.0.0.1", "--port", "0"],
        env=portuguese_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        announced = re.fullmatch(
            r"tcp upper escutando em 127\.0\.0\.1:(\d+)\n", _read_line(server.stdout, 15)
        )
        assert announced, "the listening line is for people: Portuguese here"
        with socket.create_connection(("127.0.0.1", int(announced[1])), timeout=10) as conn:
            conn.sendall("ação\n".encode())
            assert conn.makefile("rb").readline() == "AÇÃO\n".encode()
        server.send_signal(signal.SIGINT)
        _, log = server.communicate(timeout=15)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate(timeout=5)
    assert server.returncode == 0
    assert re.search(r"tcp upper: 127\.0\.0\.1:\d+ conectou", log), log
    assert re.search(r"tcp upper: 127\.0\.0\.1:\d+ saiu", log), log
    assert "encerrando: nenhum cliente novo" in log, log
