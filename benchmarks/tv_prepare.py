"""torchvision's own ImageNet preparation as a user runs it: the baseline of the prepare rows.

    python benchmarks/tv_prepare.py ROOT devkit,train,val KEY=MD5 ...

ROOT holds the archives (torchvision looks for them there). The md5s of torchvision's
ARCHIVE_META are replaced by those given (synthetic archives), so torchvision checks the whole
archive's md5 as it does for the real one, then runs parse_devkit_archive, parse_train_archive
and/or parse_val_archive, in that order.
"""

from __future__ import annotations

import sys

import torchvision.datasets.imagenet as tv


def main() -> int:
    root, steps, *md5s = sys.argv[1:]
    for item in md5s:
        key, _, md5 = item.partition("=")
        tv.ARCHIVE_META[key] = (tv.ARCHIVE_META[key][0], md5)
    for step in steps.split(","):
        {"devkit": tv.parse_devkit_archive, "train": tv.parse_train_archive, "val": tv.parse_val_archive}[step](root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
