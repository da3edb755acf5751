"""babybear's engine: circuits of cheap NER models in front of an expensive one, within an entity-F1 budget."""

from .errors import ArtifactError, BabybearError, CircuitValidationError, NodeError, NotFittedError, Problem
from .circuit import Circuit
from .node import Gate, Node, Params
from .registry import register_gate, register_node
from .schema import Budget
from .types import Answer, Prediction, Span

__all__ = [
    "Answer", "ArtifactError", "BabybearError", "Budget", "Circuit", "CircuitValidationError", "Gate", "Node",
    "NodeError", "NotFittedError", "Params", "Prediction", "Problem", "Span", "register_gate", "register_node",
]
