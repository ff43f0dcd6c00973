"""The arXiv reader on a bulk source tarball built here: real-looking LaTeX around prose from a real book."""

from __future__ import annotations

import gzip
import io
import re
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from conftest import shared_data

from pretrain.config import IngestConfig
from tasks.readers import WHOLE, arxiv
from tasks.readers.detect import detect_kind

CFG = IngestConfig(kind="arxiv")


@pytest.fixture(scope="module")
def prose() -> list[str]:
    """Five paragraphs of a real book, line breaks kept, with none of LaTeX's special characters."""
    book = gzip.decompress(shared_data("reference", "en", "From_Newton_to_Einstein_BenjaminHarrow.txt.gz").read_bytes())
    paragraphs = [p.strip("\n") for p in book.decode("utf-8").replace("\r\n", "\n").split("\n\n")]
    plain = [p for p in paragraphs if 300 < len(p) < 900 and not re.search(r"[%$&#_{}\\~^\[\]*]|^\s", p, re.M)]
    assert len(plain) >= 5
    return plain[:5]


def single_file_paper(prose: list[str]) -> str:
    return rf"""\documentclass[11pt]{{article}}
\usepackage{{amsmath,amssymb}}
\usepackage[utf8]{{inputenc}}
\newcommand{{\method}}{{Harrow's method}}
\newcommand{{\R}}{{\mathbb{{R}}}}
\newcommand{{\norm}}[1]{{\left\| #1 \right\|}}
\def\etal{{et al.}}
\title{{On the Heavens and the Earth}}
\author{{A. Author \and B. Author}}
\begin{{document}}
\maketitle
\begin{{abstract}}
An abstract that the recipe leaves out with the title block.
\end{{abstract}}
% SECRET_COMMENT: a whole line of comment
\section{{Introduction}}
\label{{sec:intro}}
{prose[0]}
As shown by Smith \etal~\cite{{smith2020}}, the \method{{}} works on $\R^n$. % SECRET_TRAILING
We keep 50\% of the \norm{{x}} terms.

\section*[Short]{{Related \emph{{work}}}}
{prose[1]}~\citep[see][p.~3]{{a,b}}
\begin{{thebibliography}}{{9}}
\bibitem{{smith2020}} J. Smith. SECRET_BIBLIOGRAPHY. 2020.
\end{{thebibliography}}
\end{{document}}
"""


SINGLE_EXPECTED = """Introduction

{0}
As shown by Smith et al., the Harrow's method works on $\\mathbb{{R}}^n$.
We keep 50\\% of the \\norm{{x}} terms.

Related \\emph{{work}}

{1}"""


def multi_file_paper(prose: list[str]) -> dict[str, bytes]:
    main = r"""\documentclass{revtex4}
\usepackage{graphicx}
\newcommand*{\model}{the Ptolemaic model}
\begin{document}
\title{A Paper in Several Files}
\begin{abstract}SECRET_ABSTRACT\end{abstract}
\maketitle
\input{sections/intro}
% \input{sections/unused}
\include{method}
\appendix
\section{Proofs}
SECRET_APPENDIX
\bibliographystyle{plain}
\bibliography{refs}
\end{document}
"""
    intro = rf"""\section{{Background}}\label{{sec:bg}}
{prose[2]}
\newcommand{{\half}}[1]{{#1/2}}
The \model{{}} held sway. %SECRET_INTRO_COMMENT
"""
    method = rf"""\subsection{{Method}}
{prose[3]}
\input{{method.tex}}
\paragraph{{Details.}} {prose[4]}
"""
    template = r"""\documentclass{article}
\section{SECRET_TEMPLATE}
"""
    return {"main.tex": main.encode(), "sections/intro.tex": intro.encode(), "method.tex": method.encode(),
            "extra/template.tex": template.encode(), "figures/fig1.png": b"\x89PNG\r\n\x1a\n" + bytes(64)}


MULTI_EXPECTED = """Background

{2}
The the Ptolemaic model held sway.

Method

{3}

Details.

{4}"""


