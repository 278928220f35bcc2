"""Your own model: a transformers model object already in memory, as a build's source.

    from vindex.ingest import build
    build(model=my_model, tokenizer=my_tokenizer, name="my-finetune", prompts=["...", "..."])

A loaded object carries less provenance than a folder or a Hub id, so vindex records what the object
itself says (its config, class, dtype, `name_or_path`, the Hub commit transformers noted when it
downloaded it, any quantization config, the transformers version) and refuses to guess the rest: no
tokenizer, or no name where `name_or_path` gives none, is a MissingProvenance error.
"""
from __future__ import annotations

import re
from pathlib import Path
from dataclasses import dataclass, field

from vindex.errors import MissingProvenance, ModelSourceError

from .families import ENCODER_FAMILIES, family_of
from .sources import ModelSource, short_name


@dataclass(frozen=True)
class LoadedModel:
    """A model object and its tokenizer, with what can be known of where they came from."""
    model: object = field(repr=False)
    tokenizer: object = field(repr=False)
    name: str
    model_id: str
    revision: str | None
    model_type: str
    family: str
    provenance: dict
    config: dict = field(default_factory=dict, repr=False)
    kind: str = "object"
    quantization: str | None = None

    @property
    def is_encoder(self) -> bool:
        return self.family in ENCODER_FAMILIES

    def manifest_model(self) -> dict:
        """The manifest's `model` object: the shape fields as for a folder (`ModelSource.manifest_model`),
        plus the object's provenance."""
        as_source = ModelSource(name=self.name, path=Path("."), model_id=self.model_id, revision=self.revision,
                                model_type=self.model_type, family=self.family, kind=self.kind,
                                source=f"object {self.provenance['class']}", quantization=self.quantization,
                                config=self.config)
        return {**as_source.manifest_model(), "provenance": self.provenance}


def from_object(model, tokenizer, name: str | None = None) -> LoadedModel:
    """Describe a loaded transformers model for a build; MissingProvenance when it cannot be described
    without guessing (no tokenizer, or no name)."""
    import torch
    import transformers
    if not isinstance(model, torch.nn.Module) or getattr(model, "config", None) is None:
        raise ModelSourceError(f"model: a {type(model).__name__} is not a transformers model (a torch module "
                               "with a .config); pass a loaded PreTrainedModel, or a folder / Hub id as source")
    if tokenizer is None:
        raise MissingProvenance(
            f"model {type(model).__name__}: no tokenizer given; vindex will not guess which tokenizer the model "
            "was trained with: pass tokenizer= (e.g. AutoTokenizer.from_pretrained(<the model's folder or id>))")
    cfg = model.config
    where = f"model {type(model).__name__} (config.model_type)"
    model_type = getattr(cfg, "model_type", None)
    family = family_of(model_type, where)
    name_or_path = getattr(cfg, "name_or_path", None) or getattr(model, "name_or_path", None) or None
    if name is None:
        if not name_or_path:
            raise MissingProvenance(f"model {type(model).__name__}: its config has no name_or_path, so pass "
                                    "name= (the vindex name, the `model` column of every table)")
        name = short_name(re.split(r"[/\\]", str(name_or_path).rstrip("/\\"))[-1])
    commit = getattr(cfg, "_commit_hash", None)
    qcfg = getattr(cfg, "quantization_config", None)
    qcfg = qcfg.to_dict() if hasattr(qcfg, "to_dict") else qcfg
    quant = (qcfg or {}).get("quant_method") if isinstance(qcfg, dict) else None
    param = next(model.parameters(), None)
    provenance = {
        "kind": "object", "class": f"{type(model).__module__}.{type(model).__name__}",
        "dtype": str(param.dtype).removeprefix("torch.") if param is not None else None,
        "name_or_path": str(name_or_path) if name_or_path else None, "commit": commit,
        "quantization_config": qcfg, "tokenizer_class": type(tokenizer).__name__,
        "tokenizer_name_or_path": getattr(tokenizer, "name_or_path", None) or None,
        "transformers_version": transformers.__version__,
        "not_recorded": "where the weights came from beyond name_or_path and commit (vindex does not guess)",
    }
    return LoadedModel(model=model, tokenizer=tokenizer, name=short_name(name), model_id=str(name_or_path or name),
                       revision=commit, model_type=model_type, family=family, provenance=provenance,
                       config=cfg.to_dict(), quantization=quant)
