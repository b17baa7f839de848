"""Sphinx configuration for the flowrhythm docs.

Build with ``nox -s docs``: HTML with ``-W -n`` (every warning and every broken
cross-reference fails the build) and the doctest builder, which runs the
examples on these pages and in the docstrings.
"""

from __future__ import annotations

import os
import sys
import types
from importlib.metadata import version as _version
from typing import Any, ParamSpec, TypeVar, TypeVarTuple

from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging

import flowrhythm

# -- Project -----------------------------------------------------------------

project = "flowrhythm"
author = "Andrey Maximov and the flowrhythm developers"
copyright = f"2026, {author}"
release = _version("flowrhythm")
version = ".".join(release.split(".")[:2])

# -- General -----------------------------------------------------------------

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# -- autodoc and napoleon (Google-style docstrings) --------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"

napoleon_google_docstring = True
napoleon_numpy_docstring = False

# -- doctest -----------------------------------------------------------------

# Blocks on these pages are self-contained; ``>>>`` examples in docstrings get
# the public names without an import line.
doctest_global_setup = "from flowrhythm import *"

# -- intersphinx -------------------------------------------------------------

# Inventories are downloaded at build time. Where that cannot work (CI reaches
# no documentation hosts), a failed download is an unsuppressable warning and
# -W would fail the build, so links to other projects are opt-in: set
# FLOWRHYTHM_DOCS_INTERSPHINX=1 (Read the Docs builds turn them on by themselves).
USE_INTERSPHINX = (
    os.environ.get("FLOWRHYTHM_DOCS_INTERSPHINX") == "1" or os.environ.get("READTHEDOCS") == "True"
)

intersphinx_timeout = 30
intersphinx_mapping: dict[str, tuple[str, None]] = {}
if USE_INTERSPHINX:
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "anyio": ("https://anyio.readthedocs.io/en/stable/", None),
        "trio": ("https://trio.readthedocs.io/en/stable/", None),
        "attrs": ("https://www.attrs.org/en/stable/", None),
    }
else:
    # Without inventories, references into the standard library, anyio, trio
    # and attrs cannot resolve. Ignore exactly those; references to anything
    # else (flowrhythm's own names above all) are still checked by -n.
    _external = sorted(
        {"anyio", "trio", "attr", "attrs", "rich", "prometheus_client", *sys.stdlib_module_names}
    )
    nitpick_ignore_regex = [(r"py:.*", rf"(?:{'|'.join(_external)})(?:\..+)?")]

# -- HTML --------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"flowrhythm {release}"
html_theme_options = {
    "description": "Async job pipelines with auto-scaling workers, on asyncio and trio.",
    "fixed_sidebar": True,
}


# -- The public façade --------------------------------------------------------
#
# flowrhythm defines everything in private modules and sets each public
# object's __module__ to "flowrhythm" (as trio does), which autodoc needs help with.


def _private_modules() -> list[types.ModuleType]:
    return [
        module
        for name, module in sorted(sys.modules.items())
        if name.startswith("flowrhythm._") and module is not None
    ]


# 1. Type variables in signatures (``Callable[[_P], _P]``) have no page to link
#    to. Ignore exactly those, so -n still reports any other private name that
#    leaks into a signature.
nitpick_ignore = [
    ("py:class", f"{module.__name__}.{name}")
    for module in _private_modules()
    for name, value in vars(module).items()
    if isinstance(value, TypeVar | ParamSpec | TypeVarTuple)
]
# flowrhythm.testing.run_virtual's type variables (a ``*Ts`` shows unqualified).
nitpick_ignore += [("py:class", "flowrhythm.testing.T"), ("py:class", "Ts")]


# 2. autodoc reads the source of ``__module__`` -- now flowrhythm/__init__.py --
#    for ``#:`` comments on attributes (enum members, for one), for the source
#    order of members (autodoc_member_order = "bysource") and for overloads.
#    Hand it what the defining modules say about the public classes.
def _merge_private_analyzers(app: Any) -> None:
    public = set(flowrhythm.__all__)

    def is_public(qualname: str) -> bool:
        return qualname.split(".")[0] in public

    facade = ModuleAnalyzer.for_module("flowrhythm")
    facade.analyze()
    for module in _private_modules():
        analyzer = ModuleAnalyzer.for_module(module.__name__)
        analyzer.analyze()
        facade.attr_docs.update(
            {key: doc for key, doc in analyzer.attr_docs.items() if is_public(key[0])}
        )
        facade.tagorder.update(
            {name: order for name, order in analyzer.tagorder.items() if is_public(name)}
        )
        facade.overloads.update(
            {name: sigs for name, sigs in analyzer.overloads.items() if is_public(name)}
        )
        facade.finals.extend(name for name in analyzer.finals if is_public(name))


# 3. Every public name is documented: a name in __all__ without an entry is a
#    warning, so -W fails the build.
def _check_api_documented(app: Any, env: Any) -> None:
    documented = env.get_domain("py").objects
    for name in flowrhythm.__all__:
        if f"flowrhythm.{name}" not in documented:
            logging.getLogger(__name__).warning(
                "flowrhythm.%s is in flowrhythm.__all__ but not documented (see api.md)", name
            )


def setup(app: Any) -> None:
    app.connect("builder-inited", _merge_private_analyzers)
    app.connect("env-check-consistency", _check_api_documented)
