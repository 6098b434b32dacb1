"""Keeping the storage root tidy: retention, the orphan sweep, compaction."""
