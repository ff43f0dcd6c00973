"""Commands say what is wrong, and only what is wrong: malformed recipes and law files, scaling plans and
fits outside what the law can tell, missing input folders, a locked `pretrain run`, a foreign Ray
cluster on the machine, and the noise a successful run used to end with.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from ray_cluster import loopback_cluster
from typer.testing import CliRunner

from cli.main import app
from pretrain.provenance import exclusive_lock
from tasks.demo import write_demo_data

pytestmark = pytest.mark.faults

BROKEN_YAML = "name: broken\ningest:\n  languages: [en, fr\n  extractor: fast\n"  # the list is never closed


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clear_error(result, *fragments: str) -> None:
    """Exit 2 with `error: ...` naming every fragment, and no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    flat = " ".join(result.output.split())  # rich wraps long messages
    assert "error:" in flat and "Traceback" not in flat
    for fragment in fragments:
        assert fragment in flat, (fragment, flat)


# ---------------------------------------------------------------- malformed recipes and law files

RECIPE_COMMANDS = {
    "ingest": ["ingest", "--input", "x", "--output", "y", "--config"],
    "filter": ["filter", "--input", "x", "--output", "y", "--config"],
    "dedup": ["dedup", "--input", "x", "--output", "y", "--config"],
    "quality train-perplexity": ["quality", "train-perplexity", "--reference", "x", "--output", "y", "--config"],
    "quality train-classifier": ["quality", "train-classifier", "--positive", "x", "--negative", "x",
                                 "--output", "y", "--config"],
    "quality score": ["quality", "score", "--input", "x", "--output", "y", "--config"],
    "tokenize": ["tokenize", "--input", "x", "--output", "y", "--config"],
    "train": ["train", "--config"],
    "refresh": ["refresh", "--dataset", "d", "--config"],
    "run": ["run", "--recipe"],
    "scaling sweep": ["scaling", "sweep", "--data", "d", "--config"],
}


@pytest.mark.parametrize("command", sorted(RECIPE_COMMANDS))
def test_a_malformed_recipe_is_an_error_naming_its_file_line_and_column(command, tmp_path, ledger):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text(BROKEN_YAML)
    result = invoke(*RECIPE_COMMANDS[command], recipe)
    assert_clear_error(result, str(recipe), "is not valid YAML", "line 4, column 12",
                       "while parsing a flow sequence at line 3, column 14")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(256)))
    assert_clear_error(invoke(*RECIPE_COMMANDS[command], binary), str(binary), "is not a text file")
    ledger("a malformed recipe YAML (unclosed list; binary bytes) in every command taking --config/--recipe",
           "rc 2: error names the file, line and column (or 'not a text file'), no traceback", commands=1)


def test_a_malformed_set_value_is_an_error_naming_it(ledger):
    assert_clear_error(invoke("run", "--set", "train.lr=[1, 2"), "--set train.lr=[1, 2", "not valid YAML")
    ledger("`--set key=[1, 2` (malformed YAML value)", "rc 2: error names the assignment", commands=1)


def test_a_law_file_that_is_not_a_law_is_an_error_naming_it(tmp_path, ledger):
    png = tmp_path / "some.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    assert_clear_error(invoke("scaling", "plan", "--flops", "1e21", "--law", png),
                       f"--law: {png} is not a text file", "scaling fit --json")
    broken = tmp_path / "law.json"
    broken.write_text('{"E": 1.7, "A": [406.4,\n "B": 410}')
    assert_clear_error(invoke("scaling", "plan", "--flops", "1e21", "--law", broken),
                       f"--law: {broken} is not valid YAML", "line 2, column")
    ledger("`scaling plan --law some.png` (binary) and a malformed law JSON", "rc 2: error names the file",
           files=2)


def test_a_runs_csv_that_is_not_text_is_an_error_naming_it(tmp_path, ledger):
    png = tmp_path / "runs.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    result = invoke("scaling", "fit", "--csv", png, "--params-col", "N", "--tokens-col", "D", "--loss-col", "L")
    assert_clear_error(result, f"--csv: {png} is not a CSV text file")
    ledger("`scaling fit --csv some.png` (binary)", "rc 2: error names the file", files=1)


