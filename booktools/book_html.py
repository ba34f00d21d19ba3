"""Sphinx extension: the book's HTML pages work offline and load without console errors.

* **MathJax served locally.** Sphinx points ``mathjax_path`` at a CDN, so a book read
  offline (or tested on a machine without internet) shows raw TeX. The parts of MathJax 3
  the pages use (the TeX-to-CHTML bundle, its fonts, the components it loads on demand)
  are copied from the ``django-static-mathjax`` package, a dependency-free wheel of
  MathJax's release files, into ``_static/mathjax/``, and ``mathjax_path`` points there.
* **Inline scripts once.** With jupyter-book 1, sphinx-thebe adds its configuration script
  (``const THEBE_JS_URL = ...``) twice to every page, and the second copy throws
  "Identifier 'THEBE_JS_URL' has already been declared"; repeated inline scripts are dropped.

``_config.yml`` loads it with ``sphinx: extra_extensions: [booktools.book_html]``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

#: What the pages need from MathJax's ``es5`` folder: the bundle and the folders it loads from.
BUNDLE = "tex-chtml.js"
ON_DEMAND = ("output/chtml", "input/tex/extensions", "ui", "a11y", "adaptors")
STATIC_FOLDER = "mathjax"


def mathjax_source() -> Path:
    """MathJax's ``es5`` folder inside the installed ``django-static-mathjax`` package."""
    try:
        import mathjax
    except ImportError as err:
        raise RuntimeError("the book serves MathJax itself and needs the django-static-mathjax package: "
                           "pip install -e '.[book]'") from err
    source = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (source / BUNDLE).exists():
        raise RuntimeError(f"{source / BUNDLE} is missing: reinstall django-static-mathjax")
    return source


def copy_mathjax(static_dir: Path) -> Path:
    """Copy the bundle and its on-demand components into ``static_dir/mathjax``; returns that folder."""
    source, target = mathjax_source(), static_dir / STATIC_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / BUNDLE, target / BUNDLE)
    for folder in ON_DEMAND:
        shutil.copytree(source / folder, target / folder, dirs_exist_ok=True)
    return target


def _use_local_path(app, config) -> None:
    from sphinx.ext.mathjax import MATHJAX_URL

    mathjax_source()  # fail at the start of the build, not after it
    if config.mathjax_path == MATHJAX_URL:
        config.mathjax_path = f"{STATIC_FOLDER}/{BUNDLE}"


def _drop_repeated_inline_scripts(app, pagename, templatename, context, doctree) -> None:
    seen, kept = set(), []
    for script in context.get("script_files", []):
        body = getattr(script, "attributes", {}).get("body")
        if body is None or body not in seen:
            kept.append(script)
        seen.add(body)
    context["script_files"] = kept


def _copy_into_build(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        copy_mathjax(Path(app.outdir) / "_static")


def setup(app) -> dict:
    app.setup_extension("sphinx.ext.mathjax")
    app.connect("config-inited", _use_local_path)
    app.connect("html-page-context", _drop_repeated_inline_scripts)
    app.connect("build-finished", _copy_into_build)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
