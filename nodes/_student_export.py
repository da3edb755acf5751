"""The student as ONNX: export the fitted torch module, quantize it to int8 when asked, open an onnxruntime
session, and tell whether the graphs in a saved folder were written with its weights (sha256 of each).
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from babybear.errors import NotFittedError

if TYPE_CHECKING:
    from babybear.nodes.transformer import TransformerTagger

def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def graphs_belong(path: Path, saved: dict[str, Any], weights: Path) -> bool:
    """Whether the folder's ONNX graphs are those student.json lists (``saved``), as written with its weights (the
    file ``weights``): a graph of another save, or a folder without a list (format 2), would serve other weights."""
    graphs = saved.get("graphs") or {}
    on_disk = {p.name for p in path.glob("model*.onnx")}
    if "model.onnx" not in graphs or on_disk != set(graphs):
        return False
    if saved.get("weights_sha256") != sha256(weights):
        return False
    return all(sha256(path / name) == digest for name, digest in graphs.items())


def export_onnx(student: TransformerTagger, path: str | Path) -> Path:
    """Write the fitted student as an ONNX graph (inputs as :meth:`_pad` builds them; output ``logits``)."""
    import torch

    if not student.is_fitted:
        raise NotFittedError("TransformerTagger is not fitted: nothing to export")
    path = Path(path)
    model = student.model_.to("cpu").eval()
    encs = student._encode(["An Export sample, 2024."])
    sample = student._pad([student._inputs(enc, 0, len(enc.ids)) for enc in encs])
    names = list(sample)
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "logits"]}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about shapes that are dynamic axes here anyway
        torch.onnx.export(
            model,
            tuple(torch.from_numpy(v) for v in sample.values()),
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    if student.params.runtime == "torch":
        model.to(student._torch_device())
    return path


def _scratch(student: TransformerTagger) -> Path:
    """This node's own temporary folder, for the ONNX graphs it makes: never the folder it was loaded from,
    which may be read-only."""
    if student._tmp is None:
        student._tmp = tempfile.TemporaryDirectory(prefix="babybear-student-")
    return Path(student._tmp.name)


def onnx_graphs(student: TransformerTagger) -> list[Path]:
    """The ONNX graphs this node runs: fp32, then int8 when asked; made in the scratch folder if not on disk."""
    if student._onnx_dir is None:
        student._onnx_dir = _scratch(student)
    fp32 = student._onnx_dir / "model.onnx"
    if not fp32.exists():
        export_onnx(student, fp32)
    if not student.params.quantize_int8:
        return [fp32]
    int8 = student._onnx_dir / "model.int8.onnx"
    if not int8.exists():
        int8 = _scratch(student) / "model.int8.onnx"
    if not int8.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    return [fp32, int8]


def open_session(student: TransformerTagger) -> Any:
    """An onnxruntime session (CUDA first unless device is cpu) using as many threads as torch does."""
    import onnxruntime
    import torch

    available = onnxruntime.get_available_providers()
    wanted = ["CPUExecutionProvider"] if student.params.device == "cpu" else ["CUDAExecutionProvider"]
    providers = [p for p in wanted if p in available] + ["CPUExecutionProvider"]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(
        str(onnx_graphs(student)[-1]), options, providers=list(dict.fromkeys(providers))
    )
