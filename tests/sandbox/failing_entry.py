"""A sandbox entry module that fails at import, as a broken runtime would (test helper)."""

raise RuntimeError("this entry module cannot be imported")
