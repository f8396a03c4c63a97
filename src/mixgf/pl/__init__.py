"""mixgf.pl (filled by later releases)."""
