"""Cache keys derived from what a stage runs: the import closure behind ``code_version``.

Unit: the closure on a small made-up tree (every kind of import counts) and facts about the real
tree (the modules the old hand-kept lists missed). Integration: in a temporary copy of the tree,
editing any module a stage imports changes its code version (a fresh process computes it, as a
rerun would), an unchanged recomputation gives the same version, and a real filter run through
Prefect's cache recomputes every shard after a module deep in its closure is edited.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO

from flows.registry import STAGES
from pretrain import __version__
from pretrain.codegraph import closure_files, module_closure, module_file, package_data
from pretrain.provenance import code_version

# Each stage's root modules (its flow module and its jobs' work modules): their closures are its code.
STAGE_ROOTS = {stage.name: stage.code_modules for stage in STAGES}
EDIT = b"\n# an edit by tests/test_code_version.py\n"


# ---------------------------------------------------------------- the closure on a made-up tree

def write_tree(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'made-up'\n")
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


MADE_UP = {
    "ground/__init__.py": "",
    "ground/base.py": "import json\n",
    "ground/unrelated.py": "",
    "work/__init__.py": "from ground import base\n",
    "work/step.py": "def run():\n    from work.inner import helper\n    return helper()\n",
    "work/inner/__init__.py": "",
    "work/inner/helper.py": "from . import sibling\nfrom ..typed import T\n",
    "work/inner/sibling.py": "",
    "work/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from work.hinted import H\n",
    "work/hinted.py": "",
    "work/dynamic.py": "import importlib\nplugin = importlib.import_module('work.plugin')\n"
                       "rel = importlib.import_module('.relplug', package='work')\n",
    "work/plugin.py": "",
    "work/relplug.py": "",
    "work/lonely.py": "import ground.unrelated\n",
    "notapackage/mod.py": "",
}


def test_closure_follows_every_kind_of_import_and_nothing_else(tmp_path):
    root = write_tree(tmp_path, MADE_UP)
    assert module_closure("work.step", root=root) == [
        "ground", "ground.base",  # work/__init__.py runs first, and it imports ground.base
        "work", "work.hinted", "work.inner", "work.inner.helper", "work.inner.sibling", "work.step", "work.typed",
    ]  # function-level, relative (. and ..), TYPE_CHECKING imports; the stdlib and work.lonely are absent
    assert module_closure("work.dynamic", root=root) == [
        "ground", "ground.base", "work", "work.dynamic", "work.plugin", "work.relplug"]
    assert "ground.unrelated" not in module_closure("work.step", "work.dynamic", root=root)
    assert module_closure("ground.base", root=root) == ["ground", "ground.base"]


def test_package_data_is_what_a_closure_ships_besides_modules(tmp_path):
    root = write_tree(tmp_path, {**MADE_UP, "work/lists/words.txt": "spam\n", "work/lists/deep/more.txt": "",
                                 "work/lists/__pycache__/x.pyc": "", "work/inner/notes.md": "", "ground/.x.part": ""})
    data = package_data(closure_files("work.step", root=root))
    assert list(data) == ["work.inner/notes.md", "work/lists/deep/more.txt", "work/lists/words.txt"]
    assert package_data(closure_files("ground.base", root=root)) == {}


def test_closure_sees_an_edit_made_while_the_process_runs(tmp_path):
    root = write_tree(tmp_path, MADE_UP)
    assert "work.lonely" not in module_closure("work.inner.sibling", root=root)
    (root / "work/inner/sibling.py").write_text("import work.lonely\n")
    assert module_closure("work.inner.sibling", root=root) == [
        "ground", "ground.base", "ground.unrelated", "work", "work.inner", "work.inner.sibling", "work.lonely"]


def test_a_root_that_is_not_a_project_module_is_an_error(tmp_path):
    root = write_tree(tmp_path, MADE_UP)
    for name in ("work.missing", "json", "notapackage.mod"):
        with pytest.raises(ModuleNotFoundError, match=name):
            module_closure(name, root=root)


INSTALLED = """
import json
from pretrain.codegraph import ROOT, module_closure, project_packages
print(json.dumps({"root": str(ROOT), "packages": sorted(project_packages()), "closure": module_closure("work.step")}))
"""


def test_an_installed_copy_counts_only_the_packages_its_distribution_owns(tmp_path):
    """Installed, the root is site-packages: its neighbours (numpy, torch) must not join the graph."""
    site = write_tree(tmp_path / "site", {**MADE_UP, "neighbour/__init__.py": "", "work/step.py": "import neighbour\n"})
    (site / "pyproject.toml").unlink()
    shutil.copytree(REPO / "pretrain", site / "pretrain", ignore=shutil.ignore_patterns("__pycache__"))
    info = site / "pretrain_pipeline-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pretrain-pipeline\nVersion: 0.1.0\n")
    (info / "top_level.txt").write_text("ground\npretrain\nwork\n")
    result = subprocess.run([sys.executable, "-c", INSTALLED], cwd=tmp_path, env=copy_env(site),
                            capture_output=True, text=True, check=True)
    answer = json.loads(result.stdout)
    assert Path(answer["root"]) == site.resolve()
    assert answer["packages"] == ["ground", "pretrain", "work"]
    assert answer["closure"] == ["ground", "ground.base", "work", "work.step"]


# ---------------------------------------------------------------- facts about the real tree

def test_closures_hold_what_the_hand_kept_lists_missed():
    assert "tasks.sampling" in module_closure(*STAGE_ROOTS["tokenize"])
    assert "tasks.sampling" in module_closure("tasks.tokenize")
    # the quality stage reads its reference corpus to train its models (the score shards read none)
    for quality in (STAGE_ROOTS["quality"], ("tasks.quality.perplexity",), ("tasks.quality.classifier",)):
        assert {"tasks.quality.corpus", "tasks.sampling"} <= set(module_closure(*quality)), quality
    assert "tasks.tokenize" in module_closure("tasks.train.main")
    assert "tasks.tokenize" in module_closure(*STAGE_ROOTS["train"])
    assert "tasks.shards" in module_closure("tasks.filter_runner")  # the filter list missed it too
    assert "tasks.fetch" in module_closure("tasks.filters.url")  # imported inside a function only


def test_closures_leave_out_what_a_stage_does_not_import():
    tokenize = set(module_closure("tasks.tokenize"))
    assert not tokenize & {"flows.dedup", "tasks.dedup", "tasks.dedup.minhash", "models.transformer"}
    assert not any(name == "cli" or name.startswith("cli.") for name in module_closure(*STAGE_ROOTS["filter"]))


def test_code_version_keeps_its_format_and_depends_on_the_closure_not_the_names_given():
    version = code_version("tasks.tokenize")
    head, _, digest = version.partition("+")
    assert head == __version__ and len(digest) == 12 and int(digest, 16) >= 0
    assert code_version("tasks.tokenize", "tasks.sampling") == version  # already in its closure
    assert code_version("tasks.tokenize") != code_version("tasks.dedup")


# ---------------------------------------------------------------- editing a copy of the tree

def copy_tree(target: Path) -> Path:
    """The project's files (tracked and not ignored, as they are in the working tree) under ``target``."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        source = REPO / rel
        if source.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / rel)
    return target


