"""Course labs: self-checks for students (``checks``), the generator of student notebooks and
autograders from the chapters (``build``, ``python -m attnlib.labs``), and the generated table
of the teacher page (``teachers``)."""
