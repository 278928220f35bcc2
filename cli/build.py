"""`vindex build`: a thin shell over vindex.ingest.build (same names, same defaults)."""
from __future__ import annotations

import click

from vindex.defaults import DEFAULT_DTYPE


class TopK(click.ParamType):
    """A positive integer, or 'all'."""
    name = "K|all"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or str(value).strip().lower() == "all":
            return value if isinstance(value, int) else "all"
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is not a positive integer or 'all'", param, ctx)


@click.command()
@click.argument("source")
@click.argument("out", required=False, type=click.Path(file_okay=False))
@click.option("--name", help="vindex name (the `model` column); default: the model's short name.")
@click.option("--prompts", default="default", show_default=True,
              help="'default', 'heldout', or a JSONL / CSV / Parquet / .txt file of prompts.")
@click.option("--prompt-set-name", help="name of the prompt set in the vindex (default: the file's stem).")
@click.option("--layers", help="layers to store, e.g. '0-8,12' (0 = embeddings); default: all.")
@click.option("--sites", default="resid_post", show_default=True,
              help="TransformerLens sites, comma-separated, or 'all': resid_pre, attn_out, resid_mid, mlp_out, "
                   "resid_post (activations/pooled, a `site` column) and mlp_post (feature_acts + feature_stats). "
                   "Layer i = block i's output (TransformerLens block i-1).")
@click.option("--feature-top-k", type=TopK(), default=32, show_default=True,
              help="with mlp_post: features kept per token and layer, by |activation|; 'all' = dense.")
@click.option("--feature-threshold", type=float, default=1.0, show_default=True,
              help="with mlp_post: feature_stats counts tokens with |activation| above it.")
@click.option("--routing/--no-routing", default=None,
              help="write the MoE routing table (default: for MoE models; --routing on a dense model is an error).")
@click.option("--compute-dtype", type=click.Choice(["float32", "bfloat16", "float16"]),
              help="dtype the model runs in (default float32; bfloat16 is the norm on GPUs).")
@click.option("--dtype", type=click.Choice(["float16", "float32", "auto"]), default=DEFAULT_DTYPE, show_default=True,
              help="stored vector type; auto = float16, or float32 where a probe of the longest prompts comes "
                   "within 2x of float16's range (gemma3 does). Norms are always float32.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="prompts per forward pass.")
@click.option("--max-tokens", type=int, default=256, show_default=True, help="tokens kept per prompt.")
@click.option("--poolings", default="mean,last,mean_nosink", show_default=True,
              help="comma-separated pooling rules for the pooled table.")
@click.option("--chat-template/--no-chat-template", default=False, show_default=True,
              help="wrap each prompt in the tokenizer's chat template (template tokens flagged special).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="continue an interrupted build; --no-resume rebuilds this prompt set.")
@click.option("--device", help="torch device (default: cuda when available, else cpu).")
@click.option("--buffer-mb", type=int, default=512, show_default=True,
              help="memory for buffered hidden states; bounds the shard size.")
@click.option("--shard-rows", type=click.IntRange(min=1),
              help="token rows per shard (default: what --buffer-mb holds).")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="where dequantized .gguf and offline models are cached (default: $VINDEX_CACHE/models, "
                   "else ~/.cache/vindex/models).")
@click.option("--trust-remote-code", is_flag=True, help="allow the model's own Python code (off by default).")
@click.option("--quiet", is_flag=True, help="no progress bar or summary.")
@click.option("--ray", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="run on a Ray cluster: --ray alone uses RAY_ADDRESS or a local cluster; or give "
                   "ray://head:10001, auto, local (needs the `distributed` extra).")
@click.option("--actors", type=int, help="with --ray: model copies in the actor pool (default: what fits).")
@click.option("--gpus-per-actor", type=float, help="with --ray: GPUs per actor (default 1 if the cluster has GPUs, else 0).")
@click.option("--weights", is_flag=True, help="also write the weight tables (features, ov_gate, layer_stats); "
                                             "`vindex weights` has their options.")
def build(source, out, name, prompts, prompt_set_name, layers, sites, feature_top_k, feature_threshold, routing,
          compute_dtype, dtype, batch_size, max_tokens, poolings, chat_template, resume, device, buffer_mb, shard_rows, cache_dir, trust_remote_code, quiet, ray, actors,
          gpus_per_actor, weights):
    """Run a model over a prompt set and write per-layer activations into a vindex.

    SOURCE is a Hugging Face model folder, a .gguf file, a Hub id (org/name[@revision]) or an
    offline model name (smollm2-135m, gemma3-270m, qwen2.5-0.5b, minilm-l6). OUT defaults to
    lake/<name>. Rerunning the same command after an interruption continues where it stopped.
    """
    from vindex.ingest import build as build_fn
    root = build_fn(source, out, name=name, prompts=prompts, prompt_set_name=prompt_set_name,
                    layers=layers, sites=sites, feature_top_k=feature_top_k, feature_threshold=feature_threshold,
                    routing=routing, compute_dtype=compute_dtype, dtype=dtype, batch_size=batch_size, max_tokens=max_tokens,
                    poolings=poolings, chat_template=chat_template, resume=resume, device=device,
                    buffer_mb=buffer_mb, shard_rows=shard_rows, cache_dir=cache_dir,
                    trust_remote_code=trust_remote_code, progress=not quiet, ray=ray, actors=actors,
                    gpus_per_actor=gpus_per_actor, weights=weights)
    click.echo(str(root))


COMMANDS = [build]
