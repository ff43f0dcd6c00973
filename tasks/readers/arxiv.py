"""arXiv LaTeX sources: a bulk source tarball (or one paper's ``.gz``) to one cleaned text per paper.

A bulk tarball (``arXiv_src_2301_001.tar``) holds one member per paper: ``2301/2301.01234.gz`` is either a gzipped
single ``.tex`` or a gzipped tar of the paper's files; ``2301/2301.01235.pdf`` is a paper with no LaTeX source.
The tarball is streamed member by member (``tarfile`` mode ``r|*``) and one paper at a time is held in memory.

The cleaning follows RedPajama's arXiv recipe (togethercomputer/RedPajama-Data, data_prep/arxiv/arxiv_cleaner.py):
comments go; everything before the first section-like header goes (the preamble, the title block and the
abstract); everything from the first ``\\appendix``, ``\\begin{references}``, ``\\begin{thebibliography}`` or
``\\bibliography{..}`` on goes; macros defined without arguments (``\\newcommand``, ``\\def``) are expanded in the
text. As there, the rest of the LaTeX (math, environments) is kept. Beyond the recipe: ``\\input``/``\\include``
are inlined (relative to the paper's root, with or without ``.tex``), citation commands and ``\\label`` go, the
remaining macro definitions are stripped, and a section header becomes a line holding its title.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from tasks.readers.records import Record

DEFAULT_SOURCE = "arxiv"
REASONS: tuple[str, ...] = ("pdf_only", "no_main_tex", "unreadable_paper", "no_section", "empty_text")

ABS_URL = "https://arxiv.org/abs/"
MAX_INPUT_DEPTH = 8  # \input nesting deeper than this is left out (real papers nest two or three levels)
MAX_MACRO_PASSES = 4  # expansion rounds, for a macro whose value uses another macro
MAX_PAPER_BYTES = 512 << 20  # a paper's decompressed single .tex larger than this is unreadable_paper

_NEW_ID = re.compile(r"^(\d{4}\.\d{4,5})(v\d+)?$")  # 2301.01234
_OLD_ID = re.compile(r"^([a-z]+(?:-[a-z]+)*)(\d{7})(v\d+)?$")  # hep-th9901001 -> hep-th/9901001
_SECTION = re.compile(r"\\(?:part|chapter|section|subsection|subsubsection|paragraph|subparagraph)(?![A-Za-z@])\*?")
_CUT = re.compile(r"\\appendix(?![A-Za-z@])|\\begin\{(?:references|REFERENCES|thebibliography)\}"
                  r"|\\bibliography\{|\\end\{document\}")
_INPUT = re.compile(r"\\(input|include)(?![A-Za-z@])\s*(?:\{([^{}]*)\}|([^\s{}\\]+))")
_CITE = re.compile(r"[ \t~]*\\(?:no)?cite[A-Za-z]*\*?(?![A-Za-z@])")
_LABEL = re.compile(r"\\label(?![A-Za-z@])")
_STRUCTURE = {"part", "chapter", "section", "subsection", "subsubsection", "paragraph", "subparagraph", "appendix",
              "begin", "end", "input", "include", "label", "bibliography", "item"}  # never expanded as user macros
_DEFINITION = re.compile(r"\\(?:(?:re)?newcommand|providecommand|DeclareRobustCommand)(?![A-Za-z@])\*?"
                         r"|\\[egx]?def(?![A-Za-z@])")


def arxiv_id(name: str) -> str | None:
    """The arXiv id a member or file is named after: ``2301.01234.gz`` -> 2301.01234, ``hep-th9901001.gz`` ->
    hep-th/9901001; None for a name that is neither style."""
    stem = PurePosixPath(name).name
    for suffix in (".gz", ".tar", ".tgz", ".tex", ".pdf"):
        stem = stem.removesuffix(suffix)
    stem = stem.removeprefix("arXiv-")
    if match := _NEW_ID.match(stem):
        return match.group(1)
    if match := _OLD_ID.match(stem):
        return f"{match.group(1)}/{match.group(2)}"
    return None


def read(path: Path, part, cfg, counts: Counter) -> Iterator[Record]:
    """The cleaned papers of a bulk source tarball, or of one paper's ``.gz`` (its id from the file name)."""
    path = Path(path)
    if not _is_bulk(path):
        counts["records_read"] += 1
        paper_id = arxiv_id(path.name) or path.name
        text = _paper_text(path.read_bytes(), counts)
        if text is not None:
            yield Record(paper_id, text, url=_url(path.name))
        return
    with tarfile.open(path, "r|*") as archive:
        for member in archive:
            if not member.isfile() or not member.name.endswith((".gz", ".pdf")):
                continue
            counts["records_read"] += 1
            if member.name.endswith(".pdf"):
                counts["pdf_only"] += 1
                continue
            handle = archive.extractfile(member)
            text = _paper_text(handle.read() if handle else b"", counts)
            if text is not None:
                when = datetime.fromtimestamp(member.mtime, tz=timezone.utc) if member.mtime > 0 else None
                yield Record(arxiv_id(member.name) or member.name, text, url=_url(member.name), fetch_time=when)