def copy_env(copy: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(copy), **extra}


VERSIONS = """
import json, sys
import pretrain
from pretrain.codegraph import ROOT, closure_files, package_data
from pretrain.provenance import code_version
def answer(names):
    modules = closure_files(*names)
    files = [*modules.values(), *package_data(modules).values()]
    return {"version": code_version(*names), "closure": sorted(modules),
            "files": sorted(str(path.relative_to(ROOT)) for path in files)}
roots = json.loads(sys.argv[1])
for _ in sys.stdin:  # one answer per line read: the versions and closures as the files are now
    print(json.dumps({"package": pretrain.__file__, "stages": {stage: answer(names) for stage, names in roots.items()}}),
          flush=True)
"""


class VersionProcess:
    """A Python process on the copied tree that recomputes every stage's code version on request."""

    def __init__(self, copy: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", VERSIONS, json.dumps(STAGE_ROOTS)], cwd=copy,
                                     env=copy_env(copy), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self) -> dict:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the version process ended (rc {self.proc.poll()})"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0


def fresh_versions(copy: Path) -> dict:
    """One answer from a new process: what a rerun would compute."""
    process = VersionProcess(copy)
    try:
        return process.ask()
    finally:
        process.close()


def versions_of(answer: dict) -> dict[str, str]:
    return {stage: entry["version"] for stage, entry in answer["stages"].items()}


def appended(path: Path) -> bytes:
    original = path.read_bytes()
    path.write_bytes(original + EDIT)
    return original


def test_editing_any_file_a_stage_runs_changes_its_version_and_no_other(tmp_path):
    """Every module of every stage's closure, and the data shipped in its packages (the URL filter's lists)."""
    assert set(STAGE_ROOTS) >= {"ingest", "filter", "dedup", "quality", "tokenize", "train"}
    copy = copy_tree(tmp_path / "tree")
    baseline = fresh_versions(copy)
    assert Path(baseline["package"]).resolve() == (copy / "pretrain" / "__init__.py").resolve()
    assert versions_of(fresh_versions(copy)) == versions_of(baseline)  # an unchanged rerun: the same keys
    stage_files = {stage: set(entry["files"]) for stage, entry in baseline["stages"].items()}
    files = sorted(set().union(*stage_files.values()))
    assert "tasks/filters/lists/banned_url_words.txt" in stage_files["filter"]
    assert not any(rel.startswith("pretrain/recipes/") for rel in files)  # config: keyed by its values

    process = VersionProcess(copy)
    try:
        for rel in files:
            original = appended(copy / rel)
            now = versions_of(process.ask())
            (copy / rel).write_bytes(original)
            for stage, own in stage_files.items():
                changed = now[stage] != baseline["stages"][stage]["version"]
                assert changed == (rel in own), (rel, stage)
        assert versions_of(process.ask()) == versions_of(baseline)  # restored content, restored keys
    finally:
        process.close()
    assert len(files) >= 30


