"""The one exception type the CLI turns into a one-line message and exit code 2."""


class QnasError(Exception):
    """A user-facing error: bad input, missing data, mismatched checkpoint.

    The CLI prints ``qnas: error: <message>`` and exits with code 2; library callers can catch it.
    """
