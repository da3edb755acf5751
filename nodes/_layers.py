"""A Hugging Face token classifier's forward pass in three pieces: embeddings, a range of layers, the head.

``head(model, run_layers(model, run_layers(model, embed(model, ids, mask), mask, 0, k), mask, k, L))`` is the
model's own ``model(input_ids=ids, attention_mask=mask).logits``, bit for bit (the same modules called in the same
order with the same masks), so an early exit at layer ``k`` can hand its hidden states to the rest of the model.
Each family's layer stack is reached the way its modeling code in transformers 5 reaches it (masks from
``transformers.masking_utils``; tested on 5.24); models are assumed in eval mode, as in inference.
"""

from __future__ import annotations

from typing import Any

from babybear.errors import BabybearError

#: ``config.model_type`` of the encoder families whose layer stack this module can split.
SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("bert", "roberta", "xlm-roberta", "camembert", "mpnet", "distilbert")


def _check(model: Any) -> str:
    """The model's family; BabybearError naming the model type and the supported ones otherwise."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise BabybearError(
            f"early exit: model type {model_type!r} ({type(model).__name__}) is not supported; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if getattr(config, "is_decoder", False):
        raise BabybearError(
            f"early exit: {type(model).__name__} is configured as a decoder; need a bidirectional encoder"
        )
    if not hasattr(model, "classifier") or getattr(model, "base_model", model) is model:
        raise BabybearError(
            f"early exit: {type(model).__name__} is not a token classifier (an encoder with a `classifier` head, "
            "e.g. AutoModelForTokenClassification)"
        )
    return model_type


def layer_modules(model: Any) -> Any:
    """The model's ``nn.ModuleList`` of transformer layers (after checking it is a supported token classifier)."""
    base = model.base_model
    return base.transformer.layer if _check(model) == "distilbert" else base.encoder.layer


def n_layers(model: Any) -> int:
    """How many transformer layers the model has."""
    return len(layer_modules(model))


def embed(model: Any, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
    """The embedding output (batch, length, hidden) for int64 ``input_ids`` (``attention_mask`` is checked for
    shape only: the embeddings do not read it; ``token_type_ids`` where the family takes them, else zeros)."""
    family = _check(model)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    embeddings = model.base_model.embeddings
    if family == "distilbert":
        return embeddings(input_ids)
    if family == "mpnet":
        return embeddings(input_ids=input_ids)
    return embeddings(input_ids=input_ids, token_type_ids=token_type_ids)


def run_layers(model: Any, hidden: Any, attention_mask: Any, start: int, stop: int) -> Any:
    """Layers ``start`` .. ``stop - 1`` (0-based) over ``hidden`` (batch, length, hidden) with the 2D padding mask
    ``attention_mask`` (batch, length), made into the family's own attention mask (and, for MPNet, its relative
    position bias) as the model's forward makes it."""
    from transformers.masking_utils import create_bidirectional_mask

    layers = layer_modules(model)
    if not 0 <= start <= stop <= len(layers):
        raise ValueError(f"layers {start}..{stop} are out of range for a model of {len(layers)} layers")
    if start == stop:
        return hidden
    base = model.base_model
    mask = create_bidirectional_mask(config=base.config, inputs_embeds=hidden, attention_mask=attention_mask)
    if model.config.model_type == "mpnet":
        bias = base.encoder.compute_position_bias(hidden)
        for layer in layers[start:stop]:
            hidden = layer(hidden, mask, bias)[0]
        return hidden
    for layer in layers[start:stop]:
        hidden = layer(hidden, mask)
    return hidden


def head(model: Any, hidden: Any) -> Any:
    """The token classifier's logits (batch, length, n_labels) from the last layer's hidden states (dropout off)."""
    _check(model)
    return model.classifier(hidden)
