"""mixgf.tl (filled by later releases)."""
