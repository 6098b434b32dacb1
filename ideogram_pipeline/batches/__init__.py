"""Batch files (CSV) -> validated requests and rejected rows."""
