"""The core's built-in plugins (loaded like any other, see plugins.DEFAULT_PLUGINS)."""
