"""mixgf.get (filled by later releases)."""
