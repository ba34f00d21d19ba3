"""Course labs: the self-checks that students run (``checks``). The labs are built and graded
by the book's tooling, ``booktools.labs``, in the repository."""
