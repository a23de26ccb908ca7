"""What a name read from a file list must be before it becomes a path: a `<class path>/<file>` entry
(the *tree* shape) or a bare `<file>` (a flat archive labelled by a list), each part matching its
pattern in full, in ASCII, and never empty, `.`, `..`, NUL or over 255 bytes. Shared by the shapes that
index against a list (launcher.sources.tree, flat_labels) and by the adapters that parse the lists."""

from __future__ import annotations

import re


def compile_ascii(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.ASCII)


def path_problem(path: str) -> str | None:
    """Why `path` (a class path or list entry) cannot become a path below the root, or None."""
    parts = path.lstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "a path without empty, '.' or '..' parts"
    if "\0" in path or any(len(p.encode()) > 255 for p in parts):
        return "path parts without NUL, at most 255 bytes each"
    return None


def entry_problem(entry: str, class_re: re.Pattern | None, image_re: re.Pattern) -> str | None:
    """Why a list entry is not `<class path>/<image>` (tree, `class_re`) or `<image>` (flat), or None."""
    if class_re is None:
        ok = "/" not in entry and bool(image_re.fullmatch(entry))
        return None if ok else f"an image name matching {image_re.pattern!r}"
    cls, slash, image = entry.rpartition("/")
    if not slash or not class_re.fullmatch(cls) or not image_re.fullmatch(image):
        return f"'<class path>/<image>' matching {class_re.pattern!r} and {image_re.pattern!r}"
    return path_problem(entry)
