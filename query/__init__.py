"""DuckDB SQL over vindexes (installed as vindex.query). Never imports torch."""
