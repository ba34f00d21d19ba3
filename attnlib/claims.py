"""Prose that stays true: numbers glued from the records, statements checked against them.

A chapter's text says what its figures and tables show ("the gap shrinks every epoch",
"inside the noise", "the gates barely move"). Two rules keep that text honest when the runs
change:

* **Numbers in prose come from the records.** A code cell computes them and :func:`glue`
  names them; the markdown cites them with myst-nb's roles, ``{glue:text}`name:.2f``` for
  a number or ``{glue:md}`name``` for a phrase. Nothing is typed by hand.
* **Every statement about a result is a claim.** Right after the paragraph, a hidden code
  cell (tags ``claim`` and ``remove-cell``) calls :func:`claim` with the condition the
  sentence asserts. Under the profiles the text was written for (:data:`CHECKED_PROFILES`:
  ``book``) a claim that the records no longer support raises :class:`ClaimError`, so the
  notebook's execution fails and the stale sentence cannot reach the book. Under ``smoke``
  and ``quick`` the numbers are different by design, so the claim only reports that it was
  not checked.

A claim cell reads like this::

    claim(setup, check["shift"] < check["seed_std"],
          "twice the epochs moves the mean by less than one seed standard deviation",
          evidence=f"shift {check['shift']:+.2f}, seed std {check['seed_std']:.2f}")
"""
from __future__ import annotations

from typing import Any

CHECKED_PROFILES = ("book",)
"""The profiles the chapters' prose is written for: their claims must hold."""


class ClaimError(AssertionError):
    """A statement of the chapter's text is no longer supported by the records."""


def _profile_name(setup: Any) -> str:
    return setup if isinstance(setup, str) else setup.name


_MADE: list[tuple[str, bool]] = []  # (statement, holds) of every claim made in this process


def claim(setup: Any, holds: bool, statement: str, evidence: str = "") -> bool:
    """Check that the text's ``statement`` holds (``holds``) under the profile ``setup`` (a
    :class:`~attnlib.profiles.Profile` or its name).

    Under a checked profile a false claim raises :class:`ClaimError`, naming the statement
    and the ``evidence`` (the numbers it rests on), so that the text is rewritten or the
    runs are checked. Elsewhere it prints that it was not checked. Returns ``holds``.
    """
    profile = _profile_name(setup)
    holds = bool(holds)
    _MADE.append((statement, holds))
    detail = f" ({evidence})" if evidence else ""
    if profile in CHECKED_PROFILES:
        if not holds:
            raise ClaimError(f"The text says: {statement!r}, but under the {profile!r} profile the records "
                             f"no longer support it{detail}. Rewrite the sentence (and this claim) to say "
                             "what the numbers show, or find out why the runs changed.")
        print(f"claim holds: {statement}{detail}")
    else:
        print(f"claim not checked under the {profile!r} profile (the text is written for "
              f"{', '.join(CHECKED_PROFILES)}): {statement} -> {'holds' if holds else 'does not hold'} here{detail}")
    return holds


def claims_report(setup: Any) -> str:
    """A markdown note on this notebook's claims, for the end of a chapter: under a checked
    profile, that every statement was checked; elsewhere, a warning that the text was
    written for the ``book`` profile, listing the statements that do not hold here."""
    profile, total = _profile_name(setup), len(_MADE)
    if profile in CHECKED_PROFILES:
        return (f"*The {total} statements this page makes about its results were checked against the "
                f"records when it was executed (profile `{profile}`).*")
    failing = [statement for statement, holds in _MADE if not holds]
    lines = [f"```{{warning}}\nThis notebook ran with the `{profile}` profile, but its text is written for "
             f"the numbers of the `{', '.join(CHECKED_PROFILES)}` profile. {total - len(failing)} of its {total} "
             "statements about results hold here" + (", these do not:" if failing else ".")]
    lines += [f"- {statement}" for statement in failing]
    return "\n".join(lines) + "\n```"


def glue(name: str, value: Any) -> Any:
    """Name ``value`` for the chapter's text (myst-nb's ``glue``, not displayed in the cell).

    Outside a book build without myst-nb installed (a plain Jupyter or Colab session) there
    is nothing to glue to: the value is returned and the cell's printed output shows it.
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return value
    myst_glue(name, value, display=False)
    return value


def glue_text(name: str, text: str) -> str:
    """Name a phrase of markdown for ``{glue:md}`name``` (a verdict, a formatted number with its unit),
    and the phrase with its first letter capitalised for a sentence that opens with it:
    ``{glue:md}`Name``` (``name`` with its first letter capitalised)."""
    from IPython.display import Markdown

    glue(name, Markdown(text))
    if _capitalised(name) != name:
        glue(_capitalised(name), Markdown(_capitalised(text)))
    return text


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]
