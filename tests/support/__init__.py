"""Code the tests share, imported by them and run by their subprocesses; no tests live here.

`tests/` is on `sys.path` under pytest (its `conftest.py` puts it there) and in every child
process (each inserts it), so modules here are imported as `support.<module>`.
"""
