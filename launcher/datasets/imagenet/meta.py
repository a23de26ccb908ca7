"""What an ImageNet root must hold, for verify: the expected classes (from the devkit, our cached
devkit.json, or meta.bin and the folders), and torchvision's meta.bin read within bounds and checked
against them."""

from __future__ import annotations

from pathlib import Path

from launcher.check.imagebounds import Limits, Refused, check_regular
from launcher.check.images import DEFAULT_LIMITS
from launcher.check.request import VerifyRequest
from launcher.check.structure import read_state_json
from launcher.core.errors import LauncherError

# what verify takes from a meta.bin without a devkit or dataset.expected counts to bound it (ImageNet-21k
# has 21841 classes), and at most a wnid's or class name's characters and a class's names
META_MAX_CLASSES = 100_000


META_MAX_VAL = 1_000_000


META_MAX_WNID_CHARS = 64


META_MAX_CHARS = 1000


META_MAX_NAMES = 100


def load_meta(root: Path, limits: Limits = DEFAULT_LIMITS) -> tuple[dict, list]:
    """meta.bin loaded as torchvision's `datasets.imagenet.load_meta_file` does (the file exists,
    then `torch.load(path, weights_only=True)`), without importing torch or torchvision for a
    meta.bin of plain values (about 2 s of start-up). tests/test_verify.py checks both agree.
    Only a regular file of at most limits.max_file_bytes is read."""
    from launcher.datasets.imagenet import torchfile

    path = root / "meta.bin"
    if not path.is_file():
        raise RuntimeError(f"The meta file {path} is not present in the root directory or is corrupted.")
    check_regular(str(path), limits)
    return torchfile.load(path)


def meta_bounds(wnid_to_classes: dict, val_wnids: list, most: dict[str, int]) -> str | None:
    """What in a loaded meta.bin exceeds what verify takes from it (None: nothing): at most
    most["classes"] classes and most["val"] val entries, wnids strings of at most META_MAX_WNID_CHARS
    characters, class names of at most META_MAX_CHARS, at most META_MAX_NAMES names a class. A few
    kilobytes of pickle can refer to one string a million times; this is checked before anything is
    built from it (the run's expected.json holds val_wnids)."""
    if len(wnid_to_classes) > most["classes"]:
        return f"lists {len(wnid_to_classes)} classes, more than {most['classes']} ({most['by']})"
    if len(val_wnids) > most["val"]:
        return f"val_wnids has {len(val_wnids)} entries, more than {most['val']} ({most['by']})"
    for wnid, names in wnid_to_classes.items():
        if not isinstance(wnid, str) or len(wnid) > META_MAX_WNID_CHARS:
            return f"a wnid is not a string of at most {META_MAX_WNID_CHARS} characters: {str(wnid)[:40]!r}"
        if not isinstance(names, (tuple, list)) or len(names) > META_MAX_NAMES:
            return f"the names of {wnid} are not a tuple of at most {META_MAX_NAMES} strings"
        if not all(isinstance(n, str) and len(n) <= META_MAX_CHARS for n in names):
            return f"a name of {wnid} is not a string of at most {META_MAX_CHARS} characters"
    if not all(isinstance(w, str) and len(w) <= META_MAX_WNID_CHARS for w in val_wnids):
        return f"a val_wnids entry is not a string of at most {META_MAX_WNID_CHARS} characters"
    return None


def meta_most(expected: dict, req_expected: dict) -> dict:
    """The largest class and val counts meta.bin may hold: twice those of dataset.expected, else of
    the devkit (a meta.bin of another devkit is still read and compared), else META_MAX_CLASSES and
    META_MAX_VAL."""
    if req_expected.get("classes") and req_expected.get("val"):
        classes, val = 2 * req_expected["classes"], 2 * req_expected["val"]
        return {"classes": classes, "val": val, "by": "twice dataset.expected's counts"}
    if expected.get("wnid_to_classes") and expected.get("val_wnids") is not None:
        classes, val = 2 * len(expected["wnid_to_classes"]), 2 * len(expected["val_wnids"])
        return {"classes": classes, "val": val, "by": "twice the devkit's counts"}
    return {"classes": META_MAX_CLASSES, "val": META_MAX_VAL, "by": "verify's bound without a devkit or counts"}


