"""The one exception type users see for bad input; the CLI prints it as one line, exit code 2."""


class NetcompressError(ValueError):
    """Bad input: a file, field, layer, op or name that netcompress cannot accept.

    The message names the offending thing. Raising it must leave every model and file unchanged.
    """
