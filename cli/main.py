"""The `pretrain` command: every pipeline stage from the shell (the console script is cli.main:app).

The commands live by subject in cli/stages.py, pii.py, synthesize.py, train.py, eval.py, run.py, scaling.py and ablate.py; importing
them registers them on the one app (cli/common.py), in the order `--help` lists them.
"""

from __future__ import annotations

import sys

from cli import stages, pii, synthesize, train, eval, run, scaling, ablate  # noqa: F401, I001  (registers the commands, in --help's order)
from cli.common import app


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