@pytest.mark.parametrize("option,value,message", [
    ("--seq-len", "-5", "--seq-len must be at least 8 tokens, got -5"),
    ("--seq-len", "0", "--seq-len must be at least 8 tokens, got 0"),
    ("--vocab-size", "1", "--vocab-size must be at least 2, got 1"),
])
def test_scaling_plan_size_options_are_checked_by_name(option, value, message, ledger):
    result = invoke("scaling", "plan", "--flops", "1e21", option, value)
    assert_clear_error(result, message)
    assert "pydantic" not in result.output
    ledger("`scaling plan --seq-len -5` / `--seq-len 0` / `--vocab-size 1`",
           "rc 2: error names the option (was a pydantic traceback; 0 was ignored)", options=1)


# ---------------------------------------------------------------- plans and fits outside the law


def test_a_plan_beyond_the_largest_config_says_so_instead_of_naming_7b(ledger):
    result = invoke("scaling", "plan", "--flops", "1e27")
    flat = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "exceeds the largest config (7b" in flat and "no config is proposed" in flat
    assert "closest config none" in flat and "closest config 7b" not in flat
    plan = json.loads(invoke("scaling", "plan", "--flops", "1e27", "--json").stdout)
    assert plan["n_params"] > 5e11 and plan["model"] is None
    assert any("exceeds the largest config" in w for w in plan["warnings"])
    normal = json.loads(invoke("scaling", "plan", "--flops", "5.76e23", "--json").stdout)
    assert normal["warnings"] == [] and normal["model"]["params"] > 0
    ledger("`scaling plan --flops 1e27` (N 9e11, past every config)",
           "rc 0, warning: exceeds the largest config (7b), no config proposed", plans=2)


def test_a_prediction_worse_than_a_uniform_guess_is_flagged(tmp_path, ledger):
    (tmp_path / "index.json").write_text(json.dumps({"format": 1, "tokens": {"train": 60_000, "val": 600},
                                                     "vocab_size": 1024}))  # the local run's size
    plan = json.loads(invoke("scaling", "plan", "--tokens-dir", tmp_path, "--json").stdout)
    assert plan["loss"] > 30  # Chinchilla's law at 60k tokens
    assert any("above ln(1,024) = 6.931" in w and "does not apply" in w for w in plan["warnings"])
    result = invoke("scaling", "plan", "--tokens-dir", tmp_path)
    assert "the law does not apply" in " ".join(result.output.split()) and result.exit_code == 0
    ledger("`scaling plan --tokens-dir` on the local run's 60k tokens (36 nats/token predicted)",
           "rc 0, warning: above ln(vocabulary), the law does not apply", plans=2)


def write_runs(path: Path, rows: list[tuple[float, float, float]]) -> Path:
    path.write_text("params,tokens,loss\n" + "".join(f"{n},{d},{loss}\n" for n, d, loss in rows))
    return path


@pytest.mark.parametrize("case,rows,message", [
    ("six identical runs", [(1e6, 2e7, 3.5)] * 6, "1 distinct N, 1 distinct D and 1 distinct (N, D)"),
    ("two points repeated", [(1e6, 2e7, 3.5), (2e6, 4e7, 3.2)] * 3, "2 distinct N, 2 distinct D"),
    ("a flat loss", [(n, 1e14 / n, 3.0) for n in (1e6, 2e6, 4e6, 8e6, 16e6, 32e6)],
     "ran to the edge of its search box"),
])
def test_a_fit_the_runs_cannot_identify_is_an_error(case, rows, message, tmp_path, ledger):
    csv_path = write_runs(tmp_path / "runs.csv", rows)
    result = invoke("scaling", "fit", "--csv", csv_path, "--params-col", "params", "--tokens-col", "tokens",
                    "--loss-col", "loss", "--bootstrap", "0")
    assert_clear_error(result, "the runs cannot identify the law", message)
    ledger("`scaling fit` on runs that cannot identify the law (identical, 2 points, flat loss)",
           "rc 2: error says why (distinct N/D counts, or the fit at its box bound)", fits=1)


# ---------------------------------------------------------------- input folders


@pytest.mark.parametrize("command", ["filter", "dedup", "quality score", "tokenize", "train"])
def test_a_missing_input_folder_is_named_as_missing(command, tmp_path, ledger):
    missing = tmp_path / "nonexistent"
    args = {"train": ["train", "--data", missing]}.get(command, [*command.split(), "--input", missing,
                                                                "--output", tmp_path / "out"])
    result = invoke(*args)
    flat = " ".join(result.output.split())
    assert_clear_error(result, str(missing))
    assert "does not exist" in flat or "no such folder" in flat, flat
    assert not (tmp_path / "out").exists()
    ledger("`filter/dedup/quality score/tokenize --input /nonexistent`, `train --data /nonexistent`",
           "rc 2: error says the folder does not exist", commands=1)


# ---------------------------------------------------------------- pretrain run on a locked output


