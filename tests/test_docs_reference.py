"""The API reference of the documentation site (``nox -s docs``) documents every public name.

The site is built with Sphinx and sphinx-autoapi (``docs/conf.py``). ``nox -s docs`` builds it
with warnings as errors and then runs this module on that build (``JEEVESAGENT_DOCS_HTML`` names
it, and makes a missing build or a missing Sphinx a failure). Run alone with Sphinx installed,
this module builds the site itself into a temporary folder; without Sphinx it is skipped with a
reason (the ``tests`` session installs no documentation tools: ``nox -s docs`` runs it, and
``.ci/run`` runs that session).
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import jeevesagent.runtime

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ["inproc", "journal", "journaled", "postgres", "sqlite", "testing"]
# The public modules of the extras (the docs session installs them): each has a reference page.
EXTRAS = ["dbos", "pydantic_ai", "temporal", "ui"]
BUILT = os.environ.get("JEEVESAGENT_DOCS_HTML")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built HTML site: the one ``nox -s docs`` made, or one built here."""
    if BUILT:
        path = Path(BUILT)
        assert (path / "index.html").is_file(), f"JEEVESAGENT_DOCS_HTML={BUILT}: no built site"
        return path
    if importlib.util.find_spec("sphinx") is None or importlib.util.find_spec("autoapi") is None:
        pytest.skip("Sphinx and sphinx-autoapi are not installed here: `nox -s docs` runs this")
    out = tmp_path_factory.mktemp("site")
    doctrees = tmp_path_factory.mktemp("doctrees")
    sphinx = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    build = subprocess.run(
        [*sphinx, "-d", str(doctrees), str(ROOT / "docs"), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out


def anchors(page: Path) -> set[str]:
    """The ids of the documented objects on a reference page."""
    return set(re.findall(r'<dt class="sig[^"]*" id="([^"]+)"', page.read_text()))


def module_page(site: Path, module: str) -> Path:
    page = site / "reference" / Path(*module.split(".")) / "index.html"
    assert page.is_file(), f"{module} has no reference page"
    return page


@pytest.mark.timeout(300)
def test_every_name_of_the_package_is_in_the_reference(site: Path) -> None:
    documented = anchors(module_page(site, "jeevesagent.runtime"))
    missing = [
        n for n in jeevesagent.runtime.__all__ if f"jeevesagent.runtime.{n}" not in documented
    ]
    assert missing == [], f"not in the reference of jeevesagent.runtime: {missing}"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("submodule", PUBLISHED + EXTRAS)
def test_every_name_of_a_published_submodule_is_in_its_page(site: Path, submodule: str) -> None:
    module = importlib.import_module(f"jeevesagent.runtime.{submodule}")
    qualified = f"jeevesagent.runtime.{submodule}"
    documented = anchors(module_page(site, qualified))
    missing = [n for n in module.__all__ if f"{qualified}.{n}" not in documented]
    assert missing == [], f"not in the reference of {qualified}: {missing}"


@pytest.mark.timeout(300)
def test_private_modules_have_no_page_and_no_entry(site: Path) -> None:
    pages = sorted(p.relative_to(site).as_posix() for p in (site / "reference").rglob("*.html"))
    assert [p for p in pages if "/_" in p] == [], "a private module got a page"
    expected = {"jeevesagent", "jeevesagent/runtime"} | {
        f"jeevesagent/runtime/{m}" for m in PUBLISHED + EXTRAS
    }
    assert {p.rsplit("/index.html", 1)[0].removeprefix("reference/") for p in pages} == expected
    for page in pages:
        private = [a for a in anchors(site / page) if "._" in a.split(".__")[0]]
        assert private == [], f"{page} documents private names: {private}"
        # Signatures, types and base classes name public import paths, never a private module.
        text = html.unescape(re.sub(r"<[^>]+>", "", (site / page).read_text()))
        paths = sorted(set(re.findall(r"jeevesagent\.runtime\._[a-z]\w*[\w.]*", text)))
        assert paths == [], f"{page} shows private module paths: {paths}"


@pytest.mark.timeout(300)
def test_entries_show_signatures_with_types_and_docstrings(site: Path) -> None:
    text = html.unescape(
        re.sub(r"<[^>]+>", "", module_page(site, "jeevesagent.runtime").read_text())
    )
    text = re.sub(r"\s+", " ", text)
    for expected in [
        # a method's signature, with the types of its arguments and of its result
        "wait_for_signal(session_id: str, name: str, *, timeout: float | None = None) → Any",
        # a dataclass's fields, with their types
        "session_id: str",
        # a docstring, on a re-exported class
        "A row of the sessions table",
    ]:
        assert expected in text, f"not in the reference page: {expected!r}"
