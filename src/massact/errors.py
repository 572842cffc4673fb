"""The one exception type users see: a single line, exit status 2."""


def install_hint(extra: str) -> str:
    """The command that installs massact with its optional `extra`, quoted so that any shell takes it whole."""
    return f"pip install 'massact[{extra}]'"


class MassactError(Exception):
    """A problem with the user's input or environment, with the fix in the message."""
