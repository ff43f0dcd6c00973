"""The CLI's conventions: list options, recipe values against CLI defaults, one --set, recipes as package data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from conftest import SHARED_DATA
from typer.core import TyperGroup, TyperOption
from typer.testing import CliRunner

from cli.main import app
from cli.options import ListOptions, spread_list_values
from tasks.demo import write_demo_data

FLAGS = {"--input", "-i", "--set"}


def every_command(command=None, path: str = "pretrain"):
    """(name, command) for every command of the app, subcommands included."""
    command = command or typer.main.get_command(app)
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            yield from every_command(sub, f"{path} {name}")
    else:
        yield path, command


# ---------------------------------------------------------------- list options


def test_values_after_one_flag_become_one_flag_each():
    assert spread_list_values(["--input", "a", "b", "--output", "X"], FLAGS) == [
        "--input", "a", "--input", "b", "--output", "X"]
    assert spread_list_values(["-i", "a", "b", "-i", "c"], FLAGS) == ["-i", "a", "-i", "b", "-i", "c"]
    assert spread_list_values(["--input=a", "b"], FLAGS) == ["--input=a", "--input", "b"]
    assert spread_list_values(["--set", "a.b=1", "c=2"], FLAGS) == ["--set", "a.b=1", "--set", "c=2"]


def test_spreading_stops_at_an_option_and_after_double_dash_and_keeps_stdin_as_a_value():
    assert spread_list_values(["--input", "-", "a", "--num-cpus", "1"], FLAGS) == [
        "--input", "-", "--input", "a", "--num-cpus", "1"]
    assert spread_list_values(["--input", "a", "--", "b", "--input", "c"], FLAGS) == [
        "--input", "a", "--", "b", "--input", "c"]
    assert spread_list_values(["--output", "X", "b"], FLAGS) == ["--output", "X", "b"]  # not a list flag
    assert spread_list_values(["--input"], FLAGS) == ["--input"]  # click says the value is missing


def test_every_command_with_a_list_option_takes_several_values_after_one_flag():
    with_lists = {name: command for name, command in every_command()
                  if any(isinstance(p, TyperOption) and p.multiple for p in command.params)}
    assert set(with_lists) >= {"pretrain ingest", "pretrain tokenize", "pretrain train", "pretrain run",
                               "pretrain quality train-perplexity", "pretrain quality train-classifier",
                               "pretrain scaling sweep"}
    assert [name for name, command in with_lists.items() if not isinstance(command, ListOptions)] == []


def warc_inputs(tmp_path: Path) -> list[str]:
    """What `--input ../shared/data/cc/*.warc.gz` gives the command (the shell expands the glob), else demo WARCs."""
    found = sorted(str(p) for p in (SHARED_DATA / "cc").glob("*.warc.gz"))
    return found or [str(p) for p in write_demo_data(tmp_path / "demo", n_files=3, articles_per_file=5)]


@pytest.mark.integration
def test_ingest_takes_a_globs_files_after_one_flag_and_repeated_flags(services, tmp_path):
    files = warc_inputs(tmp_path)
    assert len(files) >= 3
    out = tmp_path / "out"
    args = ["ingest", "--input", *files[:-1], "--output", str(out), "--input", files[-1], "--num-cpus", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["files"] == len(files) and report["failed"] == []
    assert sorted(shard["input"] for shard in report["shards"]) == files


# ---------------------------------------------------------------- recipe values against CLI defaults


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    from tasks.demo_reference import write_demo_reference

    return str(write_demo_reference(tmp_path_factory.mktemp("reference"), n_documents=120))


@pytest.mark.integration
def test_train_perplexity_keeps_the_recipes_lang_unless_lang_is_given(services, reference, tmp_path):
    recipe = write_recipe(tmp_path / "fr.yaml", "quality:\n  perplexity: {lang: fr, order: 3, vocab_size: 300}\n")
    runs = {"recipe": [], "flag": ["--lang", "de"]}
    for name, flag in runs.items():
        out = tmp_path / name
        result = CliRunner().invoke(app, ["quality", "train-perplexity", "--reference", reference, "--output", str(out),
                                          "--config", str(recipe), *flag])
        assert result.exit_code == 0, result.output
        runs[name] = json.loads((out / "model.json").read_text())
    assert runs["recipe"]["lang"] == "fr" and runs["flag"]["lang"] == "de"
    assert runs["recipe"]["order"] == runs["flag"]["order"] == 3  # the rest of the section still applies


def spam_shard(folder: Path, n_documents: int) -> str:
    """Web-like junk, one Parquet shard: the classifier's negatives."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    words = "buy cheap best price free shipping click here login cart sale discount now offer watches".split()
    texts = [" ".join(rng.choice(words) for _ in range(30)) + f" item {n}" for n in range(n_documents)]
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"id": [str(n) for n in range(n_documents)], "text": texts}), folder / "web.parquet")
    return str(folder)


@pytest.mark.integration
def test_train_classifier_keeps_the_recipes_max_documents_unless_the_flag_is_given(services, reference, tmp_path):
    negatives = spam_shard(tmp_path / "web", 100)
    recipe = write_recipe(tmp_path / "small.yaml", "quality_training: {max_documents: 30}\n"
                                                   "quality:\n  classifier: {n_features: 4096}\n")
    runs = {"recipe": [], "flag": ["--max-documents", "50"]}
    for name, flag in runs.items():
        out = tmp_path / name
        result = CliRunner().invoke(app, ["quality", "train-classifier", "--positive", reference,
                                          "--negative", negatives, "--output", str(out), "--config", str(recipe),
                                          *flag])
        assert result.exit_code == 0, result.output
        runs[name] = json.loads((out / "model.json").read_text())["counts"]
    assert (runs["recipe"]["positives"], runs["recipe"]["negatives"]) == (30, 30)
    assert (runs["flag"]["positives"], runs["flag"]["negatives"]) == (50, 50)


