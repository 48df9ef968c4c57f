"""The README's Settings section is the settings table and the check ids of the code.

The table and the ids are imported from the code, so a key, a type, a
default, a meaning or a check id changed on one side only fails here.
A failure prints the line the README should have.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pushserver import rules, schema
from tests.processes import ROOT

README = ROOT / "README.md"


def section(title: str) -> list[str]:
    """The lines of the README's ``## title`` section, up to the next ``## ``."""
    lines = README.read_text().splitlines()
    start = lines.index(f"## {title}") + 1
    end = next(
        (n for n in range(start, len(lines)) if lines[n].startswith("## ")),
        len(lines),
    )
    return lines[start:end]


def shown(default: Any) -> str:
    # Settings are written with lists; the configurations hold tuples.
    return f"`{list(default)!r}`" if isinstance(default, tuple) else f"`{default!r}`"


def table_rows(group: schema.Group, seen: set[str]) -> Iterator[str]:
    """Each key of `group`, then the keys of the dicts nested in it (each group once)."""
    for setting in group.settings:
        label = group.label.format(setting.key)
        yield f"| {label} | {setting.shown_type} | {shown(setting.default)} | {setting.meaning} |"
        for part in setting.parts:
            if part.label not in seen:
                seen.add(part.label)
                yield from table_rows(part, seen)


def keys(names: frozenset[str]) -> str:
    return " and ".join(f"`{name}`" for name in sorted(names))


@pytest.fixture(scope="module")
def settings_section() -> list[str]:
    return section("Settings")


def test_the_readme_settings_table_is_the_code_table(settings_section: list[str]) -> None:
    written = [line for line in settings_section if line.startswith("| ")]
    expected = ["| key | type | default | meaning |", *table_rows(schema.TOP, set())]
    assert written == expected


def test_the_readme_lists_every_check_id_with_its_one_cause(
    settings_section: list[str],
) -> None:
    written = [line for line in settings_section if line.startswith("- `pushserver.")]
    assert written == [f"- `{check.id}`: {check.cause}" for check in rules.CHECKS]


def test_the_readme_names_the_setting_beside_the_dict(settings_section: list[str]) -> None:
    setting = schema.IGNORE_ERRORS
    expected = (
        f"Outside the dict: `{setting.key}` ({setting.shown_type}, default "
        f"{shown(setting.default)}) {setting.meaning}."
    )
    assert expected in settings_section


def test_the_readme_names_the_keys_accepted_and_ignored(settings_section: list[str]) -> None:
    expected = (
        "Accepted for the original django-pushserver's settings and ignored: "
        f"{keys(schema.IGNORED_KEYS)}, and a location's {keys(schema.IGNORED_LOCATION_KEYS)}."
    )
    assert expected in settings_section
