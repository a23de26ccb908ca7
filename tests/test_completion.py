"""launcher.core.completion: whether prepare's records say a split is whole, and why not."""

from __future__ import annotations

import json

from launcher.core.completion import incomplete_reason, state_folders


def test_reason_comes_from_the_records(tmp_path):
    root, state = tmp_path / "root", tmp_path / "root" / ".launcher"
    (state / "units").mkdir(parents=True)
    assert incomplete_reason(tmp_path / "elsewhere", None, "val") is None  # no records of ours: not ours to judge
    (state / "devkit.json").write_text("{}")
    assert "prepare has not finished val" in incomplete_reason(root, None, "val")
    (state / "units" / "md5-val.failed").write_text(json.dumps({"unit": "md5-val", "error": "md5 mismatch\nfor x"}))
    (state / "units" / "train-0000-of-0001.failed").write_text(json.dumps({"error": "not val's"}))
    (state / "finalize-val.failed").write_text("not json")
    reason = incomplete_reason(root, None, "val")
    assert reason.startswith("prepare failed for val: ") and "md5-val: md5 mismatch for x" in reason
    assert "finalize-val: failed (its note is unreadable)" in reason and "not val's" not in reason
    (state / "complete-val.json").write_text("{}")
    assert incomplete_reason(root, None, "val") is None
    assert "train-0000-of-0001: not val's" in incomplete_reason(root, None, "train")


def test_the_roots_own_state_folder_counts_too(tmp_path):
    root = tmp_path / "root"
    (root / ".launcher").mkdir(parents=True)
    (root / ".launcher" / "devkit.json").write_text("{}")
    (root / ".launcher" / "complete-train.json").write_text("{}")
    moved = tmp_path / "moved"
    assert state_folders(root, moved) == [moved, root / ".launcher"]
    assert state_folders(root, root / ".launcher") == [root / ".launcher"]
    assert incomplete_reason(root, moved, "train") is None
    assert "no " + str(root / ".launcher" / "complete-val.json") in incomplete_reason(root, moved, "val")
