"""Usage and cost reports with charts."""