def test_a_locked_run_output_exits_2_like_the_stage_commands(prefect_server, tmp_path, ledger):
    root = tmp_path / "run"
    root.mkdir()
    with exclusive_lock(root / ".lock", "another pretrain run", lambda holder: RuntimeError(holder)):
        result = invoke("run", "--recipe", "local", "--output", root)
    assert_clear_error(result, f"output folder {root} is being written by another run", "another pretrain run")
    assert sorted(p.name for p in root.iterdir()) == [".lock"]
    ledger("`pretrain run` on an output root another run holds", "rc 2 (was 1), error names the holder", runs=1)


# ---------------------------------------------------------------- a foreign Ray cluster, and a quiet success

@pytest.fixture(scope="module")
def ingest_beside_a_foreign_cluster(prefect_server, tmp_path_factory):
    """`pretrain ingest` on demo data while a cluster_utils cluster has written its ray_current_cluster file.

    Both processes get one private RAY_TMPDIR, so the address file is RAY_TMPDIR/ray/ray_current_cluster
    (Ray's /tmp/ray/ray_current_cluster for this test only): no file another session uses is touched.
    """
    base = tmp_path_factory.mktemp("foreign")
    demo = base / "demo"
    write_demo_data(demo, n_files=2, articles_per_file=4)
    with loopback_cluster(nodes=1) as cluster:
        cmd = [sys.executable, "-m", "cli.main", "ingest", "--input", str(demo), "--output", str(base / "out"),
               "--num-cpus", "1"]
        run = subprocess.run(cmd, env={**cluster.env, "PREFECT_API_URL": prefect_server}, cwd=REPO,
                             capture_output=True, text=True, timeout=600)
        yield {"run": run, "out": base / "out", "address": cluster.address, "address_file": cluster.address_file}


def test_the_local_ray_never_joins_a_foreign_cluster(ingest_beside_a_foreign_cluster, ledger):
    found = ingest_beside_a_foreign_cluster
    run = found["run"]
    assert run.returncode == 0, run.stderr[-3000:]
    assert "object_store_memory must not be provided" not in run.stderr
    assert "Connecting to existing Ray cluster" not in run.stderr
    report = json.loads((found["out"] / "report.json").read_text())
    assert report["shards_written"] == 2 and report["documents"] > 0
    assert found["address_file"].read_text().strip().startswith("127.0.0.1:")  # the foreign cluster's, untouched
    ledger("a foreign Ray cluster on the machine (ray_current_cluster written by cluster_utils)",
           "rc 0: ingest starts its own local instance (was: ValueError object_store_memory)",
           documents=report["documents"])


def test_a_successful_command_ends_without_tracebacks_or_notices(ingest_beside_a_foreign_cluster, ledger):
    stderr = ingest_beside_a_foreign_cluster["run"].stderr
    assert ingest_beside_a_foreign_cluster["run"].returncode == 0, stderr[-3000:]
    for noise in ("Traceback", "Token authentication is enabled"):
        assert noise not in stderr, f"{noise!r} in a successful run's stderr:\n{stderr[-3000:]}"
    ledger("a successful `pretrain ingest`: its stderr", "no traceback, no Ray token-auth notice",
           lines=stderr.count("\n"))


@pytest.mark.parametrize("command", ["filter", "dedup", "quality score", "tokenize"])
def test_a_named_pipe_among_the_input_shards_is_refused_without_hanging(command, tmp_path, ledger):
    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "shard.parquet")  # a reader would block on it forever
    result = invoke(*command.split(), "--input", folder, "--output", tmp_path / "out")
    assert_clear_error(result, "not regular files", str(folder / "shard.parquet"))
    assert not (tmp_path / "out").exists()
    ledger("filter/dedup/quality score/tokenize with a named pipe as a *.parquet input shard",
           "rc 2 naming the file, before anything opens it", commands=1)


# ---------------------------------------------------------------- a Ray address nothing listens at


def test_a_ray_address_nothing_listens_at_fails_in_bounded_time_naming_it(ledger):
    from tasks.ray_runtime import RayUnreachable, check_reachable

    with socket.socket() as probe:  # a port that was just free: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(RayUnreachable, match=rf"Ray cluster at {re.escape(address)} does not answer"):
            check_reachable(address, timeout_s=5)
    check_reachable("auto")  # left to Ray
    ledger("--ray-address / RAY_ADDRESS where nothing listens", "RayUnreachable naming the address within 10 s, "
           "CLI exit 2 (was: ray.init retried without end)", addresses=2)
