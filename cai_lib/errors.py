"""One exception type for every user-facing failure.

The CLI and the notebooks print `CaiError` as a single line (what is wrong, where, and
how to fix it) instead of a traceback: a researcher on a rented GPU should read the fix,
not scroll a stack.
"""


class CaiError(Exception):
    """A problem with the user's input or environment, with the fix in the message.

    `exit_code` lets the CLI distinguish kinds of failure (e.g. `cai leakage` exits 2 on
    a leak and 1 on unreadable input).
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code

    def __str__(self) -> str:  # always one line
        return " ".join(str(self.args[0]).split()) if self.args else ""
