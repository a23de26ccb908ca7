"""ImageNet's rules for `launcher verify` (launcher.check asks them through the adapter's
verify_rules()): the expected classes from the devkit (or meta.bin), meta.bin checked, the top level
and the split folders looked at here, and shards of WNID class folders, each checked file by file by
launcher.check.shard.check_class."""

from __future__ import annotations

import os
from pathlib import Path

from launcher.check.plan import RootPlan, RootPlanning, shard_id, shard_unit
from launcher.check.request import VerifyRequest
from launcher.check.structure import check_structure, check_top, list_split, read_state_manifest
from launcher.core import completion, plan
from launcher.core.layout import write_json
from launcher.core.units import Unit
from launcher.datasets.imagenet.meta import check_meta, expected_layout


def plan_root(req: VerifyRequest, run_dir: Path, how: RootPlanning) -> RootPlan:
    """meta.bin against the devkit, the top level, then per split its folders and manifest, and the
    shards of its class folders; the expected layout written to the run's expected.json."""
    layout, findings = req.layout, how.findings
    exp = expected_layout(req, findings)
    meta = check_meta(layout.root, exp, req.expected.get("classes"), findings, req.limits, req.expected)
    if not exp.get("source") and meta is not None:
        exp = {"source": "meta.bin (no devkit found)", "by": "meta.bin", **meta, "num_train_images": None}
    write_json(run_dir / "expected.json", {k: exp.get(k) for k in ("source", "val_wnids", "num_train_images")})
    check_top(req, findings, how.notes)
    shards, totals = plan_splits(req, exp, findings, how.n_shards, run_dir, how.min_bytes, how.processes)
    return RootPlan(
        shards,
        totals,
        exp.get("source"),
        len(exp.get("wnid_to_classes") or {}) or None,
        len(meta["val_wnids"]) if meta else None,
        "meta",
    )


def estimate_bytes(folder: Path, classes: list[str], samples: int = 16) -> float:
    """Mean file size from a few class folders (for progress and balance when there is no manifest)."""
    sizes = []
    for wnid in classes[:: max(1, len(classes) // samples)][:samples]:
        try:
            with os.scandir(folder / wnid) as it:
                for k, entry in enumerate(it):
                    if k >= 8:
                        break
                    sizes.append(entry.stat().st_size)
        except OSError:
            continue
    return sum(sizes) / len(sizes) if sizes else 110_000.0


def plan_split(
    req: VerifyRequest,
    split: str,
    todo: list[str],
    exp: dict,
    manifest: dict | None,
    n_shards: int,
    run_dir: Path,
    min_bytes: int = 0,
    processes: int = 1,
) -> list[Unit]:
    """Shards of the class folders of `split`, balanced by bytes; each shard's input is a JSON file."""
    files = files_by_class(manifest) if manifest is not None else {}
    counts = _class_counts(exp, split)
    mean = estimate_bytes(req.layout.root / split, todo) if manifest is None else 0
    weights = [
        sum(s for _, s in files.get(w, [])) if manifest is not None else int(mean * counts.get(w, 1)) for w in todo
    ]
    if min_bytes and not req.shards:  # where each job costs start-up (SLURM), no tiny shards
        n_shards = min(n_shards, max(1, -(-sum(weights) // min_bytes)))
    groups = plan.balanced_groups(weights, n_shards)
    units = []
    for i, group in enumerate(groups):
        uid = shard_id(split, req.level, i, len(groups))
        classes = [
            {
                "wnid": todo[j],
                "count": counts.get(todo[j]) if split == "train" and counts else None,
                "files": files.get(todo[j], []) if manifest is not None else None,
            }
            for j in group
        ]
        units.append(shard_unit(req, split, uid, classes, sum(weights[j] for j in group), run_dir, processes))
    return units


def files_by_class(manifest: dict) -> dict[str, list]:
    """wnid -> [[name, size], ...] of a split's manifest."""
    files: dict[str, list] = {}
    for path, size in zip(manifest["paths"], manifest["sizes"]):
        wnid, name = path.split("/", 1)
        files.setdefault(wnid, []).append([name, size])
    return files


def manifest_findings(split: str, manifest: dict, exp: dict, findings: list) -> None:
    """The manifest (our roots only) against the devkit."""
    rel = f"manifest-{split}.json"
    if exp.get("wnid_to_classes") and set(manifest["wnids"]) != set(exp["wnid_to_classes"]):
        findings.append([rel, "structure", "the manifest lists other classes than the devkit; run prepare again"])
    if split == "train" and exp.get("num_train_images"):
        per: dict[str, int] = {}
        for path in manifest["paths"]:
            w = path.split("/", 1)[0]
            per[w] = per.get(w, 0) + 1
        bad = sorted(w for w, n in exp["num_train_images"].items() if per.get(w, 0) != n)
        if bad:
            e = f"e.g. {bad[0]}: {per.get(bad[0], 0)} vs {exp['num_train_images'][bad[0]]}"
            findings.append([rel, "structure", f"its counts differ from the devkit's for {len(bad)} classes ({e})"])


def plan_splits(
    req: VerifyRequest, exp: dict, findings: list, n_shards: int, run_dir: Path, min_bytes: int, processes: int
) -> tuple[list[Unit], dict[str, dict]]:
    """Per split: prepare's completion, the folders and the manifest checked here (findings), then the
    shards of the class folders to check; and the totals the report compares with."""
    layout = req.layout
    shards: list[Unit] = []
    totals: dict[str, dict] = {}
    for split in req.splits:
        if reason := completion.incomplete_reason(layout.root, layout.state_dir, split):
            findings.append([split, "prepare", f"{reason}; run `launcher prepare` again after fixing the cause"])
        present = list_split(layout.root, split, findings)
        manifest = read_state_manifest(layout.manifest_file(split), findings)
        if manifest is not None:
            manifest_findings(split, manifest, exp, findings)
        source = exp.get("source") or "the folders (no devkit, no meta.bin)"
        classes = sorted(exp["wnid_to_classes"]) if exp.get("wnid_to_classes") else list(present or [])
        counts = _class_counts(exp, split)
        todo = check_structure(split, present, classes, counts, source, findings) if present is not None else []
        shards += plan_split(req, split, todo, exp, manifest, n_shards, run_dir, min_bytes, processes)
        totals[split] = {
            "classes": len(classes),
            "announced": _announced(exp, split),
            "announced_by": exp.get("by"),
            "expected": req.expected.get(split),
            "manifest": str(layout.manifest_file(split)) if manifest is not None else None,
        }
    return shards, totals


def _class_counts(exp: dict, split: str) -> dict[str, int]:
    """wnid -> images the devkit (or meta.bin, for val) announces; empty when unknown."""
    if split == "train":
        return dict(exp.get("num_train_images") or {})
    counts: dict[str, int] = {}
    for w in exp.get("val_wnids") or []:
        counts[w] = counts.get(w, 0) + 1
    return counts


def _announced(exp: dict, split: str) -> int | None:
    if split == "train" and exp.get("num_train_images"):
        return sum(exp["num_train_images"].values())
    if split == "val" and exp.get("val_wnids") is not None:
        return len(exp["val_wnids"])
    return None
