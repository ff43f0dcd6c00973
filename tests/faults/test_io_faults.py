"""Network, disk and concurrency faults at the flow level: retried within limits, clear failures,
earlier output intact, nothing lost or duplicated.

Per-request behaviour (backoff values, Range resumption) is unit-tested in tests/test_fetch.py;
this file checks what a whole ingest run does with the same faults.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO
from faultlib import StageProcess, assert_no_duplicate_ids, part_files, rows_of, shard_bytes
from httpserver import FaultyHTTPServer

from flows.common import OutputInUse, OutputNotWritable
from pretrain.config import DownloadConfig, FilterConfig, IngestConfig
from tasks.demo import write_demo_data

pytestmark = [pytest.mark.faults, pytest.mark.integration]
RETRIES = DownloadConfig(max_attempts=3, backoff_base_s=0.02, backoff_max_s=1.0, timeout_s=1.0)


# ---------------------------------------------------------------- network


def test_network_faults_are_retried_within_limits_then_fail_naming_the_url(services, tmp_path, ledger):
    from flows.ingest import ingest_flow
    from flows.runner import StageFailed

    demo = write_demo_data(tmp_path / "demo", n_files=6, articles_per_file=4)
    paths = [f"/w/{p.name}" for p in demo]
    with FaultyHTTPServer(files={path: p.read_bytes() for path, p in zip(paths, demo)}) as server:
        urls = [server.url(path) for path in paths]
        ok_429, ok_slow, ok_mixed, bad_503, bad_drop, bad_truncated = paths
        server.add_faults(ok_429, ("status", 429, 1), ("status", 429, 1))  # Retry-After: 1
        server.add_faults(ok_slow, ("slow", 3.0))  # longer than timeout_s: a read timeout
        server.add_faults(ok_mixed, ("status", 503), ("drop",))
        server.add_faults(bad_503, *[("status", 503)] * 3)
        server.add_faults(bad_drop, *[("drop",)] * 3)
        server.add_faults(bad_truncated, *[("truncate", 100)] * 3)
        with pytest.raises(StageFailed, match="3 of 6 input files failed") as info:
            ingest_flow(config=IngestConfig(inputs=urls, download=RETRIES), output_dir=str(tmp_path / "faulty"))
        requests = {path: len(server.requests_for(path)) for path in paths}
        server.add_faults(ok_429)  # no faults left: a clean run to compare with
        ingest_flow(config=IngestConfig(inputs=urls[:3], download=RETRIES), output_dir=str(tmp_path / "clean"))

    assert requests == {ok_429: 3, ok_slow: 2, ok_mixed: 3, bad_503: 3, bad_drop: 3, bad_truncated: 3}
    message = str(info.value)
    assert f"{urls[3]} (FetchError: GET {urls[3]} failed after 3 attempts: HTTP 503)" in message
    assert f"GET {urls[4]} failed after 3 attempts: ConnectionError" in message
    assert f"GET {urls[5]} failed after 3 attempts: ProtocolError: ('Connection broken: IncompleteRead(100 bytes read" in message
    report = json.loads((tmp_path / "faulty" / "report.json").read_text())
    assert sorted(f["input"] for f in report["failed"]) == sorted(urls[3:])
    assert shard_bytes(tmp_path / "faulty") == shard_bytes(tmp_path / "clean")  # retried files lost nothing
    assert assert_no_duplicate_ids(tmp_path / "faulty") == report["documents"] > 0
    assert part_files(tmp_path / "faulty") == [] and not any((tmp_path / "faulty" / ".downloads").iterdir())
    for path, fault, outcome in [(ok_429, "HTTP 429 twice, Retry-After: 1", "retried, file ingested"),
                                 (ok_slow, "response slower than timeout_s", "retried, file ingested"),
                                 (ok_mixed, "HTTP 503, then a dropped connection", "retried, file ingested"),
                                 (bad_503, "HTTP 503 x3 (max_attempts 3)", "file fails naming URL and HTTP 503"),
                                 (bad_drop, "dropped connection x3", "file fails naming URL and ConnectionError"),
                                 (bad_truncated, "truncated body x3", "file fails naming URL and IncompleteRead")]:
        ledger(f"network: {fault}", outcome, requests=requests[path])
    ledger("network: the whole run (6 files)", "3 fail by URL; shards equal a clean run's, no .part",
           shards_compared=len(shard_bytes(tmp_path / "faulty")), ids_unique=report["documents"])


# ---------------------------------------------------------------- disk


def _mount_tmpfs(folder: Path, options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'mount failed'}); "
                    "run as root to test a full or read-only disk")


@pytest.fixture
def mounts():
    mounted: list[Path] = []
    yield mounted
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_an_output_folder_that_is_not_writable_fails_clearly(services, tmp_path, mounts, ledger):
    from flows.filter import filter_flow
    from flows.ingest import ingest_flow

    write_demo_data(tmp_path / "in", n_files=1, articles_per_file=2)
    locked = tmp_path / "read-only"
    if os.geteuid() == 0:  # root ignores permission bits: use a read-only file system
        _mount_tmpfs(locked, "ro,size=1m")
        mounts.append(locked)
    else:
        locked.mkdir()
        locked.chmod(0o555)
    with pytest.raises(OutputNotWritable, match=f"ingest: output folder {locked / 'ingest'} is not writable: "):
        ingest_flow(config=IngestConfig(inputs=[str(tmp_path / "in")]), output_dir=str(locked / "ingest"))
    ingest_flow(config=IngestConfig(inputs=[str(tmp_path / "in")]), output_dir=str(tmp_path / "shards"))
    with pytest.raises(OutputNotWritable, match="filter: output folder .* is not writable"):
        filter_flow(config=FilterConfig(), input_dir=str(tmp_path / "shards"), output_dir=str(locked))
    ledger(f"disk: output folder not writable ({'read-only tmpfs' if mounts else 'mode 555'})",
           "OutputNotWritable before any work (ingest, filter)", flows=2, files_written=len(list(locked.rglob("*"))))


def test_a_full_disk_fails_the_shards_that_do_not_fit_and_keeps_earlier_ones_intact(services, tmp_path, mounts,
                                                                                    ledger):
    from flows.ingest import ingest_flow
    from flows.runner import StageFailed

    demo = write_demo_data(tmp_path / "in", n_files=8, articles_per_file=60)
    disk = tmp_path / "small-disk"
    _mount_tmpfs(disk, "size=1m")
    mounts.append(disk)
    out = disk / "ingest"
    first = ingest_flow(config=IngestConfig(inputs=[str(demo[0])]), output_dir=str(out))
    before = shard_bytes(out)
    assert len(before) == 1 and first["documents"] > 0
    used = sum(p.stat().st_size for p in disk.rglob("*") if p.is_file())
    room = used + 2 * len(before["demo-00000.parquet"])  # room for about two more of the seven shards to come
    subprocess.run(["mount", "-o", f"remount,size={room}", str(disk)], check=True)

    with pytest.raises(StageFailed, match=r"of 8 input files failed: .*No space left on device") as info:
        ingest_flow(config=IngestConfig(inputs=[str(tmp_path / "in")]), output_dir=str(out))
    failed = str(info.value).count("No space left on device")
    assert 1 <= failed <= 7
    assert shard_bytes(out)["demo-00000.parquet"] == before["demo-00000.parquet"]  # cached, untouched
    assert part_files(out) == []  # the writers that hit the full disk removed their temporary files
    for name, data in shard_bytes(out).items():  # whatever was committed is whole
        assert data[-4:] == b"PAR1", name
    assert len(shard_bytes(out)) == 8 - failed  # every shard that did not fail was committed whole
    written = rows_of(out)
    assert len({r["id"] for r in written}) == len(written)
    ledger("disk: full (tmpfs with room for about 2 more shards)", "shards that do not fit fail by input; "
           "the earlier one untouched, committed ones whole, no .part", inputs=8, shards_failed=failed,
           shards_committed=8 - failed, ids_unique=len(written))


# ---------------------------------------------------------------- two writers


def test_a_second_run_on_the_same_output_fails_clearly_and_the_first_is_not_corrupted(services, tmp_path, ledger):
    from flows.ingest import ingest_flow

    write_demo_data(tmp_path / "in", n_files=8, articles_per_file=60)
    out = tmp_path / "shared-out"
    stage = StageProcess(["ingest", "--input", str(tmp_path / "in"), "--output", str(out), "--num-cpus", "1"],
                         services)
    lock = out / ".lock"
    assert stage.wait_for(lambda: lock.is_file() and lock.read_text().strip()), "the first run should take the lock"
    holder = lock.read_text().strip()
    with pytest.raises(OutputInUse, match=f"ingest: output folder {out} is being written by another run"):
        ingest_flow(config=IngestConfig(inputs=[str(tmp_path / "in")]), output_dir=str(out))
    code, output = stage.finish()
    assert code == 0, output[-2000:]
    assert f"pid {stage.proc.pid}" in holder

    ingest_flow(config=IngestConfig(inputs=[str(tmp_path / "in")]), output_dir=str(tmp_path / "clean"))
    assert shard_bytes(out) == shard_bytes(tmp_path / "clean") and len(shard_bytes(out)) == 8
    documents = json.loads((out / "report.json").read_text())["documents"]
    assert assert_no_duplicate_ids(out) == documents
    assert part_files(out) == []
    again = ingest_flow(config=IngestConfig(inputs=[str(tmp_path / "in")]), output_dir=str(out))  # lock released
    assert again["cache_hits"] == 8
    ledger("two writers: a second ingest on a folder in use", "OutputInUse at once; the first equals a clean run",
           shards_compared=len(shard_bytes(out)), ids_unique=documents, cache_hits_after=again["cache_hits"])
    shutil.rmtree(stage.ray_tmp, ignore_errors=True)


def test_tokenize_takes_the_output_lock_and_sheds_stale_part_files(services, tmp_path, ledger):
    from flows.common import output_lock
    from flows.ingest import ingest_flow
    from flows.tokenize import tokenize_flow
    from pretrain.config import TokenizeConfig

    write_demo_data(tmp_path / "in", n_files=2, articles_per_file=20)
    ingest_flow(config=IngestConfig(inputs=[str(tmp_path / "in")]), output_dir=str(tmp_path / "shards"))
    out = tmp_path / "tokens"
    run = lambda: tokenize_flow(config=TokenizeConfig(vocab_size=400), input_dirs=[str(tmp_path / "shards")],  # noqa
                                output_dir=str(out))
    with output_lock(out, "another run"):
        with pytest.raises(OutputInUse, match=f"tokenize: output folder {out} is being written by another run "
                                              r"\(another run, pid \d+"):
            run()
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # refused before writing anything

    (out / "train").mkdir()
    stale = [out / "train" / ".demo-00000.bin.4242-0badcafe.part", out / ".tokenizer.json.4242-0badcafe.part"]
    for path in stale:
        path.write_bytes(b"\x00" * 10)  # what a killed writer leaves
    summary = run()
    assert summary["documents"] > 0 and part_files(out) == []
    assert sorted(p.name for p in (out / "train").glob("*.bin")) == ["demo-00000.bin", "demo-00001.bin"]
    ledger("two writers: tokenize on a locked folder, then stale .part files", "OutputInUse, nothing written; "
           "the rerun removes the .part files", part_files_planted=len(stale), documents=summary["documents"])


def escaped_the_cli(output: str) -> bool:
    """The exception went up through the command (a traceback with its frames), not caught by it.

    The flow run's own log keeps the traceback Prefect writes for a failed run; that one has no CLI frame.
    """
    return f'File "{REPO / "cli"}/' in output


def test_the_cli_fails_with_the_clear_message_on_a_locked_or_escaping_output(services, tmp_path, ledger):
    from flows.common import output_lock

    write_demo_data(tmp_path / "in", n_files=1, articles_per_file=2)
    out = tmp_path / "locked"
    with output_lock(out, "another run"):
        stage = StageProcess(["ingest", "--input", str(tmp_path / "in"), "--output", str(out)], services)
        code, output = stage.finish(timeout_s=300)
    shutil.rmtree(stage.ray_tmp, ignore_errors=True)
    text = " ".join(output.split())  # rich wraps long lines
    assert code == 2, output[-2000:]
    assert f"error: ingest: output folder {out} is being written by another run (another run, pid" in text
    assert not escaped_the_cli(output) and list(out.glob("*.parquet")) == []
    ledger("CLI: `pretrain ingest` on a locked folder", "exit 2 with the message, no traceback", exit_code=code,
           shards_written=len(list(out.glob("*.parquet"))))

    stage = StageProcess(["filter", "--input", "in", "--output", "../escaped"], services,
                         PRETRAIN_DATA_ROOT=str(tmp_path))
    code, output = stage.finish(timeout_s=300)
    shutil.rmtree(stage.ray_tmp, ignore_errors=True)
    text = " ".join(output.split())
    assert code == 2, output[-2000:]
    assert "error: output_dir: '../escaped' resolves to" in text and "outside the data root" in text
    assert not escaped_the_cli(output) and not (tmp_path.parent / "escaped").exists()
    ledger("CLI: `pretrain filter --output ../escaped` with a data root", "exit 2 with UnsafePathError, no traceback",
           exit_code=code)
