"""The one exception type that the command line turns into a single line and exit code 2."""


class GenlabError(Exception):
    """Bad input from the user: a wrong path, an unknown key, a checkpoint of another model.

    The message must name what was wrong and where; the CLI prints it on one line with exit code 2.
    """
