"""Load: ingesting 4x the files on the same 2 Ray workers keeps each worker's peak memory flat,
and every record read is accounted for (a document, a counted drop, or a non-response record).

The measurement is bench/load.py's (real pages replicated into WARC files of the same size,
the real ingest flow, a sampler of the raylet's worker processes); this test asserts on it.
"""

from __future__ import annotations

import sys

import pytest
from conftest import REPO, shared_data
from faultlib import slow

sys.path.insert(0, str(REPO))  # bench/ is not an installed package
from bench.load import CC_SAMPLE_RECORDS, run_load, table  # noqa: E402

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SMALL, LARGE, REPEAT = 4, 16, 1
PAGES = 237  # pages with extraction expectations, each once per file (REPEAT)
CC_RESPONSES = 16  # of the 50 records of the Common Crawl sample appended to every file


@slow  # about 40 s: `make test-faults`
def test_worker_memory_does_not_grow_with_the_number_of_files(services, tmp_path, ledger):
    shared_data("extraction-dev", "expectations.json")
    shared_data("cc", "CC-MAIN-2020-34-sample.warc.gz")
    small, large = run_load(tmp_path, [SMALL, LARGE], REPEAT)
    print("\n" + table([small, large]))

    for run in (small, large):
        per_file = PAGES * REPEAT + CC_SAMPLE_RECORDS
        assert run.records == run.records_read == run.files * per_file
        responses = run.files * (PAGES * REPEAT + CC_RESPONSES)
        assert run.documents + sum(run.dropped.values()) == responses, run.dropped  # every response decided
        assert run.documents > 0.9 * responses and set(run.dropped) <= {"empty_text", "text_too_short"}
        assert run.samples > 10 and all(mib > 50 for mib in run.peak_rss_mib)  # real worker processes were seen
    assert len(large.peak_rss_mib) >= 2, "the 16 files should have been spread over both workers"
    bound = 1.25 * small.worst_worker_mib + 50
    assert large.worst_worker_mib <= bound, (
        f"a worker peaked at {large.worst_worker_mib:.0f} MiB with {LARGE} files, over {bound:.0f} MiB "
        f"(1.25 x {small.worst_worker_mib:.0f} MiB with {SMALL} files + 50)")
    for run in (small, large):
        ledger(f"load: {run.files} WARC files on 2 Ray workers", "every record accounted for; worker peak RSS flat",
               records_read=run.records_read, documents=run.documents, dropped=sum(run.dropped.values()),
               peak_rss_mib=round(run.worst_worker_mib))
