"""Every `TRACKED_CKPT_*` variable is read in `tracked_ckpt.settings` and listed in the configuration page."""

from __future__ import annotations

import pathlib
import re

import pytest

from tracked_ckpt import settings

ROOT = pathlib.Path(__file__).resolve().parent.parent
NAME = re.compile(r"TRACKED_CKPT_[A-Z_]+")


def test_the_configuration_page_lists_every_variable_and_no_other():
    page = (ROOT / "docs" / "reference" / "configuration.md").read_text()
    table = page[page.index("## tracked-ckpt's variables") :]
    table = table[: table.index("\n## ", 1)]
    assert sorted(set(NAME.findall(table))) == sorted(settings.VARIABLES)


def test_only_the_settings_module_names_a_variable():
    named_elsewhere = {
        str(path.relative_to(ROOT)): sorted(set(NAME.findall(path.read_text())))
        for folder in ("tracked_ckpt", "integrations")
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "settings.py"
    }
    # Docstrings may mention a variable; only settings.py spells it in code.
    in_code = {
        name: [v for v in found if re.search(rf"[\"']{v}[\"']", (ROOT / name).read_text())]
        for name, found in named_elsewhere.items()
    }
    assert {name: found for name, found in in_code.items() if found} == {}


@pytest.mark.parametrize(
    "read, variable",
    [(settings.lease_seconds, settings.LEASE_SECONDS), (settings.stall_timeout, settings.STALL_TIMEOUT)],
)
@pytest.mark.parametrize("value", ["soon", "0", "-3", "nan"])
def test_a_bad_number_of_seconds_names_the_variable_and_the_fix(monkeypatch, read, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(
        ValueError,
        match=rf"^{variable}='{value}' is not a positive number of seconds: use e\.g\. "
        rf"{variable}=\d+\.$",
    ):
        read()


def test_defaults_and_values(monkeypatch, tmp_path):
    for variable in settings.VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    assert (settings.lease_seconds(), settings.stall_timeout(), settings.upload_niceness()) == (60.0, 30.0, 10)
    assert settings.git_repo() is None and settings.show_progress() and not settings.skip_version_check()
    assert settings.cache_dir().endswith("/.cache/tracked_ckpt")
    for variable, value in (
        (settings.LEASE_SECONDS, "2.5"),
        (settings.STALL_TIMEOUT, "inf"),
        (settings.UPLOAD_NICENESS, "40"),
        (settings.GIT_REPO, str(tmp_path)),
        (settings.PROGRESS, "0"),
        (settings.SKIP_VERSION_CHECK, "yes"),
        (settings.CACHE, str(tmp_path / "cache")),
    ):
        monkeypatch.setenv(variable, value)
    assert (settings.lease_seconds(), settings.stall_timeout(), settings.upload_niceness()) == (2.5, float("inf"), 19)
    assert settings.git_repo() == str(tmp_path) and not settings.show_progress() and settings.skip_version_check()
    assert settings.cache_dir() == str(tmp_path / "cache")
    monkeypatch.setenv(settings.UPLOAD_NICENESS, "low")
    assert settings.upload_niceness() == 0  # a tuning knob never fails training (a warning says so)