def expected_layout(req: VerifyRequest, findings: list) -> dict:
    """What the root should hold: {source, wnid_to_classes, num_train_images, val_wnids} from the
    devkit archive (our cached devkit.json when it describes the same file), else devkit.json alone,
    else nothing (meta.bin and the folders decide)."""
    from launcher.archive.index import same_archive
    from launcher.datasets.imagenet.devkit import parse_devkit

    cached = read_state_json(req.layout.devkit_file, findings)
    if cached is not None and not (isinstance(cached, dict) and isinstance(cached.get("devkit"), dict)):
        findings.append([str(req.layout.devkit_file), "devkit", "not a devkit cache of launcher; delete it"])
        cached = None
    path = req.find_archive("devkit")
    kit, source = None, None
    if path is not None:
        if cached and same_archive(cached, path):
            kit, source = cached["devkit"], f"devkit {path} (cached in {req.layout.devkit_file})"
        else:
            try:
                kit = parse_devkit(
                    path,
                    req.devkit_meta,
                    req.devkit_ground_truth,
                    req.devkit_max_bytes,
                    wnid_pattern=req.wnid_pattern,
                    id_pattern=req.ilsvrc_id_pattern,
                ).to_json()
                source = f"devkit {path}"
            except LauncherError as err:
                findings.append([str(path), "devkit", str(err)])
    if kit is None and cached:
        kit, source = cached["devkit"], f"{req.layout.devkit_file} (devkit archive not found)"
    if kit is None:
        return {"source": None, "by": None}
    return {"source": source, "by": "the devkit", **kit}


def check_meta(
    root: Path,
    expected: dict,
    classes: int | None,
    findings: list,
    limits: Limits = DEFAULT_LIMITS,
    req_expected: dict | None = None,
) -> dict | None:
    """meta.bin loads with torchvision's load_meta_file, has the right shape, stays within the counts
    and string sizes of meta_bounds and agrees with the devkit; returns {wnid_to_classes, val_wnids}
    when it loads."""
    rel = "meta.bin"
    if not (root / "meta.bin").is_file():
        why = f"missing: torchvision.datasets.ImageNet({str(root)!r}) needs it. Run `launcher prepare` (it "
        findings.append([rel, "meta", why + "writes meta.bin), or put the devkit in the root for torchvision"])
        return None
    try:
        wnid_to_classes, val_wnids = load_meta(root, limits)
    except Refused as err:
        findings.append([rel, "meta", str(err)])
        return None
    except Exception as err:  # torch raises many kinds for a file that is not its own
        findings.append(
            [rel, "meta", f"it does not load as torchvision's load_meta_file loads it: {type(err).__name__}: {err}"]
        )
        return None
    if not isinstance(wnid_to_classes, dict) or not isinstance(val_wnids, list):
        findings.append([rel, "meta", "not (wnid_to_classes: dict, val_wnids: list) as torchvision writes it"])
        return None
    if why := meta_bounds(wnid_to_classes, val_wnids, meta_most(expected, req_expected or {"classes": classes})):
        findings.append([rel, "meta", f"{why}; not used. Run `launcher prepare` on a new root, or delete meta.bin"])
        return None
    meta = {"wnid_to_classes": {w: list(c) for w, c in wnid_to_classes.items()}, "val_wnids": list(val_wnids)}
    if classes is not None and len(wnid_to_classes) != classes:
        findings.append([rel, "meta", f"lists {len(wnid_to_classes)} classes, dataset.expected.classes is {classes}"])
    if stray := sorted({w for w in val_wnids if w not in wnid_to_classes}):
        findings.append([rel, "meta", f"val_wnids name {len(stray)} classes it does not list: {', '.join(stray[:5])}"])
    if expected.get("source"):
        findings.extend(
            [rel, "meta", f"{p}; the devkit is {expected['source']}"] for p in meta_vs_devkit(meta, expected)
        )
    return meta


def meta_vs_devkit(meta: dict, kit: dict) -> list[str]:
    """How meta.bin differs from the devkit (empty when it agrees)."""
    problems = []
    ours, theirs = set(meta["wnid_to_classes"]), set(kit["wnid_to_classes"])
    if ours != theirs:
        problems.append(
            f"meta.bin is from another devkit: it lists {len(ours)} classes, the devkit {len(theirs)}; "
            f"{len(theirs - ours)} devkit classes missing (e.g. {', '.join(sorted(theirs - ours)[:3]) or '-'}), "
            f"{len(ours - theirs)} not in the devkit (e.g. {', '.join(sorted(ours - theirs)[:3]) or '-'})"
        )
    else:
        names = [w for w in sorted(ours) if list(meta["wnid_to_classes"][w]) != list(kit["wnid_to_classes"][w])]
        if names:
            problems.append(f"class names differ from the devkit's for {len(names)} classes (e.g. {names[0]})")
    mv, kv = meta["val_wnids"], kit["val_wnids"]
    if len(mv) != len(kv):
        problems.append(f"val_wnids has {len(mv)} entries, the devkit's ground truth {len(kv)}")
    elif (first := next((i for i, (a, b) in enumerate(zip(mv, kv)) if a != b), None)) is not None:
        problems.append(f"val_wnids differs from the devkit's ground truth from val image {first + 1} on")
    return problems
