"""Places365-Standard's rules for `launcher verify` (launcher.check asks them through the adapter's
verify_rules()).

    expected labels: the file-list archive (our cached copy in devkit.json while it is unchanged),
      else the cache alone, else the root's own label files (then they are not compared)
    -> the root's three label files equal the archive's (bounded reads of regular files, no links)
    -> the top level: the label files, the two images folders, launcher's own entries; the rest noted
    -> per split: prepare's completion, the manifest against its file list, the folders the list
       names (train: data_large_standard/<letter>/<class>[/<subclass>]/, listed here down to the class
       folders; val: val_large/, flat, listed here) and shards of them as units: each class folder is
       listed by its unit (extra and missing files), every listed image checked at verify.level
       with launcher.check.shard.check_images (verify.fix re-encodes as for ImageNet).

Every name a list gives was matched against dataset.patterns (ASCII) when the list was parsed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from launcher.archive.index import same_archive
from launcher.check.imagebounds import Limits, Refused, open_regular, read_fd
from launcher.check.plan import RootPlan, RootPlanning, shard_id, shard_unit
from launcher.check.request import VerifyRequest
from launcher.check.structure import read_state_json
from launcher.core import completion, plan
from launcher.core.errors import LauncherError
from launcher.core.layout import ROOT_ID_FILE, write_json
from launcher.core.manifest import VERSION as MANIFEST_VERSION
from launcher.datasets.places365.labels import Labels, ListFiles, Patterns, parse_labels, read_labels

# what a verify unit of a class folder weighs when there is no manifest (a Places365 large image's mean size)
MEAN_IMAGE_BYTES = 110_000


def names_of(req: VerifyRequest) -> ListFiles:
    members = req.labels["members"]
    return ListFiles(members["categories"], members["train"], members["val"])


def patterns_of(req: VerifyRequest) -> Patterns:
    p = req.patterns
    return Patterns(p["class_path"], p["train_image"], p["val_image"], p["label"])


# ---------------------------------------------------------------- the labels


def expected_labels(req: VerifyRequest, findings: list) -> tuple[Labels | None, dict | None, str | None]:
    """(labels, the label files' bytes the root must hold, where they came from): the file-list
    archive, our cache of it, or the root's own files (then no bytes to compare with)."""
    names, patterns = names_of(req), patterns_of(req)
    cache_path = req.layout.devkit_file
    cached = read_state_json(cache_path, findings)
    kit = cached.get("devkit") if isinstance(cached, dict) and isinstance(cached.get("devkit"), dict) else None
    archive = req.find_archive(req.labels_key)
    if archive is not None and not (kit is not None and same_archive(cached, archive)):
        try:
            files, labels = read_labels(str(archive), names, patterns)
            return labels, files, f"the file lists of {archive}"
        except LauncherError as err:
            findings.append([str(archive), "labels", str(err)])
    if kit is not None:
        where = f"{archive} (cached in {cache_path})" if archive is not None else f"{cache_path} (no archive found)"
        try:
            files = {name: kit["files"][name].encode("ascii") for name in names.names()}
            return parse_labels(files, names, patterns, source=str(cache_path)), files, f"the file lists of {where}"
        except (KeyError, TypeError, AttributeError, UnicodeEncodeError):
            findings.append([str(cache_path), "labels", "not a file-list cache of launcher; delete it"])
        except LauncherError as err:
            findings.append([str(cache_path), "labels", str(err)])
    return labels_of_root(req, findings), None, None


def labels_of_root(req: VerifyRequest, findings: list) -> Labels | None:
    """The root's own label files parsed with every check (nothing else says what it should hold)."""
    names = names_of(req)
    files = {name: root_file(req, name, findings) for name in names.names()}
    if any(data is None for data in files.values()):
        return None
    try:
        return parse_labels(files, names, patterns_of(req), source=str(req.layout.root))
    except LauncherError as err:
        findings.append([names.categories, "labels", str(err)])
        return None


def root_file(req: VerifyRequest, name: str, findings: list) -> bytes | None:
    """A label file of the root: a regular file (no link) of at most dataset.labels.max_bytes, or a
    finding and None."""
    path = req.layout.root / name
    try:
        fd, size = open_regular(str(path), Limits(max_file_bytes=req.labels["max_bytes"]))
        try:
            return bytes(read_fd(fd, size))
        finally:
            os.close(fd)
    except FileNotFoundError:
        findings.append([name, "labels", f"missing: torchvision's Places365 reads it. {restore(req, name)}"])
    except Refused as err:
        findings.append([name, "labels", f"{str(err).split(';')[0]}; not read. {restore(req, name)}"])
    except OSError as err:
        findings.append([name, "labels", f"cannot read it: {err.strerror or err}. {restore(req, name)}"])
    return None


def restore(req: VerifyRequest, name: str) -> str:
    """How to put a label file back as the archive holds it (the one there moved aside first)."""
    archive = req.find_archive(req.labels_key) or req.archive_dir / req.archives[req.labels_key][0]
    return f"Move it aside, then extract it again: tar -xf {archive} -C {req.layout.root} {name}"


def check_label_files(req: VerifyRequest, files: dict[str, bytes], source: str, findings: list) -> None:
    """Each label file of the root holds the bytes of the archive's (torchvision reads labels from them)."""
    for name, want in files.items():
        have = root_file(req, name, findings)
        if have is not None and have != want:
            why = f"differs from the {name} of {source} ({len(have):,} bytes, the archive's {len(want):,})"
            fix = restore(req, name)
            findings.append([name, "labels", f"{why}: torchvision's Places365 would read other labels. {fix}"])


# ---------------------------------------------------------------- the top level


def check_top(req: VerifyRequest, findings: list, notes: list) -> None:
    """The root's top level: no leftovers of an interrupted prepare; anything unknown is noted."""
    layout = req.layout
    known = {*names_of(req).names(), *(folder for _, folder in layout.folders), ".partial", ROOT_ID_FILE}
    known |= {name for name, _ in req.archives.values()}
    with contextlib.suppress(ValueError, IndexError):  # a state folder outside the root
        known.add(layout.state_dir.relative_to(layout.root).parts[0])
    for entry in sorted(os.scandir(layout.root), key=lambda e: e.name):
        if entry.name in known:
            continue
        if entry.name.endswith(".part"):
            findings.append([entry.name, "structure", "temporary file of an interrupted prepare; delete it"])
        else:
            notes.append([entry.name, "top-level", "not part of a torchvision Places365 root (torchvision ignores it)"])
    if layout.partial_dir.is_dir():
        for dirpath, _, files in os.walk(layout.partial_dir):
            for name in sorted(files):
                rel = os.path.relpath(os.path.join(dirpath, name), layout.root)
                why = "leftover of an interrupted prepare: run `launcher prepare` again, "
                why += f"or delete {layout.partial_dir}"
                findings.append([rel, "structure", why])


# ---------------------------------------------------------------- the splits


def read_sizes(req: VerifyRequest, split: str, listed: dict[str, int], findings: list) -> dict[str, int] | None:
    """path below the images folder -> size, from prepare's manifest of the split when it has the
    shape prepare writes and names the files the list names; else None (a finding says why)."""
    path = req.layout.manifest_file(split)
    manifest = read_state_json(path, findings)
    if manifest is None:
        return None
    paths, sizes = (manifest.get("paths"), manifest.get("sizes")) if isinstance(manifest, dict) else (None, None)
    shaped = (
        isinstance(manifest, dict)
        and manifest.get("version") == MANIFEST_VERSION
        and isinstance(paths, list)
        and isinstance(sizes, list)
        and len(paths) == len(sizes)
        and all(isinstance(p, str) for p in paths)
        and all(type(n) is int and n >= 0 for n in sizes)
    )
    if not shaped:
        findings.append([str(path), "structure", "not a manifest of launcher; not read. Delete it and run prepare"])
        return None
    if set(paths) != set(listed):
        why = f"names other files than {listed_file(req, split)}; not used. Delete it and run prepare"
        findings.append([str(path), "structure", why])
        return None
    return dict(zip(paths, sizes))


def listed_file(req: VerifyRequest, split: str) -> str:
    return req.labels["members"][split]


def by_folder(listed: dict[str, int], sizes: dict[str, int] | None) -> dict[str, list[list]]:
    """folder below the images folder ("" for a flat split) -> [[name, size or None], ...] of the list."""
    out: dict[str, list[list]] = {}
    for rel in sorted(listed):
        folder, _, name = rel.rpartition("/")
        out.setdefault(folder, []).append([name, sizes.get(rel) if sizes is not None else None])
    return out


def inner_folders(folders: set[str]) -> set[str]:
    """The folders above the class folders ("" the images folder itself): letters, parents of subclasses."""
    inner = {""}
    for folder in folders:
        parts = folder.split("/")
        inner |= {"/".join(parts[:k]) for k in range(1, len(parts))}
    return inner


def children(folders: set[str], parent: str) -> set[str]:
    """The names of the folders of `folders` right below `parent`."""
    prefix = f"{parent}/" if parent else ""
    return {f[len(prefix) :].split("/", 1)[0] for f in folders if f.startswith(prefix) and f != parent}


def check_tree(req: VerifyRequest, split: str, folders: set[str], findings: list) -> set[str]:
    """The folders above the class folders listed: each holds only expected folders (files, other
    folders, temporaries are findings); returns the class folders there are (missing ones are findings)."""
    base = req.layout.split_dir(split)
    inner = inner_folders(folders)
    expected = folders | inner
    present = {""}
    for parent in sorted(inner - folders, key=lambda f: (f.count("/"), f)):
        if parent not in present:
            continue
        want = children(expected, parent)
        for entry in sorted(os.scandir(base / parent), key=lambda e: e.name):
            rel = f"{base.name}/{parent}/{entry.name}" if parent else f"{base.name}/{entry.name}"
            child = f"{parent}/{entry.name}" if parent else entry.name
            if entry.is_dir(follow_symlinks=False) and entry.name in want:
                present.add(child)
            elif entry.name.endswith(".part"):
                findings.append([rel, "structure", "temporary file of an interrupted prepare; delete it"])
            else:
                what = "a folder of no class" if entry.is_dir(follow_symlinks=False) else "a stray entry"
                why = f"{what} of {names_of(req).categories} where only class folders belong; move it out"
                findings.append([rel, "structure", why])
    for folder in sorted(folders - present):
        if folder.rpartition("/")[0] in present or "/" not in folder:
            why = f"class folder missing; restore it from the archives (`launcher prepare split={split}`, new root)"
            findings.append([f"{base.name}/{folder}", "structure", why])
    return folders & present


def flat_items(req: VerifyRequest, split: str, files: list[list], n_shards: int, findings: list) -> list[dict]:
    """A flat split listed here: extra and missing files are findings; the present listed files in
    n_shards items, each checked by its unit without listing the folder again."""
    base = req.layout.split_dir(split)
    wanted = {name for name, _ in files}
    present = set()
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        rel = f"{base.name}/{entry.name}"
        if entry.name in wanted and not entry.is_dir(follow_symlinks=False):
            present.add(entry.name)
        elif entry.name.endswith(".part"):
            findings.append([rel, "structure", "temporary file of an interrupted prepare or verify.fix; delete it"])
        else:
            what = "a folder" if entry.is_dir(follow_symlinks=False) else "extra file"
            findings.append([rel, "structure", f"{what}: not in {listed_file(req, split)}; move it out"])
    for name, size in files:
        if name not in present:
            known = f" ({size} bytes)" if size is not None else ""
            why = f"missing: {listed_file(req, split)} names it{known}; restore it from the archives"
            findings.append([f"{base.name}/{name}", "exists", why])
    kept = [f for f in files if f[0] in present]
    step = max(1, -(-len(kept) // max(1, n_shards)))
    return [{"wnid": "", "files": kept[i : i + step], "list": False} for i in range(0, len(kept), step)]


def tree_items(req: VerifyRequest, split: str, grouped: dict[str, list[list]], findings: list) -> list[dict]:
    """One item per class folder there is, listed by its unit (subclass folders below it allowed)."""
    folders = set(grouped)
    present = check_tree(req, split, folders, findings)
    return [
        {"wnid": folder, "files": grouped[folder], "list": True, "subdirs": sorted(children(folders, folder))}
        for folder in sorted(present)
    ]


def weight(item: dict) -> int:
    return sum(size if size is not None else MEAN_IMAGE_BYTES for _, size in item["files"])


def plan_split(req: VerifyRequest, split: str, labels: Labels, run_dir: Path, how: RootPlanning) -> list:
    """The shard units of one split's items, balanced by bytes."""
    base = req.layout.split_dir(split)
    if not base.is_dir():
        why = f"missing: {base} is not a folder. Run `launcher prepare split={split}` (into a new root)"
        how.findings.append([base.name, "structure", why])
        return []
    listed = {"train": labels.train, "val": labels.val}[split].relpaths()
    grouped = by_folder(listed, read_sizes(req, split, listed, how.findings))
    if set(grouped) == {""}:
        items = flat_items(req, split, grouped[""], how.n_shards, how.findings)
    else:
        items = tree_items(req, split, grouped, how.findings)
    weights = [weight(item) for item in items]
    n_shards = how.n_shards
    if how.min_bytes and not req.shards:  # where each job costs start-up (SLURM), no tiny shards
        n_shards = min(n_shards, max(1, -(-sum(weights) // how.min_bytes)))
    groups = plan.balanced_groups(weights, n_shards) if items else []
    extra = {"rules": req.adapter, "extra": {"folder": base.name, "list": listed_file(req, split)}}
    return [
        shard_unit(
            req,
            split,
            shard_id(split, req.level, i, len(groups)),
            [items[j] for j in group],
            sum(weights[j] for j in group),
            run_dir,
            how.processes,
            extra,
        )
        for i, group in enumerate(groups)
    ]


def plan_root(req: VerifyRequest, run_dir: Path, how: RootPlanning) -> RootPlan:
    """The label files against the archive's, the top level, then per split its completion, manifest,
    folders and the shards of its images."""
    findings = how.findings
    labels, files, source = expected_labels(req, findings)
    if files is not None:
        check_label_files(req, files, source, findings)
    check_top(req, findings, how.notes)
    write_json(run_dir / "expected.json", {"source": source, "val_wnids": None, "num_train_images": None})
    shards, totals = [], {}
    for split in req.splits:
        if reason := completion.incomplete_reason(req.layout.root, req.layout.state_dir, split):
            findings.append([split, "prepare", f"{reason}; run `launcher prepare` again after fixing the cause"])
        if labels is not None:
            shards += plan_split(req, split, labels, run_dir, how)
        entries = {"train": labels.train, "val": labels.val}[split].entries if labels is not None else None
        manifest = req.layout.manifest_file(split)
        totals[split] = {
            "classes": len(labels.categories.names) if labels is not None else 0,
            "announced": len(entries) if entries is not None else None,
            "announced_by": listed_file(req, split),
            "expected": req.expected.get(split),
            "manifest": str(manifest) if manifest.is_file() else None,
        }
    classes = len(labels.categories.names) if labels is not None else None
    return RootPlan(shards, totals, source or "the root's own label files", classes, None, "labels")


# ---------------------------------------------------------------- a unit's item


def check_class(root: str, split: str, item: dict, level: str, ctx: dict) -> dict:
    """One item of a shard: a class folder listed (extra entries, missing images) or a part of a flat
    split; every image of it checked at `level` (and with verify.fix an odd one re-encoded).

    item: {"wnid": folder below the images folder ("" flat), "files": [[name, size or None], ...] the
           list names there, "list": whether to list the folder, "subdirs": class folders below it}
    ctx["extra"]: {"folder": the split's images folder in the root, "list": the label file naming them}
    """
    from launcher.check.shard import check_images

    images_dir, list_name = ctx["extra"]["folder"], ctx["extra"]["list"]
    rel = f"{images_dir}/{item['wnid']}" if item["wnid"] else images_dir
    failures: list = []
    out = {"wnid": item["wnid"], "images": 0, "checked": 0, "bytes": 0, "failures": failures, "notes": [], "fixed": []}

    def fail(name: str | None, check: str, reason: str) -> None:
        failures.append([f"{rel}/{name}" if name else rel, check, reason])

    sizes = {name: size for name, size in item["files"]}
    accepted = list(sizes)
    if item.get("list"):
        accepted = listed_entries(os.path.join(root, rel), sizes, set(item.get("subdirs", ())), list_name, fail)
    out["images"] = len(accepted)
    check_images(os.path.join(root, rel), rel, accepted, level, sizes, ctx, out, fail)
    return out


def listed_entries(folder: str, sizes: dict, subdirs: set[str], list_name: str, fail) -> list[str]:
    """The images of a class folder its list names (missing ones failed); every other entry failed:
    a folder of no class, a temporary, a file the list does not name."""
    try:
        with os.scandir(folder) as it:
            entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
    except OSError as err:
        fail(None, "structure", f"cannot list the class folder: {err.strerror or err}")
        return []
    accepted = []
    for name, is_dir in entries:
        if is_dir and name in subdirs:
            continue
        if is_dir:
            fail(name, "structure", "a folder of no class in a class folder; move it out")
        elif name.endswith(".part"):
            fail(name, "structure", "temporary file of an interrupted prepare or verify.fix; delete it")
        elif name in sizes:
            accepted.append(name)
        else:
            fail(name, "structure", f"extra file: not in {list_name}; move it out")
    present = set(accepted)
    for name, size in sizes.items():
        if name not in present:
            known = f" ({size} bytes)" if size is not None else ""
            fail(name, "exists", f"missing: {list_name} names it{known}; restore it from the archives")
    return accepted
