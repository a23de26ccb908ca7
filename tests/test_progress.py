"""progress: tqdm's redrawn line on a terminal; plain, periodic lines (no carriage returns) elsewhere;
every unit of the plan counted; what happens before the first unit said."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from launcher.core.progress import Progress, human_seconds

from conftest import dataset_overrides, launch, storage_overrides


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_off_a_terminal_have_an_eta_and_no_carriage_returns():
    out = io.StringIO()
    progress = Progress("prepare", 9, 1000, stream=out, every_s=3600)
    progress.update(0, 0)
    for done in range(1, 8):
        progress.update(done, done * 100)  # units finish faster than every_s: no line each time
    progress.update(8, 900, failed=1)  # a failure shows at once
    progress.update(9, 1000, failed=1, final=True)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 3, lines
    assert re.match(r"prepare: +0% 0\.00/1\.00k \[00:00<\?", lines[0]), lines
    assert re.match(r"prepare: +90% 900/1\.00k \[00:00<00:00, .*B/s, 8/9 units, 1 failed\]", lines[1]), lines
    assert lines[2].endswith("9/9 units, 1 failed]"), lines


def test_a_terminal_gets_one_line_redrawn_by_tqdm():
    out = Terminal()
    progress = Progress("verify", 4, 400, stream=out)
    for done in range(1, 5):
        progress.update(done, done * 100, final=done == 4)
    text = out.getvalue()
    assert text.count("\r") >= 2 and text.count("\n") <= 1
    assert "4/4 units" in text and "100%" in text


def test_human_seconds():
    assert [human_seconds(s) for s in (3, 245, 7380)] == ["3s", "4m05s", "2h03m"]


def test_prepare_counts_every_unit_and_says_what_it_does_first(archives, tmp_path, capsys):
    result = archives("tiny")
    overrides = [*storage_overrides(result.archive_dir, tmp_path / "root"), *dataset_overrides(result)]
    assert launch("prepare", [*overrides, "cluster=debug", "wait=true"]) == 0
    captured = capsys.readouterr()
    # meta, 3 md5s, 3 train shards, 1 val shard and the two finalize units
    assert "10/10 units]" in captured.err.splitlines()[-1], captured.err
    assert re.search(r"indexing ILSVRC2012_img_train.tar \([\d.]+ KB\): 3 class-tar headers", captured.err)
    assert re.search(r"indexing ILSVRC2012_img_val.tar \([\d.]+ KB\): 6 image headers", captured.err)
    assert re.search(r"^submitted 1 jobs to debug \(job ids DEBUG\S*\); logs in \S+", captured.out, re.M), captured.out


@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_waiting_prepare_and_verify_print_job_ids_and_log_folder(cluster, archives, tmp_path, capsys):
    """Issue 15 point 5: the job ids and the log folder are printed also when the command waits."""
    result = archives("tiny")
    overrides = [*storage_overrides(result.archive_dir, tmp_path / "root"), *dataset_overrides(result)]
    for command in ("prepare", "verify"):
        assert launch(command, [*overrides, f"cluster={cluster}", "wait=true"]) == 0
        out = capsys.readouterr().out
        line = re.search(rf"^submitted \d+ jobs to {cluster} \(job ids (\S.*)\); logs in (\S+)$", out, re.M)
        assert line, f"{command}: {out}"
        folder = Path(line.group(2))
        assert folder.is_dir() and folder.name.startswith(command), (command, folder)
        if cluster == "local":  # debug runs in this process: its output is ours, the folder stays empty
            assert list(folder.glob("*_log.out")), f"{command}: no job log in {folder}"
