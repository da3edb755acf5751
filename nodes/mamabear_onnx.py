"""An exported token classifier run by onnxruntime as the mamabear (for example the ``rampart-pii`` model).

The model folder holds ``config.json`` (with ``id2label``), ``tokenizer.json`` and an ``.onnx`` file. Windowing
and decoding are the same as :class:`babybear.nodes.mamabear_hf.HFTokenClassifier`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from babybear.errors import BabybearError

from .models import resolve
from .mamabear_hf import TokenClassifierNode, TokenClassifierParams


class ONNXTokenClassifier(TokenClassifierNode):
    """Entity spans from an ONNX token classification model, on CPU or the CUDA execution provider."""

    class Params(TokenClassifierParams):
        model: str = Field("rampart-pii", description="a model folder or an offline alias")
        file: str | None = Field(None, description="the .onnx file in the folder; default: the first one")
        providers: Literal["auto"] | list[str] = Field(
            "auto", description="onnxruntime execution providers; auto: CUDA first when available"
        )

    params: ONNXTokenClassifier.Params

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._session: Any = None
        self._output = ""

    def warm_up(self) -> None:
        if self._session is not None:
            return
        import onnxruntime
        from tokenizers import Tokenizer

        folder = Path(resolve(self.params.model, "onnx"))
        providers = self._providers(onnxruntime.get_all_providers(), onnxruntime.get_available_providers())
        self._session = onnxruntime.InferenceSession(str(self._onnx_file(folder)), providers=providers)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        self._set_tokenizer(Tokenizer.from_file(str(folder / "tokenizer.json")), config["id2label"])
        self._input_names = {i.name for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        self._output = "logits" if "logits" in outputs else outputs[0]

    def _providers(self, known: list[str], available: list[str]) -> list[str]:
        """The execution providers to ask for: ``auto`` is CUDA then CPU where available; a listed one that is not
        available here is left out (onnxruntime would only warn). BabybearError for an unknown name or none left."""
        if self.params.providers == "auto":
            return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        unknown = [p for p in self.params.providers if p not in known]
        if unknown:
            raise BabybearError(
                f"unknown onnxruntime execution provider(s) {', '.join(unknown)}; "
                f"available here: {', '.join(available)}"
            )
        usable = [p for p in self.params.providers if p in available]
        if not usable:
            raise BabybearError(
                f"none of the execution providers [{', '.join(self.params.providers)}] is available here; "
                f"available: {', '.join(available)} (or providers: auto)"
            )
        return usable

    def _onnx_file(self, folder: Path) -> Path:
        if self.params.file is not None:
            path = folder / self.params.file
            if not path.is_file():
                raise BabybearError(f"ONNX file '{self.params.file}' not found in {folder}")
            return path
        found = sorted(folder.rglob("*.onnx"))
        if not found:
            raise BabybearError(f"no .onnx file under {folder}; name one with the 'file' parameter")
        return found[0]

    @property
    def device(self) -> str:
        """``"gpu"`` when the first execution provider is CUDA (known after :meth:`warm_up`)."""
        providers = self._session.get_providers() if self._session is not None else self.params.providers
        return "gpu" if isinstance(providers, list) and providers[:1] == ["CUDAExecutionProvider"] else "cpu"

    def _logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Runs with I/O binding: inputs are copied to the device once, logits are kept there until read back."""
        binding = self._session.io_binding()
        for name, value in inputs.items():
            if name in self._input_names:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        binding.bind_output(self._output, "cuda" if self.device == "gpu" else "cpu")
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]
