"""Human-facing messages in the user's language (Portuguese or English), via gettext catalogs.

Only text meant for people goes through `_()`; answers from servers, JSON and JSON Lines never do.
The catalogs live in `socketlab/locale/<lang>/LC_MESSAGES/socketlab.mo`, compiled from
`locale/<lang>.po` at build time (see hatch_build.py). argparse's own words ("usage:", "options") are
looked up by argparse through its module-level `_` and `ngettext`, which `setup()` points at the chosen
catalog rather than binding gettext's global domain: gettext would only read the language from the
environment, and `--lang` must win.
"""

from __future__ import annotations

import gettext
import os
from pathlib import Path

DOMAIN = "socketlab"
LOCALE_DIR = Path(__file__).parent / "locale"
SUPPORTED = ("en", "pt")

_translation: gettext.NullTranslations = gettext.NullTranslations()


def language_from_env(environ: dict[str, str] | None = None) -> str:
    """`pt` or `en`, read as gettext does: LANGUAGE, LC_ALL, LC_MESSAGES, LANG, first one set."""
    env = os.environ if environ is None else environ
    for var in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(var)
        if value:
            first = value.split(":")[0].lower()
            return "pt" if first.startswith("pt") else "en"
    return "en"


def setup(lang: str | None = None) -> str:
    """Choose the language for this process (`pt`, `en`, or from the environment); return it."""
    global _translation
    chosen = (lang or language_from_env()).lower()
    chosen = "pt" if chosen.startswith("pt") else "en"
    if chosen == "en":
        _translation = gettext.NullTranslations()
    else:
        _translation = gettext.translation(DOMAIN, LOCALE_DIR, languages=[chosen], fallback=True)
    import argparse  # noqa: PLC0415 - only the CLI needs argparse translated

    argparse._ = _translation.gettext  # type: ignore[attr-defined]
    argparse.ngettext = ngettext  # type: ignore[attr-defined]
    return chosen


def _(message: str) -> str:
    """Translate a message for people."""
    return _translation.gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    """Translate a message whose wording depends on a count `n`.

    The catalog holds the singular and the plural as two plain entries (our .po parser and .mo writer
    know no plural forms), so the English rule picks the entry and the catalog translates it. That rule
    also suits Brazilian Portuguese, which says "0 respostas" as English says "0 answers".
    """
    return _translation.gettext(singular if n == 1 else plural)
