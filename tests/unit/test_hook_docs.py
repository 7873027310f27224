"""Every hookspec is documented: in its docstring (contract) and in the README's plugin section."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from claude_auth_sync import hookspecs

README = Path(__file__).resolve().parents[2] / "README.md"
SPECS = [(name, fn) for name, fn in vars(hookspecs).items() if name.startswith("cas_") and callable(fn)]


def test_there_are_seven_hooks() -> None:
    assert sorted(name for name, _ in SPECS) == [
        "cas_backends", "cas_commands", "cas_diagnose", "cas_probes", "cas_restorers", "cas_settings_sections",
        "cas_sinks"]


@pytest.mark.parametrize(("name", "fn"), SPECS, ids=[n for n, _ in SPECS])
def test_hookspec_docstring_is_a_contract(name, fn) -> None:
    doc = inspect.getdoc(fn) or ""
    assert ":returns:" in doc and "Must never" in doc and "Example::" in doc and "@hookimpl" in doc


@pytest.mark.parametrize(("name", "fn"), SPECS, ids=[n for n, _ in SPECS])
def test_hook_and_its_signature_are_in_the_readme(name, fn) -> None:
    text = README.read_text()
    signature = inspect.signature(fn)
    params = ", ".join(signature.parameters)
    returns = signature.return_annotation
    heading = f"### `{name}({params}) -> {returns}`"
    assert heading in text, f"README lacks the heading {heading!r}"


def test_readme_documents_no_hook_that_does_not_exist() -> None:
    documented = set(re.findall(r"^### `(cas_[a-z_]+)\(", README.read_text(), re.MULTILINE))
    assert documented == {name for name, _ in SPECS}
