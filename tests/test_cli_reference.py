"""docs/cli.md is the real `--help` of every command: regenerated here and compared."""
import os
import subprocess
import sys
from pathlib import Path

from vindex.cli import main
from vindex.cli.reference import COLUMNS, render

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cli.md"
REGENERATE = "python -m vindex.cli.reference > docs/cli.md"


def test_docs_cli_md_is_current():
    assert DOC.read_text() == render(), f"docs/cli.md is stale: run `{REGENERATE}`"


def test_every_command_has_its_section():
    text = DOC.read_text()
    for name in main.commands:
        assert f"## vindex {name}\n" in text and f"Usage: vindex {name} [OPTIONS]" in text, name


def test_the_script_writes_the_page_and_it_is_what_a_terminal_shows():
    out = subprocess.run([sys.executable, "-m", "vindex.cli.reference"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out == render()
    for columns in (COLUMNS, 2 * COLUMNS):  # help is capped at the group's max_content_width
        shown = subprocess.run([sys.executable, "-c", "from vindex.cli import main; main(prog_name='vindex')",
                                "build", "--help"], capture_output=True, text=True, check=True,
                               env={**os.environ, "COLUMNS": str(columns)}).stdout
        assert f"```text\n{shown}```" in out, columns


def test_readme_links_the_reference():
    assert "(docs/cli.md)" in (ROOT / "README.md").read_text()