def tar_bytes(files: dict[str, bytes], compression: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_672_531_200  # 2023-01-01
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tarball(tmp_path_factory, prose) -> Path:
    members = {
        "2301/2301.09999.pdf": b"%PDF-1.4 a paper with no source",
        "2301/2301.01234.gz": gzip.compress(single_file_paper(prose).encode()),
        "2301/2301.05678.gz": tar_bytes(multi_file_paper(prose), "gz"),
        "2301/hep-th9901001.gz": gzip.compress(single_file_paper(prose).replace("Harrow", "Old").encode("latin-1")),
        "2301/2301.07777.gz": b"\x1f\x8b\x08\x00 not really gzip",
        "2301/2301.08888.gz": gzip.compress(b"%!PS-Adobe-2.0 a PostScript-only paper\n"),
        "2301/2301.06666.gz": gzip.compress(b"\\documentclass{article}\\begin{document}No sections.\\end{document}"),
    }
    path = tmp_path_factory.mktemp("arxiv") / "arXiv_src_2301_001.tar"
    path.write_bytes(tar_bytes(members))
    return path


def read_all(path: Path) -> tuple[dict, Counter]:
    counts: Counter = Counter()
    return {record.record_id: record for record in arxiv.read(path, WHOLE, CFG, counts)}, counts


def test_bulk_tarball_papers_and_drops(tarball, prose):
    records, counts = read_all(tarball)
    assert sorted(records) == ["2301.01234", "2301.05678", "hep-th/9901001"]
    assert counts == Counter(records_read=7, pdf_only=1, unreadable_paper=1, no_main_tex=1, no_section=1)
    assert records["2301.01234"].url == "https://arxiv.org/abs/2301.01234"
    assert records["hep-th/9901001"].url == "https://arxiv.org/abs/hep-th/9901001"
    assert records["2301.05678"].fetch_time.year == 2023


def test_single_file_paper_text(tarball, prose):
    text = read_all(tarball)[0]["2301.01234"].text
    assert text == SINGLE_EXPECTED.format(*prose)
    for gone in ("SECRET", "documentclass", "usepackage", "newcommand", "abstract", "smith2020", "cite", "\\label",
                 "\\etal", "\\method", "\\R"):
        assert gone not in text


def test_multi_file_paper_inlines_inputs(tarball, prose):
    text = read_all(tarball)[0]["2301.05678"].text
    assert text == MULTI_EXPECTED.format(*prose)
    assert "SECRET" not in text and "\\half" not in text and "\\input" not in text


def test_latin1_paper_is_read(tarball):
    assert "Old's method works" in read_all(tarball)[0]["hep-th/9901001"].text


def test_one_paper_gz_as_input(tmp_path, prose):
    paper = tmp_path / "2301.05678.gz"
    paper.write_bytes(tar_bytes(multi_file_paper(prose), "gz"))
    single = tmp_path / "2301.01234.gz"
    single.write_bytes(gzip.compress(single_file_paper(prose).encode()))
    assert detect_kind(paper) == "arxiv" and detect_kind(single) == "arxiv"
    records, counts = read_all(paper)
    assert list(records) == ["2301.05678"] and records["2301.05678"].text == MULTI_EXPECTED.format(*prose)
    assert counts == Counter(records_read=1)
    assert read_all(single)[0]["2301.01234"].text == SINGLE_EXPECTED.format(*prose)


def test_tarball_is_detected(tarball):
    assert detect_kind(tarball) == "arxiv"


@pytest.mark.parametrize("name, expected", [
    ("2301/2301.01234.gz", "2301.01234"), ("0704.0001.gz", "0704.0001"), ("9901/hep-th9901001.gz", "hep-th/9901001"),
    ("math0601001.gz", "math/0601001"), ("arXiv-2301.01234v2.tar.gz", "2301.01234"), ("notes.gz", None),
])
def test_arxiv_ids(name, expected):
    assert arxiv.arxiv_id(name) == expected


def test_comments_respect_escapes():
    assert arxiv.strip_comments("50\\% kept % gone\n% whole line\nnext\\\\% gone too\n") == "50\\% kept \nnext\\\\\n"


def test_input_cycles_and_depth_are_bounded():
    files = {"main.tex": "\\documentclass{article}\\begin{document}\\section{A}\\input{a}\\end{document}",
             "a.tex": "A-text \\input{b}", "b.tex": "B-text \\input{a} \\input{missing}"}
    assert arxiv.inline_inputs("main.tex", files).count("A-text") == 1
    deep = {f"f{i}.tex": f"level{i} \\input{{f{i + 1}}}" for i in range(30)}
    assert "level8 " not in arxiv.inline_inputs("f0.tex", deep) and "level7" in arxiv.inline_inputs("f0.tex", deep)


def test_main_file_prefers_begin_document():
    files = {"a/template.tex": "\\documentclass{article}", "paper.tex": "\\documentclass{article}\\begin{document}",
             "old.tex": "% \\documentclass{article}\\begin{document}"}
    assert arxiv.main_file(files) == "paper.tex"
    assert arxiv.main_file({"notes.tex": "no class"}) is None
