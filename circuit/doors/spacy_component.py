"""The spaCy door: ``nlp.add_pipe("babybear_ner", config={"circuit": "path/to/fitted"})``.

The component answers ``doc.text`` with a fitted circuit and sets ``doc.ents``. Provenance goes to custom
extensions: ``doc._.babybear`` and ``span._.babybear`` are ``{"node": ..., "confidence": ...}`` (the node that
answered and its exit-gate score, None for the mamabear); a span's value also holds ``char_span``, the
circuit's own character offsets.

* Alignment: a circuit span whose ends fall inside spaCy tokens is expanded to whole tokens
  (``alignment_mode="expand"``), so no entity is lost to tokenization. If expansion makes two entities overlap,
  the first (by start, then the longer) is kept.
* ``mode="overwrite"`` replaces the entities already on the Doc; ``mode="merge"`` keeps them and adds the
  circuit's entities that overlap none of them.
* ``doc._.babybear["dropped"]`` counts the circuit's entities not set (overlap, or nothing to align to);
  ``doc._.babybear["error"]`` says why a Doc got no entities when the mamabear failed on its text (else None).
* The circuit is loaded lazily (first use) from the configured folder, or by ``from_disk`` from the copy saved
  inside the pipeline, so ``spacy.load`` never needs the original folder. Loading reads YAML/JSON/model files
  and runs no code from them. ``nlp.to_bytes()`` carries the circuit too: its folder's files in msgpack.
"""

import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

import srsly
from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.util import minibatch
from spacy.vocab import Vocab

from ..errors import ArtifactError, BabybearError
from ..artifacts import folder_files, write_folder_files
from ..circuit import Circuit
from ..types import Answer

EXTENSION = "babybear"
CIRCUIT_FOLDER = "circuit"  # where to_disk puts the circuit inside the component's folder
MODES = ("overwrite", "merge")

for _cls in (Doc, Span):
    if not _cls.has_extension(EXTENSION):
        _cls.set_extension(EXTENSION, default=None)


@Language.factory(
    "babybear_ner",
    default_config={"mode": "overwrite", "batch_size": 256},
    assigns=["doc.ents", f"doc._.{EXTENSION}", f"span._.{EXTENSION}"],
)
def make_babybear_ner(nlp: Language, name: str, circuit: Optional[str], mode: str, batch_size: int) -> "BabybearNER":
    """spaCy factory (entry point ``spacy_factories``); ``circuit`` is a fitted circuit folder."""
    return BabybearNER(nlp.vocab, name, circuit, mode=mode, batch_size=batch_size)


