"""Build the C modules: tasks/_htmlblocks (step 1 of the fast extractor; see
tasks/htmlblocks.c), tasks/_langid_walk (py3langid's per-byte feature walk),
tasks/_minhash (MinHash signatures) and tasks/_wordsplit (the filters' word tokenizer).

_htmlblocks compiles against the libxml2 headers that lxml ships and binds at run time to the
libxml2 inside lxml's etree module, so it needs lxml installed first.  Run from the
repository root by `make setup` (and again whenever tasks/htmlblocks.c changes):

    .venv/bin/python infra/build_native.py

Without them each falls back to its Python version (the extractor's block builder,
py3langid's loop, numpy MinHash, the token regex): the same output, slower.
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
    htmlblocks = Extension(
        "tasks._htmlblocks",
        sources=[str(REPO / "tasks" / "htmlblocks.c")],
        include_dirs=lxml.get_include(),
        # replaceEntities: lxml sets this deprecated field too, and so must we (same parse)
        extra_compile_args=["-O2", "-Wall", "-Wno-deprecated-declarations"],
        libraries=["dl"],
    )
    plain = [
        Extension(f"tasks._{name}", sources=[str(REPO / "tasks" / f"{name}.c")], extra_compile_args=["-O2", "-Wall"])
        for name in ("langid_walk", "minhash", "wordsplit")
    ]
    setup(
        name="pretrain-native",
        ext_modules=[htmlblocks, *plain],
        script_args=["-q", "build_ext", "--build-lib", str(REPO), "--build-temp", "."],
    )
    for built in sorted(REPO.glob("tasks/_*.so")):
        print(f"built {built.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
