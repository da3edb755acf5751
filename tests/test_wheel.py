"""An installed wheel is a whole product: built from this checkout, installed into a fresh virtual environment
(its dependencies reached from the test's environment), it fits a ready circuit by name and benchmarks it,
run from outside the source tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from babybear.corpus import bbc_sentences

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "-q"]
    # built from a copy, as building writes babybear.egg-info into the tree (whose entry points would then shadow
    # the installed ones for anything run from the checkout)
    source = Path(shutil.copytree(ROOT, tmp / "source", ignore=shutil.ignore_patterns(".venv", ".git", "data", "trained", "*.egg-info", "build")))
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("babybear-*.whl")
    env = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True)
    # the dependencies (spaCy, torch, ...) from this environment; a plain path line does not run this environment's
    # editable-install hook, so `circuit` and `nodes` come from the wheel
    (Path(site.stdout.strip()) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env


def test_the_wheel_holds_the_package_and_the_ready_circuits(venv: Path, tmp_path: Path) -> None:
    code = "import babybear, babybear.nodes, babybear.ready as r; print(babybear.__file__); print(babybear.nodes.__file__); print(r.names())"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.splitlines()
    assert all(line.startswith(str(venv)) for line in out[:2]), out
    assert out[2] == str(sorted(p.stem for p in (ROOT / "circuits").glob("*.yaml")))


def test_the_installed_cli_fits_a_ready_circuit_by_name_and_benchmarks_it(venv: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "bbc.txt"
    corpus.write_text("\n".join(bbc_sentences()[0][:120]) + "\n", encoding="utf-8")
    babybear = str(venv / "bin" / "babybear")
    fit = subprocess.run([babybear, "fit", "news", "--corpus", str(corpus), "--out", "fitted", "--quiet"], cwd=tmp_path, capture_output=True, text=True)
    assert fit.returncode == 0, fit.stderr
    assert "fitted news on 120 texts -> fitted" in fit.stdout
    bench = subprocess.run([babybear, "bench", "fitted", "--corpus", str(corpus), "--limit", "40", "--out", "bench.json"], cwd=tmp_path, capture_output=True, text=True)
    assert bench.returncode == 0, bench.stderr
    assert (tmp_path / "bench.json").is_file() and (tmp_path / "bench.png").is_file()
