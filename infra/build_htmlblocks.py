"""Build tasks/_htmlblocks (step 1 of the fast extractor in C; see tasks/htmlblocks.c).

It compiles against the libxml2 headers that lxml ships and binds at run time to the
libxml2 inside lxml's etree module, so it needs lxml installed first.  Run from the
repository root by `make setup` (and again whenever tasks/htmlblocks.c changes):

    .venv/bin/python infra/build_htmlblocks.py

Without the built module the extractor runs its Python builder: same output, slower.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lxml
from setuptools import Extension, setup

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    work = REPO / "build" / "htmlblocks"
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # not the repository root: setuptools would read our pyproject.toml
    extension = Extension(
        "tasks._htmlblocks",
        sources=[str(REPO / "tasks" / "htmlblocks.c")],
        include_dirs=lxml.get_include(),
        # replaceEntities: lxml sets this deprecated field too, and so must we (same parse)
        extra_compile_args=["-O2", "-Wall", "-Wno-deprecated-declarations"],
        libraries=["dl"],
    )
    setup(
        name="pretrain-htmlblocks",
        ext_modules=[extension],
        script_args=["-q", "build_ext", "--build-lib", str(REPO), "--build-temp", "."],
    )
    print(f"built {next(REPO.glob('tasks/_htmlblocks*.so')).relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
