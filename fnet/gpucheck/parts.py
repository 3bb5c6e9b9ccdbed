"""Keep every file of a results folder under a size limit: split large ones into numbered parts, list all in a manifest.

A GPU machine lent for minutes may only hand back files up to a size (16 MiB where this toolkit is developed);
a paper-network checkpoint is ~120 MB. `split_large` replaces each larger file by `NAME.part000`, `NAME.part001`,
... and writes `manifest.json` (every file's size and sha256, and its parts'); `join_parts` rebuilds and checks
them. Without this toolkit: `cat NAME.part* > NAME && sha256sum NAME` (parts sort in order; compare with the manifest).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..runtime.atomic import atomic_path, atomic_write_text

MANIFEST = "manifest.json"
LIMIT_BYTES = 16 * 2**20  # the largest file that may stay whole
PART_BYTES = 15 * 2**20  # parts a little under the limit
_CHUNK = 2**20


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def split_large(folder: str | Path, limit: int = LIMIT_BYTES, part_bytes: int = PART_BYTES) -> dict:
    """Split every file over `limit` bytes into parts of `part_bytes`, then write and return the manifest."""
    folder = Path(folder)
    if part_bytes > limit:
        raise ValueError(f"parts of {part_bytes} bytes would exceed the {limit}-byte limit")
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        size, digest = path.stat().st_size, sha256_of(path)
        entry = {"path": path.relative_to(folder).as_posix(), "size": size, "sha256": digest}
        if size > limit:
            entry["parts"] = _write_parts(path, part_bytes)
            path.unlink()  # the parts and the manifest now stand for it
        entries.append(entry)
    manifest = {"format": "fnet-parts-1", "limit_bytes": limit, "files": entries,
                "join": "fnet-gpu-check --join FOLDER, or: cat NAME.part* > NAME (check its sha256 here)"}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def _write_parts(path: Path, part_bytes: int) -> list[dict]:
    """Write path's bytes as NAME.part000, NAME.part001, ...; their relative names, sizes and sha256."""
    parts = []
    with open(path, "rb") as fh:
        index = 0
        while block := fh.read(part_bytes):
            part = path.with_name(f"{path.name}.part{index:03d}")
            with atomic_path(part) as tmp:
                tmp.write_bytes(block)
            parts.append({"path": part.name, "size": len(block), "sha256": hashlib.sha256(block).hexdigest()})
            index += 1
    return parts


def join_parts(folder: str | Path, to: str | Path | None = None) -> list[str]:
    """Rebuild every split file of `folder`'s manifest (into `to`, default the folder itself); the paths written.

    Raises ValueError naming the file when a part is missing or a rebuilt file's size or sha256 differs.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"{folder}: no {MANIFEST} here (not a folder written by fnet-gpu-check)")
    manifest = json.loads(manifest_path.read_text())
    target = Path(to) if to is not None else folder
    written = []
    for entry in manifest.get("files", []):
        if "parts" not in entry:
            continue
        out = target / entry["path"]
        out.parent.mkdir(parents=True, exist_ok=True)
        source_dir = (folder / entry["path"]).parent
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                for part in entry["parts"]:
                    part_path = source_dir / part["path"]
                    if not part_path.is_file():
                        raise ValueError(f"{part_path}: part {part['path']} of {entry['path']} is missing")
                    fh.write(part_path.read_bytes())
            size, digest = tmp.stat().st_size, sha256_of(tmp)
            if size != entry["size"] or digest != entry["sha256"]:
                raise ValueError(f"{entry['path']}: rebuilt file has {size} bytes, sha256 {digest[:12]}..., "
                                 f"the manifest says {entry['size']} bytes, {entry['sha256'][:12]}...")
        written.append(str(out))
    return written
