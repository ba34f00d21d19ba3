"""Course labs: self-checks for students (``checks``) and the generator of student notebooks and
autograders from the chapters (``build``, ``python -m attnlib.labs``)."""
