"""Sphinx configuration for the unified_map documentation."""

project = "unified_map"
author = "unified_map developers"
copyright = "2026, unified_map developers"

extensions = ["sphinx.ext.autodoc", "numpydoc"]

# The API pages document the public names; numpydoc's autosummary tables of every method
# would repeat them.
numpydoc_show_class_members = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"

html_theme = "alabaster"
html_static_path = ["_static"]
exclude_patterns = ["_build"]
