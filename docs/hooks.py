"""MkDocs hook: writes the generated parts of the reference into the pages that ask for them.

A page asks with a marker comment on a line of its own:

- `<!-- generated: cli -->`: every `tracked-ckpt` command, from the CLI's own argparse parser
  (`tracked_ckpt.cli`), so the page cannot drift from `--help`;
- `<!-- generated: schema-keys -->`: the keys of the metadata schema, in order (`record.SCHEMA_KEYS`);
- `<!-- generated: variables -->`: every `TRACKED_CKPT_*` variable (`settings.VARIABLES`);
- `<!-- generated: modules -->`: each module of the package and its docstring's first line;
- `<!-- generated: floors -->`: the package floor by floor, from the modules' own imports.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority

_MARKERS = {
    "<!-- generated: cli -->": "cli",
    "<!-- generated: schema-keys -->": "schema_keys",
    "<!-- generated: variables -->": "variables",
    "<!-- generated: modules -->": "modules",
    "<!-- generated: floors -->": "floors",
}


ROOT = Path(__file__).resolve().parent.parent
# The package as installed, for mkdocstrings to read: `tracked_ckpt/` with `integrations/` linked in as
# `tracked_ckpt/integrations` (the source tree keeps them apart; the Makefile's mypy view does the same).
API_VIEW = ROOT / "build" / "docs-api"


@event_priority(100)  # before mkdocstrings' own on_config, which looks for its `paths`
def on_config(config: Any) -> Any:
    """Lay out the package as installed for mkdocstrings, and read `Example:` sections as examples."""
    # Copies, not links: griffe follows a linked `__init__.py` back to the source tree, without integrations.
    package = API_VIEW / "tracked_ckpt"
    shutil.rmtree(API_VIEW, ignore_errors=True)
    shutil.copytree(ROOT / "tracked_ckpt", package, ignore=_not_source)
    shutil.copytree(ROOT / "integrations", package / "integrations", ignore=_not_source)
    _examples_as_examples()
    return config


def _not_source(folder: str, names: list[str]) -> list[str]:
    return [name for name in names if not name.endswith((".py", ".typed"))]


def _examples_as_examples() -> None:
    """Read the package's `Example:` sections as examples (doctests become code), as `Examples:` are.

    The docstrings say `Example:` (Keras's and the standard library's spelling); griffe's Google
    parser reads only the plural as an examples section and the singular as an admonition, where
    `>>>` lines would render as prose.
    """
    from griffe import DocstringSectionKind

    try:
        from griffe._internal.docstrings import google
    except ImportError:  # another griffe layout: `Example:` stays an admonition
        return
    google._section_kind.setdefault("example", DocstringSectionKind.examples)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace each marker line with what it names."""
    for marker, what in _MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, globals()[f"{what}_markdown"]())
    return markdown


