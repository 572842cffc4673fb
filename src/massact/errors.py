"""The one exception type users see: a single line, exit status 2."""


class MassactError(Exception):
    """A problem with the user's input or environment, with the fix in the message."""
