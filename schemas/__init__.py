"""Language-neutral schema files, installed as the package data `vindex.schemas`."""
