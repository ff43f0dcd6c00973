"""Extraction quality on the 237 real pages (accuracy only; speed is measured by bench/)."""

import importlib.util

from conftest import REPO, shared_data


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_extraction", REPO / "bench" / "extraction.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fast_extractor_reaches_f1_090_on_extraction_dev():
    bench = load_bench()
    pages = bench.load_pages(shared_data("extraction-dev"))
    assert len(pages) == 237
    from tasks.extract import extract_text

    result = bench.run(pages, {"fast": lambda html, url: extract_text(html, "fast", url=url)}, repeat=1)["fast"]
    assert result["f1"] >= 0.90, {k: result[k] for k in ("precision", "recall", "f1")}
    assert result["precision"] >= 0.85 and result["recall"] >= 0.85
