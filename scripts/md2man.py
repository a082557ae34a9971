#!/usr/bin/env python3
"""Turn the project's Markdown manuals (docs/*.md) into man pages (roff), without pandoc.

Handles the subset the manuals use: a `% NAME(S) source | title` header line, `#`/`##`/`###`
headings, paragraphs, **bold**, *italic*, `code`, definition lists (a term line followed by
lines starting with ':   '), indented code blocks and fenced ``` blocks, bullet lists and pipe
tables (rendered as tagged paragraphs, one per row). Usage: md2man.py IN.md NAME SECTION [SUMMARY] > OUT
"""

from __future__ import annotations

import re
import sys

INLINE = [
    (re.compile(r"\*\*(.+?)\*\*"), r"\\fB\1\\fR"),
    (re.compile(r"`([^`]+)`"), r"\\fB\1\\fR"),
    (re.compile(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])"), r"\\fI\1\\fR"),
]


def inline(text: str) -> str:
    text = text.replace("\\", "\\e")
    for pattern, repl in INLINE:
        text = pattern.sub(repl, text)
    return text


def line(text: str) -> str:
    """A roff text line: a leading '.' or \\' would be read as a request."""
    out = inline(text.strip())
    return "\\&" + out if out[:1] in (".", "'") else out


def convert(md: str, name: str, section: str, summary: str = "") -> str:
    out = [f'.TH "{name.upper()}" "{section}" "" "cmanlk" "cmanlk"']
    if summary:
        out += [".SH NAME", f"{name} \\- {inline(summary)}"]
    lines = md.splitlines()
    i = 0
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append(".PP")
            out.extend(line(p) for p in para)
            para.clear()

    while i < len(lines):
        raw = lines[i]
        s = raw.strip()
        if raw.startswith("% "):
            i += 1
            continue
        if s.startswith("```"):
            flush()
            i += 1
            out.append(".nf")
            while i < len(lines) and not lines[i].strip().startswith("```"):
                out.append("\\&" + lines[i].replace("\\", "\\e"))
                i += 1
            out.append(".fi")
            i += 1
            continue
        if raw.startswith("    ") and not para and not (out and out[-1].startswith(".TP")):
            out.append(".nf")
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                out.append("\\&" + lines[i][4:].replace("\\", "\\e"))
                i += 1
            out.append(".fi")
            continue
        if s.startswith("#"):
            flush()
            level = len(s) - len(s.lstrip("#"))
            title = s.lstrip("#").strip()
            heading = inline(title).upper() if level == 1 else inline(title)
            out.append((".SH " if level <= 2 else ".SS ") + f'"{heading}"')
        elif s.startswith("|"):
            flush()
            cells = [c.strip() for c in s.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                out.append(".TP")
                out.append(line(cells[0]))
                out.append(line(" — ".join(c for c in cells[1:] if c)))
        elif s.startswith(("* ", "- ")):
            flush()
            out.append(".IP \\(bu 2")
            out.append(line(s[2:]))
            while i + 1 < len(lines) and lines[i + 1].startswith("  ") and lines[i + 1].strip():
                i += 1
                out.append(line(lines[i]))
        elif i + 1 < len(lines) and lines[i + 1].startswith(":   ") and s:
            flush()
            out.append(".TP")
            out.append(line(s))
            i += 1
            while i < len(lines) and (lines[i].startswith(":   ") or lines[i].startswith("    ")):
                out.append(line(lines[i][4:]))
                i += 1
            continue
        elif not s:
            flush()
        else:
            para.append(s)
        i += 1
    flush()
    return "\n".join(out) + "\n"


def main() -> int:
    if len(sys.argv) not in (4, 5):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    src, name, section = sys.argv[1:4]
    summary = sys.argv[4] if len(sys.argv) == 5 else ""
    with open(src, encoding="utf-8") as f:
        sys.stdout.write(convert(f.read(), name, section, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