@pytest.mark.parametrize(("stage", "module"), [
    ("tokenize", "tasks.sampling"), ("quality", "tasks.quality.corpus"), ("quality", "tasks.sampling"),
    ("train", "tasks.tokenize"), ("filter", "tasks.shards"),
])
def test_a_rerun_after_editing_a_module_the_old_lists_missed_has_a_new_key(tmp_path, stage, module):
    copy = copy_tree(tmp_path / "tree")
    before = versions_of(fresh_versions(copy))
    appended(module_file(module, copy))
    after = versions_of(fresh_versions(copy))
    assert after[stage] != before[stage]


# ---------------------------------------------------------------- a real stage through Prefect's cache

FILTER_RUN = """
import sys
from flows.filter import filter_flow
from pretrain.config import FilterConfig, RayConfig
for _ in sys.stdin:  # one filter run per line read, each answered by a line once it is done
    filter_flow(config=FilterConfig(), input_dir=sys.argv[1], output_dir=sys.argv[2],
                ray_config=RayConfig(num_cpus=1, object_store_memory_mb=128))
    print("done", flush=True)
"""


def write_shards(folder: Path, n_shards: int = 3) -> Path:
    folder.mkdir(parents=True)
    prose = ("The river runs through the old town, and in the morning the bakers open their doors. "
             "People walk to work along the water and talk about the weather and the news of the day. ") * 6
    for shard in range(n_shards):
        rows = [{"id": f"{shard}-{i}", "url": f"https://town-{shard}.example/news/{i}", "lang": "en",
                 "text": f"Story {shard}-{i}. {prose}"} for i in range(4)]
        pq.write_table(pa.Table.from_pylist(rows), folder / f"part-{shard:05d}.parquet")
    return folder


class FilterProcess:
    """A Python process on the copied tree that runs the filter flow on request (its own local Ray)."""

    def __init__(self, copy: Path, api_url: str, input_dir: Path, output_dir: Path):
        self.ray_tmp = tempfile.mkdtemp(prefix="cv", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
        self.output_dir, self.log = output_dir, Path(self.ray_tmp) / "stderr.log"
        with open(self.log, "w") as log:  # a file, not a pipe: a full pipe would stall the run
            self.proc = subprocess.Popen([sys.executable, "-c", FILTER_RUN, str(input_dir), str(output_dir)],
                                         cwd=copy, env=copy_env(copy, PREFECT_API_URL=api_url, RAY_TMPDIR=self.ray_tmp),
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)

    def run(self) -> dict:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "done":
            self.proc.stdin.close()
            pytest.fail(f"the filter run failed (rc {self.proc.wait(timeout=60)}): {self.log.read_text()[-4000:]}")
        return json.loads((self.output_dir / "report.json").read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            assert self.proc.wait(timeout=120) == 0, self.log.read_text()[-4000:]
        finally:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.mark.integration
def test_filter_rerun_is_served_from_cache_until_a_module_deep_in_its_closure_changes(prefect_server, tmp_path):
    copy = copy_tree(tmp_path / "tree")
    shards, out = write_shards(tmp_path / "in"), tmp_path / "out"
    deep = "tasks.fetch"  # reads remote URL lists: imported inside a function of tasks.filters.url, four
    # imports below the flow (filter_runner, filters, filters.url), and missed by the old hand-kept filter list
    assert deep in module_closure(*STAGE_ROOTS["filter"], root=copy)

    first_process = FilterProcess(copy, prefect_server, shards, out)
    try:
        first = first_process.run()
    finally:
        first_process.close()
    rerun = FilterProcess(copy, prefect_server, shards, out)  # a new process: the keys must not depend on it
    try:
        second = rerun.run()
        appended(module_file(deep, copy))
        third = rerun.run()  # the same process: it sees the edit to a file it had read
    finally:
        rerun.close()

    assert first["shards"] == second["shards"] == third["shards"] == 3
    assert first["cache_hits"] == 0 and first["failed"] == []
    assert second["cache_hits"] == 3  # an unchanged rerun recomputes nothing
    assert third["cache_hits"] == 0 and third["failed"] == []  # every shard recomputed
    assert third["documents_in"] == first["documents_in"] == 12
