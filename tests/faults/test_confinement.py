"""Path confinement in the quality, tokenize and train flows: with a data root set, a path that
leaves it fails before anything is read or written, naming the parameter (ingest, filter and dedup:
tests/test_security.py; the rules themselves: pretrain.paths, unit-tested there too).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.config import QualityConfig, TokenizeConfig, TrainConfig
from pretrain.paths import UnsafePathError
from tasks.demo import write_demo_data

pytestmark = [pytest.mark.faults, pytest.mark.integration]


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """A data root holding one demo WARC folder and a secret file outside it."""
    root = tmp_path / "root"
    write_demo_data(root / "in", n_files=1, articles_per_file=2)
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "model.json").write_text("{}")
    monkeypatch.setenv("PRETRAIN_DATA_ROOT", str(root))
    return root


def refused(root: Path, cases: list) -> int:
    """Every case fails naming its field and nothing is written; returns how many were refused."""
    for run, field in cases:
        with pytest.raises(UnsafePathError, match=field):
            run()
    assert sorted(p.name for p in root.parent.iterdir()) == ["root", "secret"]  # nothing written outside
    assert sorted(p.name for p in root.iterdir()) == ["in"]  # nor inside: refused before any write
    return len(cases)


def test_the_quality_flows_refuse_escaping_paths(services, root, ledger):
    from flows.quality import score_flow, train_classifier_flow, train_perplexity_flow

    secret = str(root.parent / "secret")
    paths = refused(root, [
        (lambda: score_flow(config=QualityConfig(perplexity_model="in"), input_dir="in", output_dir="../escaped"),
         "^output_dir: '../escaped' resolves to .* outside the data root"),
        (lambda: score_flow(config=QualityConfig(classifier_model=secret), input_dir="in", output_dir="q"),
         "^quality.classifier_model: "),
        (lambda: train_perplexity_flow(reference=[f"{secret}/*.txt"], output_dir="ppl"), r"^reference\[0\]: "),
        (lambda: train_classifier_flow(positive=["in"], negative=["in", "/etc/hostname"], output_dir="clf"),
         r"^negative\[1\]: '/etc/hostname'"),
    ])
    ledger("escaping paths: the quality flows (score, train-perplexity, train-classifier)",
           "UnsafePathError naming the field, nothing written", paths_refused=paths)


def test_the_tokenize_flow_refuses_escaping_paths(services, root, ledger):
    from flows.tokenize import tokenize_flow

    paths = refused(root, [
        (lambda: tokenize_flow(config=TokenizeConfig(), input_dirs=["in"], output_dir="../escaped"),
         "^output_dir: '../escaped' resolves to .* outside the data root"),
        (lambda: tokenize_flow(config=TokenizeConfig(), input_dirs=["in", "../secret"], output_dir="tokens"),
         r"^input_dirs\[1\]: '../secret'"),
        (lambda: tokenize_flow(config=TokenizeConfig(tokenizer="/etc/hostname"), input_dirs=["in"],
                               output_dir="tokens"), "^tokenize.tokenizer: '/etc/hostname'"),
    ])
    ledger("escaping paths: the tokenize flow", "UnsafePathError naming the field, nothing written",
           paths_refused=paths)


def test_the_train_flow_refuses_escaping_paths(services, root, ledger):
    from flows.train import train_flow

    paths = refused(root, [
        (lambda: train_flow(config=TrainConfig(data_dir="in", output_dir="../escaped")),
         "^train.output_dir: '../escaped' resolves to .* outside the data root"),
        (lambda: train_flow(config=TrainConfig(data_dir="../secret", output_dir="run")), "^train.data_dir: "),
        (lambda: train_flow(config=TrainConfig(data_dir="in", output_dir="run", hostfile="~/.ssh/hosts")),
         "^train.hostfile: .*home-relative"),
    ])
    ledger("escaping paths: the train flow", "UnsafePathError naming the field, nothing written",
           paths_refused=paths)


def test_the_sweep_flow_refuses_escaping_paths(services, root, ledger):
    from flows.sweep import sweep_flow

    paths = refused(root, [
        (lambda: sweep_flow(data_dir="../secret", output_dir="sweep"), "^data_dir: '../secret' resolves to"),
        (lambda: sweep_flow(data_dir="in", output_dir="/tmp/escaped-sweep"), "^output_dir: '/tmp/escaped-sweep'"),
    ])
    ledger("escaping paths: the scaling sweep flow", "UnsafePathError naming the field, nothing written",
           paths_refused=paths)
