"""The one exception type for bad user input."""


class UserError(Exception):
    """A problem with the user's input or environment, with the fix in its message.

    The CLI prints it as one paragraph and exits with code 2 (no traceback).
    """
