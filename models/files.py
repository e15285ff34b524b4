"""The data files under a folder, as the commands that read a folder (anomaly, optimizer) see it."""

from __future__ import annotations

from pathlib import Path

NOT_DATA = ("README", "LICENSE")  # a dataset's notes, kept beside its files


def data_files(root: Path) -> list[tuple[str, Path]]:
    """Every file below ``root``, subfolders included, as (its path below ``root`` with ``/``,
    the path), sorted by the first. Hidden files and folders (a macOS ``._x.csv``, ``.git``)
    and README*/LICENSE* files are not data and are left out."""
    files: list[tuple[str, Path]] = []
    for file in root.rglob("*"):
        parts = file.relative_to(root).parts
        if any(part.startswith(".") for part in parts) or not file.is_file():
            continue
        if file.name.upper().startswith(NOT_DATA):
            continue
        files.append(("/".join(parts), file))
    files.sort()
    return files
