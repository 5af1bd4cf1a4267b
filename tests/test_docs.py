"""The documentation site: every Python example in docs/ runs, the hand-written tables match the code,
the home page leads where it promises, and `mkdocs build --strict` passes.

A fenced ```python block is run as written, in a fresh folder with MLflow's embedded store. A block
preceded by `<!-- continues the block above -->` runs after the one before it, in the same folder
and namespace (a tutorial's steps); one preceded by `<!-- not run: REASON -->` is not run (it needs a
server, a W&B project or a module of the user's), and says why.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NOT_RUN = re.compile(r"^<!-- not run: (?P<reason>\S.*) -->$")
CONTINUES = "<!-- continues the block above -->"
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")


@dataclasses.dataclass
class Example:
    page: str
    line: int
    source: str
    not_run: str | None = None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def examples(path: Path) -> list[Example]:
    """The page's Python examples; a continued block is joined to the one before it."""
    page = str(path.relative_to(DOCS))
    lines = path.read_text().splitlines()
    found: list[Example] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if fence["lang"] == "python":
            source = "\n".join(lines[i + 1 : end]) + "\n"
            before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = NOT_RUN.match(before)
            if before == CONTINUES:
                assert found, f"{page}:{i + 1}: nothing above to continue"
                found[-1].source += "\n" + source
            else:
                found.append(Example(page, i + 1, source, marker["reason"] if marker else None))
        i = end + 1
    return found


ALL = [example for path in sorted(DOCS.rglob("*.md")) for example in examples(path)]
RUN = [example for example in ALL if example.not_run is None]


def test_the_docs_have_examples_and_few_are_not_run():
    assert len(RUN) >= 10, [e.id for e in RUN]
    assert len(ALL) - len(RUN) <= 6, [e.id for e in ALL if e.not_run]


@pytest.mark.parametrize("example", RUN, ids=[e.id for e in RUN])
def test_the_example_runs(example, embedded_store, workdir):
    code = compile(example.source, str(DOCS / example.page) + f" (block at line {example.line})", "exec")
    exec(code, {"__name__": "__main__"})


def read(page: str) -> str:
    return (DOCS / page).read_text()


def test_the_schema_page_describes_every_key_and_no_other():
    from tracked_ckpt.record import SCHEMA_KEYS

    rows = [line for line in read("reference/schema.md").splitlines() if line.startswith("| `")]
    described = [key for row in rows for key in re.findall(r"`(\w+)`", row.split("|")[1])]
    assert sorted(described) == sorted(SCHEMA_KEYS)


def test_the_configuration_page_describes_every_variable_and_no_other():
    from tracked_ckpt.settings import VARIABLES

    described = set(re.findall(r"^\| `(TRACKED_CKPT_\w+)`", read("reference/configuration.md"), re.MULTILINE))
    assert described == set(VARIABLES)


def test_the_errors_page_documents_every_error_class():
    from tracked_ckpt import errors

    classes = {name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, Exception)}
    documented = set(re.findall(r"^::: tracked_ckpt\.errors\.(\w+)$", read("reference/errors.md"), re.MULTILINE))
    assert documented == classes


def test_the_api_page_documents_every_public_name():
    import tracked_ckpt

    page = read("reference/api.md") + read("reference/errors.md")
    documented = set(re.findall(r"^::: tracked_ckpt\.[\w.]+\.(\w+)$", page, re.MULTILINE))
    assert set(tracked_ckpt.__all__) <= documented


def test_the_home_page_links_to_resume_loading_and_the_cli():
    home = read("index.md")
    for page in ("how-to/preemption.md", "how-to/resume.md", "how-to/serving.md", "reference/cli.md"):
        assert f"]({page})" in home, page


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    cli_page = (site / "reference" / "cli" / "index.html").read_text()
    from tracked_ckpt import cli

    parser = cli._parser()
    (commands,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    for name in commands.choices:  # generated from the parser: every command has its section
        assert f'id="tracked-ckpt-{name}"' in cli_page, name
