"""The error that means "the input data is wrong" rather than "the code is wrong": stages and commands report it
as one line naming the file, without a traceback."""


class DataError(ValueError):
    """Bad input data; the message names the offending file or folder and what was expected."""
