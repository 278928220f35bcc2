"""`vindex weights`: a thin shell over vindex.ingest.build_weights (same names, same defaults)."""
from __future__ import annotations

import click

from vindex.defaults import DEFAULT_VECTORS


def _feature_layers(value: str):
    return int(value) if value.isdigit() else value


@click.command()
@click.argument("source")
@click.argument("out", required=False, type=click.Path(file_okay=False))
@click.option("--name", help="vindex name (the `model` column); default: the model's short name.")
@click.option("--top-k", type=int, default=10, show_default=True, help="tokens kept per FFN feature (down_meta).")
@click.option("--unembedding", type=click.Choice(["embedding", "lm_head"]), default="embedding", show_default=True,
              help="score features with the raw input embedding (LarQL) or the real unembedding "
                   "(final norm folded in; lm_head when untied).")
@click.option("--ov-variants", default="o,ov", show_default=True,
              help="OV-gate variants: o (W_gate W_O,h; LarQL) and/or ov (full OV circuit with W_V).")
@click.option("--feature-layers", default="same", show_default=True,
              help="couple heads into the FFN gates of the 'same' block, every 'later' block, or N blocks.")
@click.option("--ov-top-k", type=int, help="features kept per head (default: --top-k).")
@click.option("--vectors", type=click.Choice(["gate", "down", "none"]), default=DEFAULT_VECTORS, show_default=True,
              help="per-feature vector stored in features.vector (for clustering): W_down[:, f] (down, as "
                   "`vindex study` clusters), W_gate[f] (gate, as LarQL's gate_vectors.bin) or none.")
@click.option("--vector-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--tables", default="features,ov_gate,layer_stats", show_default=True,
              help="which weight tables to write.")
@click.option("--layers", help="vindex layers to process, e.g. '1-8,12' (0 = the embedding's spectrum); default: all.")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="skip shards already written; --no-resume rewrites them.")
@click.option("--quiet", is_flag=True, help="no progress bar or summary.")
@click.option("--ray", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="run on a Ray cluster, a task per layer range: --ray alone uses RAY_ADDRESS or a local "
                   "cluster; or ray://head:10001, auto, local (needs the `distributed` extra).")
@click.option("--layers-per-task", type=int, help="with --ray: layers per task (default: spread over the CPUs).")
@click.option("--device", help="torch device for down_meta's matmuls (default: cuda when available, else cpu).")
def weights(source, out, name, top_k, unembedding, ov_variants, feature_layers, ov_top_k, vectors, vector_dtype,
            tables, layers, resume, quiet, ray, layers_per_task, device):
    """Write a model's weight-derived tables (features/down_meta, ov_gate, layer_stats) into a vindex.

    SOURCE is a model folder, a .gguf file, a Hub id or an offline model name (smollm2-135m,
    gemma3-270m, qwen2.5-0.5b, minilm-l6). OUT defaults to lake/<name>; an existing vindex of the
    same model is added to. Rerunning after an interruption continues where it stopped.
    """
    from vindex.ingest import build_weights
    root = build_weights(source, out, name=name, top_k=top_k, unembedding=unembedding,
                         ov_variants=[v for v in ov_variants.split(",") if v],
                         feature_layers=_feature_layers(feature_layers), ov_top_k=ov_top_k,
                         vectors=None if vectors == "none" else vectors, vector_dtype=vector_dtype,
                         tables=[t for t in tables.split(",") if t], layers=layers, resume=resume,
                         progress=not quiet, ray=ray, layers_per_task=layers_per_task, device=device)
    click.echo(str(root))


COMMANDS = [weights]