def cli_markdown() -> str:
    """The `tracked-ckpt` command, every subcommand and option, as Markdown (from the parser)."""
    os.environ.setdefault("COLUMNS", "100")  # argparse wraps usage lines to the terminal's width
    from tracked_ckpt import cli

    parser = cli._parser()
    commands = _subcommands(parser)
    lines = [
        f"`{parser.prog}`: {parser.description}",
        "",
        "```text",
        parser.format_usage().strip(),
        "```",
        "",
        *_options_table(parser),
        "| command | what it does |",
        "|---|---|",
        *(f"| [`{name}`](#{parser.prog}-{name}) | {_escape(helptext)} |" for name, (_, helptext) in commands.items()),
        "",
    ]
    for name, (sub, helptext) in commands.items():
        lines += [
            f"## `{parser.prog} {name}` {{#{parser.prog}-{name}}}",
            "",
            helptext[:1].upper() + helptext[1:] + ".",
            "",
            "```text",
            sub.format_usage().strip(),
            "```",
            "",
            *_options_table(sub),
        ]
    return "\n".join(lines)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}
    return {}


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            name = ", ".join(action.option_strings)
            if action.nargs != 0:
                name += " " + (action.metavar or action.dest.upper())
        else:
            name = action.metavar or action.dest
            if action.nargs in ("*", "?"):
                name = f"[{name} ...]" if action.nargs == "*" else f"[{name}]"
        helptext = action.help or ("required" if not action.option_strings else "")
        if action.choices and not isinstance(action.choices, dict):
            helptext += f" (one of: {', '.join(map(str, action.choices))})"
        rows.append(f"| `{name}` | {_escape(helptext)} |")
    if not rows:
        return []
    return ["| argument | meaning |", "|---|---|", *rows, ""]


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def schema_keys_markdown() -> str:
    """The schema's keys, in the order `record.SCHEMA_KEYS` defines."""
    from tracked_ckpt.record import SCHEMA_KEYS, TAG_PREFIX

    keys = ", ".join(f"`{key}`" for key in SCHEMA_KEYS)
    return f"The keys, in `tracked_ckpt.SCHEMA_KEYS` order: {keys}. On MLflow each is a tag `{TAG_PREFIX}<key>`."


def variables_markdown() -> str:
    """Every `TRACKED_CKPT_*` variable `tracked_ckpt.settings` reads."""
    from tracked_ckpt.settings import VARIABLES

    return "Read by `tracked_ckpt.settings`: " + ", ".join(f"`{name}`" for name in VARIABLES) + "."


def modules_markdown() -> str:
    """A table of the package's modules (core, then integrations) and each docstring's first line."""
    root = ROOT
    rows = ["| module | what it is |", "|---|---|"]
    for package, folder in (
        ("tracked_ckpt", root / "tracked_ckpt"),
        ("tracked_ckpt.integrations", root / "integrations"),
    ):
        for path in sorted(folder.glob("*.py")):
            docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
            module = package if path.stem == "__init__" else f"{package}.{path.stem}"
            first = docstring.strip().splitlines()[0] if docstring.strip() else ""
            rows.append(f"| `{module}` | {_escape(first)} |")
    return "\n".join(rows)


def floors_markdown() -> str:
    """The core's modules floor by floor (each imports only floors below it), and what integrations import.

    A module's floor is one above the highest floor it imports from (at run time: imports made only
    for type checkers do not count). `__init__.py` names the public API lazily and is left out.
    """
    core = {path.stem: path for path in (ROOT / "tracked_ckpt").glob("*.py") if path.stem != "__init__"}
    imports = {name: _package_imports(path, core) - {name} for name, path in core.items()}
    floors: dict[str, int] = {}

    def floor(name: str, below: tuple[str, ...] = ()) -> int:
        if name not in floors:
            if name in below:
                raise ValueError(f"import cycle: {' -> '.join((*below, name))}")
            floors[name] = 1 + max((floor(other, (*below, name)) for other in imports[name]), default=0)
        return floors[name]

    for name in sorted(core):
        floor(name)
    integrations = sorted((ROOT / "integrations").glob("*.py"))
    used = {other for path in integrations for other in _package_imports(path, core)}
    lines = ["```text"]
    for level in sorted(set(floors.values()), reverse=True):
        lines.append(f"{level}  " + "  ".join(f"{name}.py" for name in sorted(floors) if floors[name] == level))
    lines += [
        "",
        f"integrations/  (tracked_ckpt.integrations) imports floors 1-{max(floors[name] for name in used)} only:",
        "   " + "  ".join(path.name for path in integrations if path.stem != "__init__"),
        "```",
    ]
    return "\n".join(lines)


def _package_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `path` imports at run time (anywhere in it, outside `if TYPE_CHECKING`)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "tracked_ckpt" and len(parts) == 1:
                found |= {alias.name for alias in node.names}
            elif parts[0] == "tracked_ckpt":
                found.add(parts[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("tracked_ckpt.")}
    return found & set(modules)
