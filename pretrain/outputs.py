"""What a command may replace or remove in its output folder.

Two kinds of output:

- A folder that a command writes as a whole and replaces on a rerun (``export-hf``, the
  quality models). It may replace only a folder it wrote before (``is_own``: its marker
  file), an empty one, or, with ``--force``, another; never one that holds its own input.
- A stage folder of shards (ingest, filter, dedup, quality score, tokenize). It must hold
  exactly the shards of the last run: shards an earlier run of the same stage wrote that
  this run does not produce are removed, and a shard no run of the stage wrote (a foreign
  file the next stage would read as part of the data set) stops the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

from pretrain.provenance import atomic_write_text

RECORD = ".outputs.json"  # the shard names this stage's runs have written into a folder
# Where a stage's shard files lie in its output folder; a file's stem is its shard name.
FORCE_REMEDY = "choose a new or empty folder, or pass --force to replace it"


class OutputRefused(ValueError):
    """The output folder holds files this command did not write, or the command's input."""


# ---------------------------------------------------------------- folders replaced as a whole


def check_replaceable(folder: Path, command: str, is_own: Callable[[Path], bool], inputs: Iterable[Path | str] = (),
                      force: bool = False, marker: str = "", remedy: str = FORCE_REMEDY) -> None:
    """Raise OutputRefused unless ``command`` may replace ``folder`` as a whole.

    Refused even with ``force``: a folder that is, or holds, one of ``inputs``, and a file.
    Refused without ``force``: a non-empty folder for which ``is_own`` is false.
    """
    folder = Path(folder)
    resolved = folder.resolve()
    for source in inputs:
        source_path = Path(source).resolve()
        if source_path == resolved or resolved in source_path.parents:
            raise OutputRefused(f"{command}: output folder {folder} holds this command's input {source}; replacing "
                                "it would delete the input (refused even with --force): choose another folder")
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise OutputRefused(f"{command}: output {folder} is not a folder: choose another path")
    if force or is_own(folder) or not any(folder.iterdir()):
        return
    raise OutputRefused(f"{command}: output folder {folder} is not empty and is not an earlier {command} output "
                        f"(no {marker or 'marker file'} of {command}); it would be replaced as a whole, deleting "
                        f"everything in it: {remedy}")


def json_field_is(path: Path, field: str, value: object) -> bool:
    """True when ``path`` is a JSON object whose ``field`` equals ``value`` (a command's marker)."""
    return _json_object(path).get(field) == value


def local_inputs(specs: Iterable[str]) -> list[Path]:
    """The local paths among input specs (URLs and unmatched globs drop out)."""
    return [Path(spec) for spec in specs if Path(spec).exists()]


# ---------------------------------------------------------------- stage folders of shards


def claim_shards(folder: Path, stage: str, names: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """Make ``folder`` hold only the shards ``names`` of this run; call with the output lock held, before writing.

    A shard file of ``stage`` (one matching ``patterns``, relative to ``folder``) that no earlier run of ``stage`` wrote (the folder's
    record, else its report.json) raises OutputRefused, and nothing is removed; one that an earlier
    run wrote and this run does not produce is removed. Returns the removed files (relative paths).
    """
    names = set(names)
    owned = owned_names(folder, stage)
    present = [path for pattern in patterns for path in sorted(folder.glob(pattern))]
    foreign = [path for path in present if path.stem not in owned]  # even one this run would overwrite
    if foreign:
        shown = ", ".join(str(path.relative_to(folder)) for path in foreign[:5])
        raise OutputRefused(
            f"{stage}: output folder {folder} holds {len(foreign)} file(s) that no earlier {stage} run there wrote "
            f"({shown}{', ...' if len(foreign) > 5 else ''}); the next stage would read them as part of this data "
            "set: move them away or choose another output folder")
    stale = [path for path in present if path.stem not in names]
    for path in stale:
        path.unlink()
    atomic_write_text(folder / RECORD, json.dumps({"stage": stage, "shards": sorted(names)}, indent=1) + "\n")
    return [str(path.relative_to(folder)) for path in stale]


def owned_names(folder: Path, stage: str) -> set[str]:
    """Shard names that earlier runs of ``stage`` wrote into ``folder``: its record, else its report.json."""
    record = _json_object(folder / RECORD)
    if record.get("stage") == stage:
        return set(record.get("shards", []))
    if _json_object(folder / "info.json").get("stage") != stage:
        return set()
    report = _json_object(folder / "report.json")  # written before the record existed
    entries = [entry for key in ("shards", "reports") if isinstance(report.get(key), list) for entry in report[key]]
    return {_shard_name(str(entry.get("shard") or entry.get("input"))) for entry in entries if isinstance(entry, dict)}


def _shard_name(reported: str) -> str:
    """A report's shard entry (a shard name, or a shard's or input's path) as a shard name."""
    name = Path(reported).name
    return name[: -len(".parquet")] if name.endswith(".parquet") else name


def _json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
