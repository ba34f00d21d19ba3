"""The book's build tooling, apart from the installable library ``attnlib``.

It lives in the repository only (``pip install attnlib`` does not carry it) and knows the
repository's folders (:data:`booktools.paths.REPO`): executing the notebooks into ``book/``
(``python -m booktools.book``), the generated pages (results overview, benchmark,
reproducibility), the Sphinx extension of the book (``book_html``) and the course labs
(``python -m booktools.labs``). It imports ``attnlib``; ``attnlib`` never imports it.
"""
