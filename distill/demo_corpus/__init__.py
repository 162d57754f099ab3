"""Embedded German→English demo corpus (see LICENSES.md; rebuilt by ``build.py``)."""
