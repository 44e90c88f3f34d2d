"""Sphinx configuration for the airflow-bettertoken docs: ``make docs`` builds them into docs/_build/html.

The build runs with warnings as errors (``-W``), so a broken reference, a literalinclude whose file is
gone or a docstring that is not valid reStructuredText fails it. Nothing is fetched at build time (no
intersphinx): CI reaches only the package registries.
"""

from __future__ import annotations

import airflow_bettertoken

project = "airflow-bettertoken"
author = "The airflow-bettertoken authors"
copyright = "2026, The airflow-bettertoken authors"
release = airflow_bettertoken.__version__
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = f"airflow-bettertoken {release}"
html_theme_options = {
    "description": "Edit images in S3 with gpt-image-2, from Airflow 3",
    "fixed_sidebar": True,
    "page_width": "1200px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}

# The API reference: members in source order, with their signatures' annotations in the description.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Airflow's own classes are documented by Airflow; their names in our signatures need no target here.
nitpicky = False
