"""The ``translate:`` key of a bridge. The model lives with the config loader
(`gateway.config.translate`), which imports it while it initialises; this name stays for the
translator's own code."""

from gateway.config.translate import TranslateConfig

__all__ = ["TranslateConfig"]
