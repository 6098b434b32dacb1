"""Batch files (CSV) -> validated requests and rejected rows.

Read in the order the data flows: ``columns`` (the column sets a file may use), ``files``
(a file -> rows), ``rows`` (one row -> a request or a rejection, in a useful order),
``fields`` (one cell -> a canonical value, by the capability table's rules), and
``overrides`` (run-level changes, re-checked by the same rules).
"""
