"""The one exception type the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: config, data, model path, endpoint.

    The message must name the field, file or row and say how to fix it, on one line.
    """
