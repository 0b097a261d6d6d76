"""A file path as one line of text, and the exact path back: how every clusterclr output writes a path.

A file name can hold bytes that are not UTF-8 (folders unpacked from old
archives or cameras), line breaks, tabs, quotes. Python gives such a name as
a ``str`` with surrogate escapes (``os.fsdecode``), which no UTF-8 file can
hold and a line-based reader would split. So wherever clusterclr writes a
path (``clusters.csv``, ``assign``'s CSV, ``embed``'s CSV, ``skipped_files.txt``,
the report, messages) it writes ``path_text(path)``: UTF-8 text on one line,
equal to the path itself for every name that is valid UTF-8 without control
characters. The rest is escaped:

- ``\\xHH``: the byte HH of the name: a byte that is not UTF-8 (``\\xff``), a
  control character (``\\x0a`` a newline, ``\\x09`` a tab, ``\\x7f``), or a
  backslash that would otherwise read as the start of an escape (``\\x5c``);
- ``\\uHHHH``: a Unicode line break (U+0085, U+2028, U+2029) or a lone
  surrogate that is no escaped byte (only Windows names hold those).

A backslash not followed by ``x`` and two hex digits or ``u`` and four stays
as it is, so Windows paths read as usual. ``path_from_text`` undoes it:
``path_from_text(path_text(p)) == p`` for every ``str`` path, and
``os.fsencode`` of the result gives the name's bytes::

    import csv, clusterclr
    with open("RUN/clusters.csv", newline="", encoding="utf-8") as f:
        paths = [clusterclr.path_from_text(row["path"]) for row in csv.DictReader(f)]
"""

from __future__ import annotations

import os
import re

# What cannot be written as one line of UTF-8, and backslashes that would read as escapes.
_NEEDS_ESCAPE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]|\\(?=x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4})")
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})|\\u([0-9a-fA-F]{4})")
# os.fsdecode turns an undecodable byte 0xHH (HH >= 0x80) into the lone surrogate U+DCHH.
_BYTE_SURROGATES = range(0xDC80, 0xDD00)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code in _BYTE_SURROGATES:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


def _unescape(match: re.Match[str]) -> str:
    if match.group(1) is not None:
        byte = int(match.group(1), 16)
        return chr(byte) if byte < 0x80 else chr(0xDC00 + byte)
    return chr(int(match.group(2), 16))


def path_text(path: str | bytes | os.PathLike) -> str:
    """``path`` as one line of text that UTF-8 can hold, escaped as the module docstring says."""
    return _NEEDS_ESCAPE.sub(_escape, os.fsdecode(path))


def path_from_text(text: str) -> str:
    """The exact path that ``path_text`` wrote as ``text`` (a CSV field, a line of ``skipped_files.txt``)."""
    return _ESCAPE.sub(_unescape, text)
