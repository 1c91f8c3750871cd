"""The one exception type for problems a user can fix."""


class TlearnError(Exception):
    """Bad path, bad option or unusable data: the message says what and how to fix it.

    The CLI prints it as a single ``Error: ...`` line and exits with code 2. Anything else
    that escapes is a bug and keeps its traceback.
    """
