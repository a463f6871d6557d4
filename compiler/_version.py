"""The version of netc (its own module, so that any stage can name it without importing the
API and everything behind it)."""

__version__ = "0.1.0"
