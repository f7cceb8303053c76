"""The shipped tasks, and the builders that make them from the embedded corpus (build.py)."""
