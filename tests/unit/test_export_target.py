"""``sphere export --to`` a place it cannot write: one message naming it, a non-zero exit, and
nothing half-written left there."""

from __future__ import annotations

import errno
import os

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.unit.test_damaged_runs import finished_run, said


def _export(root, to):
    return CliRunner().invoke(app, ["export", "r", "--format", "dpo", "--to", str(to), "--data-root", str(root)])


def test_export_to_an_existing_file_is_one_message_and_leaves_it_alone(tmp_path):
    root = tmp_path / "data"
    finished_run(root)
    target = tmp_path / "dpo.jsonl"
    target.write_text("mine\n")
    res = _export(root, target)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"{target} is a file" in said(res) and "folder" in said(res)
    assert target.read_text() == "mine\n"
    res = _export(root, target / "sub")  # a path through a file
    assert res.exit_code == 2 and "Traceback" not in res.output and str(target) in said(res)


def test_export_to_a_place_that_cannot_be_written_is_one_message(tmp_path):
    root = tmp_path / "data"
    finished_run(root)
    to = "/sys/sphere-export-test/out"  # not writable, even for root
    if os.access("/sys", os.W_OK) and os.path.isdir("/sys/sphere-export-test"):
        pytest.skip("/sys is writable here")
    res = _export(root, to)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "cannot write the dpo export to /sys/sphere-export-test/out" in said(res)


def test_a_write_that_fails_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    root = tmp_path / "data"
    finished_run(root)

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(pq, "write_table", read_only)  # the JSONL is written, the Parquet fails
    to = tmp_path / "new" / "out"
    res = _export(root, to)
    assert res.exit_code == 2 and "Traceback" not in res.output and "Read-only file system" in said(res)
    assert not (tmp_path / "new").exists()  # no half export, not even the folders it made

    old = tmp_path / "old"
    old.mkdir()
    (old / "dpo.jsonl").write_text("previous\n")
    res = _export(root, old)
    assert res.exit_code == 2 and sorted(p.name for p in old.iterdir()) == ["dpo.jsonl"]
    assert (old / "dpo.jsonl").read_text() == "previous\n"  # an earlier export is not half replaced
