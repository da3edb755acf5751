"""The contracts every node and gate honours. The engine knows nodes only through these classes.

A node is built like a scikit-learn estimator: ``__init__`` only validates and stores parameters (cheap, no
weights), ``warm_up()`` loads what it needs (idempotent), ``fit`` learns from the mamabear's answers, learned
state ends in ``_``. Parameters are a pydantic model with ``extra="forbid"`` so a YAML typo is caught with the
list of valid names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from .errors import BabybearError
from .types import Prediction


class Params(BaseModel):
    """Base for node and gate parameters: unknown names are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Node(ABC):
    """A model that answers a batch of texts with entity spans and gate evidence.

    Subclasses set ``Params`` (a :class:`Params` model) and ``role``: ``"babybear"`` nodes learn from the
    mamabear in :meth:`fit`; the single ``"mamabear"`` node is the reference and the circuit's sink.
    ``device`` says where it runs (``"cpu"`` or ``"gpu"``), so the scheduler can overlap them.

    Parameters are declared one way, in the node (gates alike)::

        from babybear.node import Params as NodeParams

        class MyTagger(Node):
            class Params(NodeParams):  # pydantic fields; unknown names are errors
                c1: float = Field(0.1, ge=0, description="...")

            params: MyTagger.Params

    Nodes of one family may extend a shared module-level base instead of ``NodeParams`` (the token classifiers'
    ``TokenClassifierParams``).
    """

    Params: ClassVar[type[Params]] = Params
    role: ClassVar[Literal["babybear", "mamabear"]] = "babybear"

    def __init__(self, **params: Any) -> None:
        self.params = self.Params(**params)
        self.cost_: float | None = None  # seconds per token, measured during Circuit.fit

    # -- lifecycle -------------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Load weights and other heavy state. Called before use; must be cheap to call again."""

    def fit(self, texts: Sequence[str], reference: Sequence[Prediction]) -> Node:
        """Learn from the mamabear's answers ``reference`` on ``texts``. Mamabears ignore this."""
        return self

    @abstractmethod
    def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        """One Prediction per text, same order. Must accept empty and odd texts without raising."""

    # -- handing on a resumable state (early exit) -----------------------------------------------------------
    def bind(self, nodes: Mapping[str, Node]) -> None:
        """Called with every node of the circuit, by name, before the node is warmed up: a node that runs on part
        of another node's model (an early exit on the mamabear's first layers) finds that node here."""

    def covers(self, name: str, successor: Node) -> float:
        """The share (0 to 1) of ``successor``'s work (the node named ``name``) already done in the state this node
        hands on with each text: an exit after k of an L-layer mamabear's layers covers k / L of it. 0 (the
        default) when it hands on nothing ``successor`` can continue from."""
        return 0.0

    def predict_with_state(self, texts: Sequence[str]) -> tuple[list[Prediction], list[Any]]:
        """:meth:`predict_batch` plus, per text, the state a successor it :meth:`covers` continues from."""
        return self.predict_batch(texts), [None] * len(texts)

    def finish(self, successor: Node, texts: Sequence[str], states: Sequence[Any]) -> tuple[list[Prediction], list[Any]]:
        """``successor``'s predictions for ``texts`` (and its own states) computed from the ``states`` this node
        handed on, doing only the work :meth:`covers` leaves; for nodes that cover something."""
        raise NotImplementedError(f"{type(self).__name__} covers no successor's work")

    # -- learning from inside another node's pass (early exit) ----------------------------------------------
    def taps(self) -> dict[str, Any]:
        """What this node learns from inside another node's warm-up pass, by that node's name (an early exit on
        layer k asks its mamabear ``{"mamabear": {"layers": [k]}}``). The warm-up asks the mamabear to :meth:`keep`
        it while it labels the training texts, and hands it to this node as ``fit(texts, reference, kept=...)``
        (per text, what that text's pass kept for this node, None where nothing was kept): a node with taps
        accepts ``kept``. Default: none, and :meth:`fit` is called as usual."""
        return {}

    def keep(self, requests: Mapping[str, Any]) -> None:
        """From now on, keep what ``requests`` ({requesting node: its :meth:`taps` request}) ask for:
        :meth:`predict_with_state` returns, beside predictions equal to :meth:`predict_batch`'s, per text
        {requesting node: what it kept}. ``{}`` stops keeping. The default keeps nothing and says so."""
        if requests:
            raise BabybearError(f"{type(self).__name__} can keep nothing from its pass for {', '.join(sorted(requests))}")

    # -- persistence -----------------------------------------------------------------------------------------
    def to_disk(self, path: Path) -> None:
        """Write learned state into the folder ``path`` (which exists). No pickle."""

    def from_disk(self, path: Path) -> Node:
        """Read learned state written by :meth:`to_disk`; returns self."""
        return self

    # -- introspection ---------------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return "cpu"

    @property
    def is_fitted(self) -> bool:
        return True

    def get_params(self) -> dict[str, Any]:
        return self.params.model_dump()


class Gate(ABC):
    """A calibrated estimate of P(the source node's answer equals the mamabear's), from the source's evidence."""

    Params: ClassVar[type[Params]] = Params

    def __init__(self, **params: Any) -> None:
        self.params = self.Params(**params)

    @abstractmethod
    def fit(self, evidence: Sequence[dict[str, float]], agrees: Sequence[bool]) -> Gate:
        """Learn from held-out evidence and whether the source agreed with the mamabear."""

    @abstractmethod
    def score(self, evidence: Sequence[dict[str, float]]) -> np.ndarray:
        """P(agree) for each evidence dict, in [0, 1]."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Learned state as plain JSON-able data."""

    @abstractmethod
    def load_dict(self, state: dict[str, Any]) -> Gate:
        """Restore state from :meth:`to_dict`; returns self."""

    @property
    def report(self) -> dict[str, Any]:
        """What the gate says of its own fit (shown in reports); override to fill it."""
        return {}

    def get_params(self) -> dict[str, Any]:
        return self.params.model_dump()
