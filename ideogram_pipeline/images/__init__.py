"""Image bytes: safety checks, PNG metadata chunks, fingerprints, contact sheets."""
