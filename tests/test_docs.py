"""The documentation: every Python example in docs/ and the README runs, the hand-written tables match
the code, the home page leads where it promises, and `mkdocs build --strict` passes.

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
    page = str(path.relative_to(ROOT))
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


README = ROOT / "README.md"
ALL = [example for path in [README, *sorted(DOCS.rglob("*.md"))] for example in examples(path)]
RUN = [example for example in ALL if example.not_run is None]


def test_the_docs_have_examples_and_few_are_not_run():
    assert len(RUN) >= 10, [e.id for e in RUN]
    assert len(ALL) - len(RUN) <= 6, [e.id for e in ALL if e.not_run]


@pytest.mark.parametrize("example", RUN, ids=[e.id for e in RUN])
def test_the_example_runs(example, embedded_store, workdir):
    code = compile(example.source, str(ROOT / example.page) + f" (block at line {example.line})", "exec")
    exec(code, {"__name__": "__main__"})


def test_the_readme_quick_start_is_run_as_written():
    readme = [example for example in ALL if example.page == "README.md"]
    assert readme, "the README's Quick start should be a python block"
    assert all(example.not_run is None for example in readme), [e.id for e in readme]


def read(page: str) -> str:
    return (DOCS / page).read_text()


def _slug(heading: str) -> str:
    """The anchor MkDocs (and GitHub) give a heading."""
    return re.sub(r"[^\w\s-]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_links_into_the_docs_resolve():
    links = re.findall(r"\]\(((?!https?:)[^)#]+)(?:#([^)]+))?\)", README.read_text())
    assert {"docs/how-to/resume.md", "docs/how-to/serving.md", "docs/reference/cli.md"} <= {t for t, _ in links}
    for target, anchor in links:
        assert (ROOT / target).is_file(), target
        if anchor:
            headings = re.findall(r"^#+ (.+)$", (ROOT / target).read_text(), re.MULTILINE)
            assert anchor in {_slug(h) for h in headings}, (target, anchor)


def _table(text: str, first_column: str) -> dict[str, list[str]]:
    """A Markdown table's rows by their first cell, from the table whose header starts with `first_column`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_the_versions_tables_say_what_pyproject_and_the_constraints_say():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        Requirement(r).name.lower(): str(Requirement(r).specifier)
        for r in [
            *project["dependencies"],
            *project["optional-dependencies"]["mlflow"],
            *project["optional-dependencies"]["wandb"],
        ]
    }
    pins = dict(
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    pins = {name.strip().lower(): version.strip() for name, version in pins.items()}
    readme = _table(README.read_text(), "package")
    assert readme == _table(read("reference/versions.md"), "package")
    for row, package in [
        ("keras", "keras"),
        ("mlflow (`[mlflow]`)", "mlflow"),
        ("wandb (`[wandb]`)", "wandb"),
        ("GitPython", "gitpython"),
    ]:
        supported, tested = readme[row]
        spec = ",".join(sorted(declared[package].split(","), reverse=True))
        assert f"`{spec}`" in supported, (row, declared[package])
        assert pins[package] in tested, (row, pins[package])
        floor = re.search(r">=([\d.]+)", declared[package])[1]
        assert re.search(rf"\b{re.escape(floor)}(\.0)?\b", tested), (row, floor)
    assert f"`sqlalchemy{declared['sqlalchemy']}`" in readme["mlflow (`[mlflow]`)"][0]
    assert readme["Python"][0].startswith(project["requires-python"].removeprefix(">="))
    assert "TensorFlow " + ".".join(pins["tensorflow"].split(".")[:2]) in readme["backend"][1]


def test_the_callback_arguments_table_is_its_signature():
    import ast
    import inspect

    import keras

    from tracked_ckpt import TrackedModelCheckpoint

    keras_own = inspect.signature(keras.callbacks.ModelCheckpoint).parameters
    ours = {
        name: p.default
        for name, p in inspect.signature(TrackedModelCheckpoint).parameters.items()
        if name not in keras_own
    }
    table = {
        name.strip("`"): cells[0].strip("`") for name, cells in _table(read("reference/api.md"), "argument").items()
    }
    assert set(table) == set(ours)
    for name, default in ours.items():
        if name == "preempt_on":
            assert [s.name for s in default] == [table[name]]
        else:
            assert ast.literal_eval(table[name]) == default, (name, table[name], default)


def test_the_ls_examples_show_the_columns_ls_prints(embedded_store, workdir, capsys):
    from tracked_ckpt.cli import main

    assert main(["ls", "--all-experiments"]) == 0
    header = capsys.readouterr().out.split()
    for page in ("reference/cli.md", "tutorial.md"):
        shown = [line.split() for line in read(page).splitlines() if line.startswith("name ")]
        assert shown == [header], page


def _source_text() -> str:
    """The package's code as one line of words: string pieces joined, each placeholder a NUL."""
    source = "\n".join(
        p.read_text() for folder in ("tracked_ckpt", "integrations") for p in (ROOT / folder).glob("*.py")
    )
    source = re.sub(r'"\s*\n\s*f?"', "", source)  # implicit concatenation across lines
    source = re.sub(r"\{[^{}]*\}|%[-.\d]*[rsdgf]", " \0 ", source)
    return " ".join(source.split())


def test_the_messages_on_the_errors_page_are_the_codes():
    """Most of each message's wording (runs of 3 words between placeholders) is in the code's strings."""
    source = _source_text()
    placeholder = r"'[^']*'|\"[^\"]*\"|…|\{[^}]*\}|\[[^\]]*\]|\d+(?:\.\d+)*"
    for situation, (message,) in _table(read("reference/errors.md"), "situation").items():
        words = [
            fragment.split() for shown in re.findall(r"`([^`]*)`", message) for fragment in re.split(placeholder, shown)
        ]
        runs = [" ".join(w[i : i + 3]).strip(".,:;") for w in words for i in range(len(w) - 2)]
        found = [run for run in runs if run in source]
        assert not runs or len(found) >= 0.6 * len(runs), (situation, sorted(set(runs) - set(found)))


def test_the_errors_page_names_the_built_in_bases():
    from tracked_ckpt import errors

    classes = [value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, Exception)]
    bases = {
        base.__name__
        for cls in classes
        for base in cls.__bases__
        if base.__module__ == "builtins" and base is not Exception
    }
    named = re.search(r"keeps its built-in base\s*\(([^)]*)\)", read("reference/errors.md"))[1]
    assert set(re.findall(r"`(\w+)`", named)) == bases


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
