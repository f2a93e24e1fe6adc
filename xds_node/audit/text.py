"""Making partner-supplied text safe to show: terminals, text reports and spreadsheets.

Audit fields carry what a caller sent (a signed subject-id is still the caller's text). Stored
exactly, they are escaped only on the way out: a newline must not forge a line in a report, an
escape sequence must not drive the operator's terminal, a bidi override must not reorder what the
operator reads, and a cell must not become a spreadsheet formula. JSON output needs none of this
(its encoder escapes control characters and nothing evaluates it).
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

#: OWASP CSV injection: cells starting with these are formulas (or become one) in spreadsheet
#: applications. Newline is added for the same reason as carriage return.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n")


def _escape(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(value: object) -> str:
    """``value`` as one line of visible text: every non-printable character (C0 and C1 controls
    including newline, CR, ESC and CSI, DEL, Unicode line/paragraph separators, bidi and other
    format characters, non-space blanks) is written as a backslash escape."""
    text = "" if value is None else str(value)
    if text.isprintable():  # the common case: nothing to do
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def csv_cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: a leading formula trigger gets an apostrophe."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text
