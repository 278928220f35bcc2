"""LarQL interop: import a LarQL vindex (local folder or hf:// repo) into a Parquet vindex.

    from vindex.ingest.larql import import_larql
    import_larql("hf://example-org/gemma-3-4b-it-vindex", "lake/gemma3-4b")

importer.py (the job), format.py (LarQL's files: index.json, down_meta, gate vectors, embeddings),
labels.py (feature labels and clusters), ov_gate.py (OV-gate NDJSON), embeddings.py (embeddings.bin
as the `embeddings` table), source.py (local folder or Hub download).
"""
from .importer import import_larql

__all__ = ["import_larql"]
