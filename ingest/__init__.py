"""vindex.ingest: the jobs that build vindexes from models (the only floor that runs torch).

    from vindex.ingest import build, build_weights, import_larql, load_model, load_prompts, resolve_model
    build("smollm2-135m")                       # activations over the default prompts -> lake/smollm2-135m
    build_weights("smollm2-135m")               # down_meta, OV-gate couplings, spectra into the same vindex
    build("smollm2-135m", ray=True)             # the same shards, computed on a Ray cluster
    import_larql("path/to/larql-vindex", out="lake/name")
    src = resolve_model("smollm2-135m"); model, tok = load_model(src); ps = load_prompts("heldout")

`build_on_ray` / `build_weights_on_ray` are what `ray=` dispatches to; call them for Ray's own
options (runtime_env, cpus_per_actor, memory_per_task). Ray itself is imported only when they run.

Where things live: builder.py (build, build_weights), plan.py (Job, resolve_job, plan_job,
prepare_vindex: the build plan the local and the Ray paths share), capture.py (capture_group,
write_group, auto_dtype: one shard group, called by build() and by the Ray actors), activations.py
(HiddenStates, tokenize_prompts, plan_groups, pool), on_ray.py (the Ray runners), weights.py +
down_meta.py + ov_gate.py + spectra.py (the weight tables), checkpoint.py (ModelWeights: tensors by
role, read with the safetensors library), families.py (the model-family registry), sources.py +
model_cache.py (where models come from), prompts.py, larql/ (the LarQL importer); the interventions:
patching.py (patch), ablation.py (ablate), steering.py (steer), pairs.py (clean/corrupt pairs, the
shipped `factual` set), intervention_runs.py (what they share: the model, its vindex, a resumable run).
"""
from .ablation import ablate
from .builder import build, build_weights
from .larql import import_larql
from .on_ray import build_on_ray, build_weights_on_ray
from .pairs import PairSet, load_pairs
from .patching import patch
from .prompts import PromptSet, load_prompts
from .sources import ModelSource, load_model, resolve_model
from .steering import steer

__all__ = ["build", "build_weights", "build_on_ray", "build_weights_on_ray", "import_larql", "load_prompts",
           "PromptSet", "resolve_model", "load_model", "ModelSource", "patch", "ablate", "steer", "load_pairs", "PairSet"]
