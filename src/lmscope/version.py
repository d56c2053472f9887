"""lmscope's version (pyproject.toml's `version`), in a module of its own: any part of the
package can read it without importing the package's `__init__`, which imports them all."""

__version__ = "0.1.0"
