"""One error type for bad input, so the CLI can print it without a traceback.

Every message names the thing at fault (a file, a column, an asset) and what would fix it.
"""


class DeepSaltInputError(ValueError):
    """Input that DeepSalt cannot use; the message says which input and why."""

    def __init__(self, where: str, fault: str, fix: str | None = None):
        self.where, self.fault, self.fix = str(where), fault, fix
        msg = f"{where}: {fault}"
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)
