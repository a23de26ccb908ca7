"""safefs: outputs made relative to opened folders, never through a link, FIFO or foreign file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher.archive import safedir, safefs
from launcher.archive.extract import Output


@pytest.fixture
def tree(tmp_path):
    """An anchored root, and a target outside it that no call may touch."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    (outside / "folder").mkdir(parents=True)
    (outside / "file").write_bytes(b"keep")
    safedir.trust(root)
    return root, outside


def test_a_link_in_the_path_is_refused_naming_it(tree):
    root, outside = tree
    (root / "train").symlink_to(outside / "folder")
    with pytest.raises(safedir.UnsafePath, match=f"remove the link {root / 'train'}"):
        safefs.write_atomic(root / "train" / "n1" / "x.json", b"{}")
    assert os.listdir(outside / "folder") == []


def test_replace_unlinks_the_link_never_its_target(tree):
    root, outside = tree
    (root / "train").symlink_to(outside / "folder")
    safefs.make_dirs(root / "train" / "n1", Output(), replace=True)
    assert (root / "train").is_dir() and not (root / "train").is_symlink()
    assert (outside / "folder").is_dir() and os.listdir(outside / "folder") == []


def test_a_link_at_the_file_or_its_temporary_is_replaced_not_followed(tree):
    root, outside = tree
    (root / "meta.bin").symlink_to(outside / "file")
    (root / "meta.bin.part").symlink_to(outside / "file")
    safefs.write_atomic(root / "meta.bin", b"new", temp="meta.bin.part")
    assert (root / "meta.bin").read_bytes() == b"new" and not (root / "meta.bin").is_symlink()
    assert not os.path.lexists(root / "meta.bin.part") and (outside / "file").read_bytes() == b"keep"


def test_new_files_are_exclusive(tree):
    root, outside = tree
    (root / "x.JPEG").symlink_to(outside / "file")
    with safedir.Dir.of(root) as folder, pytest.raises(Exception, match="x.JPEG"):
        folder.write_new("x.JPEG", b"data", Output())
    assert (outside / "file").read_bytes() == b"keep"


def test_state_is_read_without_links_and_fifos_never_block(tree):
    root, outside = tree
    (root / "identity.json").symlink_to(outside / "file")
    os.mkfifo(root / "ledger.jsonl")
    with pytest.raises(safedir.UnsafePath, match="symbolic link"):
        safefs.read(root / "identity.json")
    with pytest.raises(safedir.UnsafePath, match="FIFO"):
        safefs.read(root / "ledger.jsonl")
    with pytest.raises(safedir.UnsafePath, match="FIFO"):
        safefs.append(root / "ledger.jsonl", b"line\n")
    assert safefs.read(root / "absent.json") is None


def test_locks_refuse_links_and_force_replaces_them(tree):
    root, outside = tree
    (root / "prepare.lock").symlink_to(outside / "file")
    with pytest.raises(safedir.UnsafePath, match="remove the link"):
        safefs.open_lock(root / "prepare.lock")
    os.close(safefs.open_lock(root / "prepare.lock", replace=True))
    assert (root / "prepare.lock").is_file() and (outside / "file").read_bytes() == b"keep"


def test_remove_tree_removes_a_link_itself_and_walks_real_folders_by_descriptor(tree):
    root, outside = tree
    (root / "train").symlink_to(outside / "folder")
    (root / "val" / "n1").mkdir(parents=True)
    (root / "val" / "n1" / "escape").symlink_to(outside / "folder")
    safefs.remove_tree(root / "train")
    safefs.remove_tree(root / "val")
    assert not os.path.lexists(root / "train") and not os.path.lexists(root / "val")
    assert (outside / "folder").is_dir() and (outside / "file").read_bytes() == b"keep"


def test_a_file_where_a_folder_belongs_is_refused(tree):
    root, _ = tree
    (root / "train").write_bytes(b"x")
    with pytest.raises(safedir.UnsafePath, match=f"{root / 'train'} is a file where launcher writes a folder"):
        safefs.make_dirs(root / "train" / "n1", Output(), replace=True)


def test_paths_under_no_anchor_open_only_their_last_component_without_links(tmp_path):
    base, parts = safedir.split_anchor(tmp_path / "elsewhere" / "x.json")
    assert base == str(tmp_path / "elsewhere") and parts == ["x.json"]
    assert safedir.split_anchor(Path("/nonexistent-anchor/a/b"))[1] == ["b"]
