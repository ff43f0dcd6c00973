"""Build the C modules: tasks/_htmlblocks (step 1 of the fast extractor; see
tasks/htmlblocks.c), tasks/_langid_walk (py3langid's per-byte feature walk) and
tasks/_minhash (MinHash signatures).

_htmlblocks compiles against the libxml2 headers that lxml ships and binds at run time to the
libxml2 inside lxml's etree module, so it needs lxml installed first.  Run from the
repository root by `make setup` (and again whenever tasks/htmlblocks.c changes):

    .venv/bin/python infra/build_native.py

Without them the extractor runs its Python builder, language id py3langid's own loop and
MinHash its numpy version: the same output, slower.
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
    langid_walk = Extension(
        "tasks._langid_walk", sources=[str(REPO / "tasks" / "langid_walk.c")], extra_compile_args=["-O2", "-Wall"]
    )
    minhash = Extension("tasks._minhash", sources=[str(REPO / "tasks" / "minhash.c")], extra_compile_args=["-O2", "-Wall"])
    setup(
        name="pretrain-native",
        ext_modules=[htmlblocks, langid_walk, minhash],
        script_args=["-q", "build_ext", "--build-lib", str(REPO), "--build-temp", "."],
    )
    for built in sorted(REPO.glob("tasks/_*.so")):
        print(f"built {built.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