class BabybearNER:
    """A pipeline component that sets ``doc.ents`` from a fitted babybear circuit."""

    def __init__(self, vocab: Vocab, name: str, circuit: Optional[str], *, mode: str = "overwrite", batch_size: int = 256) -> None:
        if mode not in MODES:
            raise BabybearError(f"babybear_ner: mode {mode!r} is not one of {', '.join(MODES)}")
        if batch_size < 1:
            raise BabybearError(f"babybear_ner: batch_size must be >= 1, got {batch_size}")
        self.vocab = vocab
        self.name = name
        self.mode = mode
        self.batch_size = batch_size
        self.source: Path | None = Path(circuit) if circuit else None
        self._circuit: Circuit | None = None
        self._unpacked: tempfile.TemporaryDirectory | None = None  # where from_bytes put the circuit's files

    @property
    def circuit(self) -> Circuit:
        """The fitted circuit, loaded (and warmed up) on first use."""
        if self._circuit is None:
            if self.source is None:
                raise BabybearError('babybear_ner needs a fitted circuit folder: config={"circuit": "path/to/fitted"}')
            self._circuit = _load(self.source)
        return self._circuit

    # -- processing --------------------------------------------------------------------------------------------
    def __call__(self, doc: Doc) -> Doc:
        self._annotate([doc])
        return doc

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128) -> Iterator[Doc]:
        """Answer ``batch_size`` docs at a time with one circuit call each."""
        for docs in minibatch(stream, size=batch_size):
            self._annotate(docs)
            yield from docs

    def _annotate(self, docs: list[Doc]) -> None:
        answers = self.circuit([doc.text for doc in docs], batch_size=self.batch_size)
        for doc, answer in zip(docs, answers):
            self._set_ents(doc, answer)

    def _set_ents(self, doc: Doc, answer: Answer) -> None:
        provenance = {"node": answer.node, "confidence": answer.confidence}
        keep = list(doc.ents) if self.mode == "merge" else []
        taken = {i for ent in keep for i in range(ent.start, ent.end)}
        new: list[tuple[Span, tuple[int, int]]] = []
        for s in sorted(answer.spans, key=lambda s: (s.start, -s.end)):
            span = doc.char_span(s.start, s.end, label=s.label, alignment_mode="expand")
            tokens = set(range(span.start, span.end)) if span is not None else set()
            if tokens and not tokens & taken:
                taken |= tokens
                new.append((span, (s.start, s.end)))
        doc.set_ents(sorted(keep + [span for span, _ in new], key=lambda e: e.start), default="outside")
        for span, chars in new:
            span._.set(EXTENSION, {**provenance, "char_span": list(chars)})
        doc._.set(EXTENSION, {**provenance, "dropped": len(answer.spans) - len(new), "error": answer.error})

    # -- serialization -----------------------------------------------------------------------------------------
    def to_disk(self, path: str | Path, *, exclude: Iterable[str] = ()) -> None:
        """Save the circuit into ``path/circuit``: the one in memory once loaded (so a re-tuned circuit keeps its
        thresholds), else a copy of its folder. It is written beside the target first, then moved into place."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        target = path / CIRCUIT_FOLDER
        if self._circuit is None and (self.source is None or not (self.source / "circuit.yaml").is_file()):
            raise ArtifactError(f"babybear_ner: cannot save the circuit: {self.source} is not a fitted circuit folder")
        fresh = path / f"{CIRCUIT_FOLDER}.saving"
        shutil.rmtree(fresh, ignore_errors=True)
        if self._circuit is not None:
            self._circuit.save(fresh)
        else:
            assert self.source is not None
            shutil.copytree(self.source, fresh)
        shutil.rmtree(target, ignore_errors=True)
        fresh.rename(target)

    def from_disk(self, path: str | Path, *, exclude: Iterable[str] = ()) -> "BabybearNER":
        """Load the circuit copied into ``path/circuit`` by :meth:`to_disk`."""
        folder = Path(path) / CIRCUIT_FOLDER
        if not (folder / "circuit.yaml").is_file():
            raise ArtifactError(f"{folder / 'circuit.yaml'}: missing; the pipeline's babybear_ner circuit folder is incomplete")
        self._circuit = _load(folder)
        self.source = folder
        return self

    def to_bytes(self, *, exclude: Iterable[str] = ()) -> bytes:
        """The circuit's saved folder as msgpack of ``{relative path: file bytes}`` (``nlp.to_bytes`` carries it)."""
        with tempfile.TemporaryDirectory(prefix="babybear-ner-") as tmp:
            self.to_disk(tmp)
            return srsly.msgpack_dumps({"files": folder_files(Path(tmp) / CIRCUIT_FOLDER)})

    def from_bytes(self, data: bytes, *, exclude: Iterable[str] = ()) -> "BabybearNER":
        """Load a circuit from :meth:`to_bytes`: its files are written to a temporary folder and read from there."""
        try:
            files = srsly.msgpack_loads(data)["files"]
        except Exception as err:  # noqa: BLE001 - msgpack raises several kinds on damaged bytes
            raise ArtifactError(f"babybear_ner: cannot read the circuit from bytes: {type(err).__name__}: {err}") from err
        self._unpacked = tempfile.TemporaryDirectory(prefix="babybear-ner-")
        write_folder_files(files, Path(self._unpacked.name) / CIRCUIT_FOLDER)
        return self.from_disk(self._unpacked.name)


def _load(folder: Path) -> Circuit:
    """Load and warm up a fitted circuit; any failure becomes an ArtifactError naming the folder."""
    try:
        return Circuit.load(folder).warm_up()
    except ArtifactError:
        raise
    except Exception as err:  # noqa: BLE001 - a corrupt node file may fail in the node's own reader
        raise ArtifactError(f"{folder}: cannot load the babybear circuit: {type(err).__name__}: {err}") from err