def _url(name: str) -> str | None:
    found = arxiv_id(name)
    return ABS_URL + found if found else None


def _is_bulk(path: Path) -> bool:
    """A bulk tarball's first file is a paper (``.gz`` or ``.pdf``); a paper's own tar starts with its files."""
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                if member.isfile():  # a paper's own tar may start with a figure's .pdf, not named as an id
                    return member.name.endswith(".gz") or (member.name.endswith(".pdf") and
                                                           arxiv_id(member.name) is not None)
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        return False
    return False


def _paper_text(raw: bytes, counts: Counter) -> str | None:
    """One paper's cleaned text from its ``.gz`` bytes; None (and one reason counted) when it yields none."""
    try:
        files = _tex_files(raw)
    except (OSError, EOFError, tarfile.TarError, zlib.error, ValueError):
        counts["unreadable_paper"] += 1
        return None
    main = main_file(files)
    if main is None:
        counts["no_main_tex"] += 1
        return None
    text = clean_latex(inline_inputs(main, files))
    if text is None:
        counts["no_section"] += 1
        return None
    if not text.strip():
        counts["empty_text"] += 1
        return None
    return text


def _tex_files(raw: bytes) -> dict[str, str]:
    """The paper's ``.tex`` files by path (a single-file paper's is ``main.tex``), decoded."""
    if raw[:2] == b"\x1f\x8b":
        stream = gzip.GzipFile(fileobj=io.BytesIO(raw))
        head = stream.read(512)
        if len(head) >= 262 and head[257:262] == b"ustar":
            return _tar_tex_files(io.BytesIO(raw))
        body = head + stream.read(MAX_PAPER_BYTES)
        if stream.read(1):
            raise ValueError("a single .tex larger than MAX_PAPER_BYTES")
        return {"main.tex": _decode(body)}
    if len(raw) >= 262 and raw[257:262] == b"ustar":
        return _tar_tex_files(io.BytesIO(raw))
    return {"main.tex": _decode(raw)}


def _tar_tex_files(stream: io.BytesIO) -> dict[str, str]:
    files = {}
    with tarfile.open(fileobj=stream, mode="r|*") as archive:
        for member in archive:
            if member.isfile() and member.name.lower().endswith(".tex"):
                handle = archive.extractfile(member)
                files[_normal(member.name)] = _decode(handle.read() if handle else b"")
    return files


