"""Course labs from the chapters: the generator of student notebooks and autograders
(``build``), class grading into a gradebook (``gradebook``), the generated table of the
teacher page (``teachers``) and their command line (``cli``: ``python -m booktools.labs``).
The students' self-checks are part of the library: :mod:`attnlib.labs.checks`."""
