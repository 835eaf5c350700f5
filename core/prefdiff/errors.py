"""The error types for mistakes a user can fix: the command line prints one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user: a config, a name, a file, a plugin.

    The message names the culprit and the fix in one line. The CLI prints it
    without a traceback and exits with code 2; any other exception is a bug.
    """


class PluginError(UserError):
    """A plugin broke a hook's contract; the message names the plugin."""