def _decode(data: bytes) -> str:
    """UTF-8, else Latin-1: older papers are often 8-bit (RedPajama skips them; we keep their text)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _normal(name: str) -> str:
    parts = [p for p in PurePosixPath(name).parts if p not in (".", "/")]
    return "/".join(parts)


def main_file(files: dict[str, str]) -> str | None:
    """The path of the file with ``\\documentclass`` (or LaTeX 2.09's ``\\documentstyle``); of several, the one
    with ``\\begin{document}`` (then the shortest path, so a top-level main wins over a copy in a folder)."""
    candidates = [name for name, text in files.items() if re.search(r"^[^%\n]*\\document(?:class|style)",
                                                                     text, re.MULTILINE)]
    if len(candidates) > 1:
        candidates = [name for name in candidates if "\\begin{document}" in strip_comments(files[name])] or candidates
    return min(candidates, key=lambda name: (name.count("/"), len(name), name)) if candidates else None


def strip_comments(text: str) -> str:
    """Drop every ``%`` comment (a ``%`` after an even number of backslashes) to the end of its line; a line that
    was only a comment goes with its newline, as in the recipe."""
    text = re.sub(r"(?m)^[ \t]*%.*\n?", "", text)
    return re.sub(r"(?m)(?<!\\)((?:\\\\)*)%.*$", r"\1", text)


def inline_inputs(main: str, files: dict[str, str]) -> str:
    """The main file with ``\\input{x}``/``\\include{x}`` replaced by the file, recursively; a missing file, a
    cycle or nesting past MAX_INPUT_DEPTH leaves the command out."""

    def expand(name: str, stack: tuple[str, ...]) -> str:
        def replace(match: re.Match) -> str:
            target = _resolve((match.group(2) or match.group(3) or "").strip(), files)
            if target is None or target in stack or len(stack) >= MAX_INPUT_DEPTH:
                return ""
            return "\n" + expand(target, (*stack, target)) + "\n"

        return _INPUT.sub(replace, strip_comments(files[name]))

    return expand(main, (main,))


def _resolve(reference: str, files: dict[str, str]) -> str | None:
    name = _normal(reference.strip('"'))
    for candidate in (name, name + ".tex"):
        if candidate in files:
            return candidate
    return None


def clean_latex(text: str) -> str | None:
    """A paper's inlined, comment-free LaTeX to its kept text; None when it has no section-like header."""
    macros = simple_macros(text)
    first = _SECTION.search(text)
    if first is None:
        return None
    body = text[first.start():]
    if cut := _CUT.search(body):
        body = body[:cut.start()]
    body = _drop_commands(body, _DEFINITION, definition=True)
    body = expand_macros(body, macros)
    body = _drop_commands(body, _CITE)
    body = _drop_commands(body, _LABEL)
    body = _section_lines(body)
    body = re.sub(r"[ \t]+\n", "\n", body)
    return re.sub(r"\n{3,}", "\n\n", body).strip()


def simple_macros(text: str) -> dict[str, str]:
    """``\\newcommand{\\name}{value}`` / ``\\newcommand\\name{value}`` / ``\\def\\name{value}`` with no arguments:
    name -> value (a later definition wins, as ``\\renewcommand`` would)."""
    macros = {}
    for match in _DEFINITION.finditer(text):
        parsed = _definition_at(text, match.end())
        if parsed is not None and parsed[1] is not None and parsed[0] not in _STRUCTURE \
                and not parsed[0].startswith("cite"):
            macros[parsed[0]] = parsed[1]
    return macros


def _definition_at(text: str, pos: int) -> tuple[str, str | None, int] | None:
    """After ``\\newcommand`` / ``\\def`` at ``pos``: (name, value or None when it takes arguments, end)."""
    pos = _skip_space(text, pos)
    braced = text.startswith("{", pos)
    name = re.match(r"\\([A-Za-z@]+|.)", text[pos + braced:pos + braced + 200])
    if name is None:
        return None
    pos += braced + name.end()
    if braced:
        if not text.startswith("}", pos):
            return None
        pos += 1
    pos = _skip_space(text, pos)
    takes_args = False
    while text.startswith("[", pos) or text.startswith("#", pos):  # [n][default] or \def's #1#2 parameters
        takes_args = True
        end = text.find("]", pos) + 1 if text[pos] == "[" else pos + 2
        if end <= pos:
            return None
        pos = _skip_space(text, end)
    value = _group_at(text, pos)
    if value is None:
        return None
    return name.group(1), (None if takes_args else value[0]), value[1]


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n":
        pos += 1
    return pos


def _group_at(text: str, pos: int) -> tuple[str, int] | None:
    """The content of the balanced ``{...}`` group starting at ``pos`` and the position after it."""
    if not text.startswith("{", pos):
        return None
    depth = 0
    index = pos
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[pos + 1:index], index + 1
        index += 1
    return None


def _drop_commands(text: str, command: re.Pattern, *, definition: bool = False) -> str:
    """Remove each match of ``command`` with its arguments: ``[optional]`` ones and one ``{group}`` (a citation,
    a label), or the whole definition."""
    pieces, last = [], 0
    for match in command.finditer(text):
        if match.start() < last:
            continue
        if definition:
            parsed = _definition_at(text, match.end())
            if parsed is None:
                continue
            end = parsed[2]
        else:
            end = _skip_space(text, match.end())
            while text.startswith("[", end) and (close := text.find("]", end)) > 0:
                end = _skip_space(text, close + 1)
            group = _group_at(text, end)
            if group is None:
                continue
            end = group[1]
        start = match.start()
        line_start = text.rfind("\n", 0, start) + 1
        line_end = text.find("\n", end)
        if not text[line_start:start].strip() and not text[end:line_end if line_end >= 0 else None].strip():
            start, end = line_start, (line_end + 1 if line_end >= 0 else len(text))  # it was alone on its line
        pieces.append(text[last:start])
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def expand_macros(text: str, macros: dict[str, str]) -> str:
    """Each ``\\name`` (or ``\\name{}``) of a simple macro replaced by its value, a few rounds for nested ones."""
    if not macros:
        return text
    names = "|".join(re.escape(name) for name in sorted(macros, key=len, reverse=True))
    pattern = re.compile(r"\\(" + names + r")(?![A-Za-z@])(?:\{\})?")
    for _ in range(MAX_MACRO_PASSES):
        expanded = pattern.sub(lambda match: macros[match.group(1)], text)
        if expanded == text:
            break
        text = expanded
    return text


def _section_lines(text: str) -> str:
    """``\\section*[short]{Title}`` -> a line ``Title`` between blank lines."""
    pieces, last = [], 0
    for match in _SECTION.finditer(text):
        if match.start() < last:
            continue
        end = _skip_space(text, match.end())
        if text.startswith("[", end) and (close := text.find("]", end)) > 0:
            end = close + 1
        group = _group_at(text, end)
        if group is None:
            continue
        title = " ".join(group[0].split())
        pieces.append(text[last:match.start()].rstrip(" \t") + f"\n\n{title}\n\n")
        last = _skip_space(text, group[1])
    pieces.append(text[last:])
    return "".join(pieces)