# ---------------------------------------------------------------- one --set syntax

SET_COMMANDS = {"run": ["run"], "train": ["train"], "scaling sweep": ["scaling", "sweep", "--data", "tokens"]}


@pytest.mark.parametrize("command", sorted(SET_COMMANDS))
def test_set_takes_the_same_key_path_in_run_train_and_sweep(command):
    """`--set train.seq_len=...` reaches the same field in all three: a bad value there is named by that path."""
    result = CliRunner().invoke(app, [*SET_COMMANDS[command], "--set", "train.seq_len=x"])
    assert result.exit_code == 2, result.output
    assert "train.seq_len: Input should be a valid integer" in result.output


@pytest.mark.parametrize("command", sorted(SET_COMMANDS))
@pytest.mark.parametrize("assignment, said", [
    ("train.no_such_key=1", "train.no_such_key: Extra inputs are not permitted"),
    ("no_such_key", "--set expects key.path=value, got 'no_such_key'"),
    ("train..seq_len=8", "'train..seq_len' is not a key path"),
])
def test_a_bad_set_key_exits_2_naming_it(command, assignment, said):
    result = CliRunner().invoke(app, [*SET_COMMANDS[command], "--set", assignment])
    assert result.exit_code == 2, result.output
    assert said in " ".join(result.output.split()), result.output


def test_train_names_the_recipe_path_of_a_bare_training_field():
    result = CliRunner().invoke(app, ["train", "--set", "seq_len=8"])
    assert result.exit_code == 2, result.output
    assert "the training field is train.seq_len" in " ".join(result.output.split())


def test_set_assignments_land_where_the_path_says():
    from pretrain.config import SweepConfig, apply_overrides, load_recipe, validate_config

    recipe = load_recipe("local", ["train.max_steps=3", "ingest.languages=[en, fr]"])
    assert recipe.train.max_steps == 3 and recipe.ingest.languages == ["en", "fr"]
    sweep = validate_config(SweepConfig, apply_overrides({}, ["train.seq_len=32", "min_steps=2"]))
    assert sweep.train.seq_len == 32 and sweep.min_steps == 2


# ---------------------------------------------------------------- recipes as package data

INSTALLED_PROBE = """
import json, sys
sys.path[:0] = [{site!r}, {venv!r}]
import cli.main, pretrain.config
from pretrain.config import load_recipe, load_sweep_config, shipped_names
from typer.testing import CliRunner
result = CliRunner().invoke(cli.main.app, ["run", "--recipe", "local", "--set", "train.no_such_key=1"])
print(json.dumps({{"modules": [cli.main.__file__, pretrain.config.__file__], "recipes": shipped_names(),
                  "local": load_recipe("local").model_dump(mode="json"),
                  "gpu": load_sweep_config("gpu").model_dump(mode="json"),
                  "run": [result.exit_code, " ".join(result.output.split())]}}))
"""


def copy_sources(into: Path) -> Path:
    """pyproject.toml, README.md and the packages it lists, so that the build writes nothing into the tree."""
    import shutil
    import tomllib

    from conftest import REPO

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    into.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, into / name)
    for package in packages:
        shutil.copytree(REPO / package, into / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return into


def test_a_wheel_install_has_the_recipes(tmp_path):
    import site
    import subprocess
    import sys

    from pretrain.config import load_recipe, load_sweep_config

    source = copy_sources(tmp_path / "src")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(source)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "wheel").glob("pretrain_pipeline-*.whl"))
    installed = tmp_path / "installed"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(installed), str(wheel)], check=True,
                   capture_output=True)
    probe = INSTALLED_PROBE.format(site=str(installed), venv=site.getsitepackages()[0])
    # -I -S: no source tree on sys.path (nor the editable install's finder): only the installed copy and the venv
    done = subprocess.run([sys.executable, "-I", "-S", "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PREFECT_HOME": str(tmp_path / "prefect")})
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert all(Path(module).is_relative_to(installed) for module in found["modules"]), found["modules"]
    assert found["recipes"] == ["base", "cc-full", "cc-small", "local"]
    assert found["local"] == load_recipe("local").model_dump(mode="json")
    assert found["gpu"] == load_sweep_config("gpu").model_dump(mode="json")
    assert found["run"][0] == 2 and "train.no_such_key: Extra inputs are not permitted" in found["run"][1]


def test_recipe_and_sweep_config_by_name_or_path(tmp_path):
    from pretrain.config import ConfigError, SWEEP_RECIPES, load_recipe, load_sweep_config

    variant = tmp_path / "variant.yaml"
    variant.write_text("base: local\ntrain: {max_steps: 7}\n")
    assert load_recipe(str(variant)).train.max_steps == 7
    assert load_sweep_config(str(SWEEP_RECIPES / "gpu.yaml")) == load_sweep_config("gpu")
    assert load_sweep_config(None, ["min_steps=3"]).min_steps == 3
    with pytest.raises(ConfigError, match="shipped sweep configs: gpu"):
        load_sweep_config("tpu")
    with pytest.raises(ConfigError, match="known recipes: base, cc-full, cc-small, local"):
        load_recipe("nope")
