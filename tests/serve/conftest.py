"""The serve tests drive the session's headless Chromium: the `browser` fixture of the viz tests
(tests/conftest.py once it is shared there, else tests/viz/conftest.py)."""

try:
    from conftest import browser  # noqa: F401
except ImportError:
    from viz.conftest import browser  # noqa: F401
