"""Jobs that build vindexes from models (installed as vindex.ingest)."""
