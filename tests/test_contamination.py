"""Acceptance 2, the training half: evaluation sees planted benchmark text, and decontamination removes it.

A tiny model (2 x 64) trained on 200 HellaSwag items' gold text (8 copies each, by the tokenize
stage's mixture weight) plus 200 clean book chunks scores far above random on those items; the
same corpus after the real decontaminate flow, tokenized with the same tokenizer, trains the same
model for the same steps to near random. 250 steps here (a few minutes on 2 shared cores);
bench/decontaminate.py --part train runs 600 (0.96 per-character accuracy before, 0.275 after).
"""

from __future__ import annotations

import pytest
from conftest import shared_data
from decontam_fixtures import Training, contamination

pytestmark = pytest.mark.integration


def test_a_model_trained_on_planted_items_scores_high_and_after_decontamination_near_random(services, tmp_path):
    results = contamination(tmp_path, shared_data("reference", "en"), clean=200, repeats=8,
                            training=Training(steps=250))
    before, after = results["contaminated"], results["decontaminated"]
    print(f"before: {before}\nafter: {after}")
    assert results["decontaminate"] == {"documents_in": 400, "documents_kept": 200,
                                        "dropped": {"contaminated_hellaswag": 200}}
    assert before["random"] == after["random"] == 0.25 and before["items"] == 200
    assert before["accuracy_per_char"] >= 0.5 and before["accuracy"] >= 0.4  # measured: 0.65, 0.485
    assert after["accuracy_per_char"] <= 0.36 and after["accuracy"] <= 0.36  # measured: 0.31, 0.27
    assert after["train_tokens"] < before["train_tokens"]  # the planted copies are gone
