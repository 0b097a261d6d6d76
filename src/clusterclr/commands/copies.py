"""``cluster --copy-to DIR``: each image copied into ``DIR/cluster_NN/``, every one once, originals only read.

A copy is named by its path below the image folder, joined by ``__``
(``sub/IMG_1.jpg`` becomes ``sub__IMG_1.jpg``), keeping the name's bytes
as they are. Where that name is too long for a file system (nested folders
of long names) or is already taken (``a/b.png`` beside ``a__b.png``, or two
names that differ only in case, which a case-insensitive target would make
one), it keeps its extension and as much of its start as fits, plus ``~``
and eight hex digits of a hash of its path, so no copy overwrites another.

Copying is all or nothing: when a copy fails (disk full, a target that
refuses a name), the files and folders copied so far are removed, so the
same ``--copy-to`` can be given again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clusterclr.errors import UserError
from clusterclr.pathtext import path_text

NAME_MAX = 255  # bytes in one file name on common file systems (ext4, XFS, APFS, NTFS in UTF-16 units)


def inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_copy_target(target: Path | None, folder: Path) -> None:
    """Refuse a ``--copy-to`` inside the image folder, or one that holds anything already."""
    if target is None:
        return
    if inside(target, folder):
        raise UserError(f"--copy-to {path_text(target)} is inside the image folder {path_text(folder)}; choose a folder outside it")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"--copy-to {path_text(target)} already exists and is not an empty folder; choose a new or empty one")


def copy_names(paths: Sequence[str], folder: Path) -> list[str]:
    """A distinct file name for the copy of each of ``paths`` (files below ``folder``), as the module docstring says."""
    names, taken = [], set()
    # Not resolved: a file that links elsewhere is still named by where it sits in the folder.
    base = os.path.abspath(os.path.expanduser(folder))
    for path in paths:
        relative = Path(os.path.relpath(os.path.abspath(path), base))
        name = "__".join(relative.parts)
        attempt = 0
        while len(os.fsencode(name)) > NAME_MAX or name.casefold() in taken:
            name = _hashed(relative, attempt)
            attempt += 1
        taken.add(name.casefold())
        names.append(name)
    return names


def _hashed(relative: Path, attempt: int) -> str:
    digest = hashlib.sha256(os.fsencode(relative) + attempt.to_bytes(4, "big")).hexdigest()[:8]
    stem, suffix = "__".join(relative.parts[:-1] + (relative.stem,)), relative.suffix
    tail = f"~{digest}{suffix}"
    while stem and len(os.fsencode(stem + tail)) > NAME_MAX:
        stem = stem[:-1]
    return stem + tail


def copy_into_clusters(paths: Sequence[str], clusters: np.ndarray, folder: Path, target: Path) -> None:
    """Copy each of ``paths`` (files below ``folder``) to ``target/cluster_NN/``; all or nothing."""
    digits = len(str(int(clusters.max(initial=0))))
    made: list[Path] = [] if target.exists() else [target]
    copied: list[Path] = []
    try:
        for path, cluster, name in tqdm(
            list(zip(paths, clusters, copy_names(paths, folder))), desc="copying", unit="image"
        ):
            directory = target / f"cluster_{int(cluster):0{digits}d}"
            if not directory.exists():
                directory.mkdir(parents=True)
                made.append(directory)
            destination = directory / name
            copied.append(destination)  # before copying: a copy cut short leaves part of a file
            try:
                shutil.copy2(path, destination)
            except OSError as err:
                raise UserError(
                    f"cannot copy {path_text(path)} to {path_text(destination)}: {err.strerror or err}"
                ) from None
    except BaseException:
        _remove(copied, made)
        raise


def _remove(files: list[Path], folders: list[Path]) -> None:
    """Undo a copy cut short: its files, then the folders it made (deepest first), as far as they can be."""
    for file in files:
        file.unlink(missing_ok=True)
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (a file that could not be removed) or gone: the error that stopped the copy says more
