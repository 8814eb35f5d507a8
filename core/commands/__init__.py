"""One module per ``python -m core`` command; see core/__main__.py."""
