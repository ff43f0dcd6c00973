"""The stage registry: what each stage declares, and a new stage added with one module and one line.

Unit: the registry's names match ``PipelineConfig.until``'s choices, every stage's code roots
include the module it runs, lookups of unknown stages fail by name. Integration: a pass-through
stage (tests/passthrough_stage.py) registered after dedup runs through the real end-to-end flow
(Prefect, Ray, the shard runner), quality reads what it wrote, and a rerun is all cache hits.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import passthrough_stage
from flows import registry
from flows.pretrain import pretrain_flow
from flows.stage import Stage
from pretrain.config import PipelineConfig, load_recipe


def test_until_offers_exactly_the_registered_stages():
    assert typing.get_args(PipelineConfig.model_fields["until"].annotation) == registry.names()
    assert registry.names() == ("ingest", "filter", "pii", "dedup", "quality", "sources", "decontaminate", "tokenize",
                                "train", "eval")


def test_each_stage_declares_its_folder_products_and_code():
    folders = {stage.name: stage.folder for stage in registry.STAGES}
    assert folders == {"ingest": "ingest", "filter": "filter", "pii": "pii", "dedup": "dedup", "quality": "quality",
                       "sources": "sources", "decontaminate": "decontaminate", "tokenize": "tokens", "train": "train", "eval": "eval"}
    for stage in registry.STAGES:
        assert f"flows.{stage.name}" in stage.code_modules
        assert stage.products and "+" in stage.code_version()
    assert "tasks.train.main" in registry.stage("train").code_modules
    assert registry.stage("ingest").reads is None
    assert {"exact_duplicate", "url_duplicate", "fuzzy_duplicate"} <= set(registry.stage("dedup").reasons)
    assert "contaminated_hellaswag" in registry.stage("decontaminate").reasons


def test_unknown_stage_is_an_error_naming_the_stages():
    with pytest.raises(KeyError, match="no stage 'synthesize'; the stages are ingest, filter, pii, dedup"):
        registry.stage("synthesize")
    assert [stage.name for stage in registry.until("dedup")] == ["ingest", "filter", "pii", "dedup"]
    with pytest.raises(ValueError, match="stage copy: reads is None .* or 'previous', not 'dedup'"):
        Stage(name="copy", folder="copy", products=("*.parquet",), run=passthrough_stage.run_in_pipeline,
              reads="dedup")  # what a stage reads is the registry's order, not a name


def stage_records(root: Path, names) -> dict[str, dict]:
    return {name: json.loads((root / registry.stage(name).folder / "stage.json").read_text()) for name in names}


@pytest.mark.integration
def test_a_registered_pass_through_stage_runs_in_the_end_to_end_flow(services, tmp_path, monkeypatch):
    stages = registry.STAGES
    monkeypatch.setattr(registry, "STAGES", (*stages[:4], passthrough_stage.STAGE, *stages[4:]))
    root = tmp_path / "run"
    cfg = load_recipe("local", [f"output_dir={root}", "ray.num_cpus=2", "until=quality"])
    ran = ["ingest", "filter", "pii", "dedup", "passthrough", "quality"]

    first = pretrain_flow(config=cfg)
    assert first["cache_hits"] == dict.fromkeys(ran, False)
    dedup, copied = first["stages"]["dedup"], first["stages"]["passthrough"]
    assert copied["output"] == str(root / "passthrough")
    report = json.loads((root / "passthrough" / "report.json").read_text())
    assert report["documents_in"] == report["documents_kept"] == dedup["documents_kept"] > 100
    assert copied["documents_kept"] == dedup["documents_kept"]
    shards = sorted(path.name for path in (root / "dedup").glob("*.parquet"))
    assert sorted(path.name for path in (root / "passthrough").glob("*.parquet")) == shards
    for name in shards:  # unchanged, row for row
        assert pq.read_table(root / "passthrough" / name) == pq.read_table(root / "dedup" / name)
    record = stage_records(root, ["passthrough"])["passthrough"]
    assert record["stage"] == "passthrough" and sorted(record["products"]) == shards
    assert record["key"] == copied["key"]

    quality_inputs = json.loads((root / "quality" / "info.json").read_text())["inputs"]
    assert sorted(quality_inputs) == [str(root / "passthrough" / name) for name in shards]  # it read the copy
    assert first["stages"]["quality"]["documents_in"] == dedup["documents_kept"]
    assert [row["stage"] for row in first["funnel"]] == ran  # the report's funnel has a row for it
    assert first["documents"]["passthrough"] == first["documents"]["dedup"] == dedup["documents_kept"]
    for stage in registry.STAGES[:5]:  # every reason a stage counted is one it declares
        assert set(first["stages"][stage.name].get("dropped", {})) <= set(stage.reasons), stage.name

    before = stage_records(root, ran)
    again = pretrain_flow(config=cfg)
    assert again["cache_hits"] == dict.fromkeys(ran, True)
    assert stage_records(root, ran) == before  # nothing rewritten
    assert again["documents"] == first["documents"]
