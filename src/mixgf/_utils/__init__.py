"""Small helpers used by every layer of mixgf (files and docstrings); they import nothing else from mixgf."""
