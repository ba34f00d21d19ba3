"""Course labs: self-checks for students (``checks``), the generator of student notebooks and
autograders from the chapters (``build``), the generated table of the teacher page
(``teachers``), and their command line (``cli``: ``python -m attnlib.labs``)."""
