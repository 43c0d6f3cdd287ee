"""The one exception type for bad input: the CLI prints its message as one line and exits 2."""


class UserError(Exception):
    """Input the user can fix (unknown model, malformed config, impossible sizes...)."""
