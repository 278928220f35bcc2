"""vindex.ingest: the jobs that build vindexes from models (the only floor that runs torch).

    from vindex.ingest import build, build_weights, import_larql
    build("smollm2-135m")                       # activations over the default prompts -> lake/smollm2-135m
    build_weights("smollm2-135m")               # down_meta, OV-gate couplings, spectra into the same vindex
    build("smollm2-135m", ray=True)             # the same shards, computed on a Ray cluster
    import_larql("path/to/larql-vindex", out="lake/name")

Where things live: builder.py (the two jobs), plan.py (the shared build plan), capture.py (capture
one shard group's hidden states and write it), activations.py (the hidden-state runner, tokenizing,
pooling), on_ray.py (the Ray runners), weights.py + down_meta.py + ov_gate.py + spectra.py (the weight
tables), checkpoint.py (tensors from safetensors), families.py (the model-family registry),
sources.py + model_cache.py (where models come from), prompts.py, larql/ (the LarQL importer).
"""
from .builder import build, build_weights
from .larql import import_larql
from .prompts import PromptSet, load_prompts
from .sources import ModelSource, load_model, resolve_model

__all__ = ["build", "build_weights", "import_larql", "load_prompts", "PromptSet", "resolve_model", "load_model",
           "ModelSource"]
