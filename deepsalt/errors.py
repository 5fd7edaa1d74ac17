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

    def __reduce__(self):  # survives pickling across Ray workers
        return (type(self), (self.where, self.fault, self.fix))


class DeepSaltRunError(RuntimeError):
    """A run that stopped for a reason other than its input (workers lost more often than allowed, say); the message
    says what failed and how to continue."""

    def __init__(self, what: str, fault: str, fix: str | None = None):
        self.what, self.fault, self.fix = str(what), fault, fix
        super().__init__(f"{what}: {fault}" + (f" ({fix})" if fix else ""))

    def __reduce__(self):
        return (type(self), (self.what, self.fault, self.fix))


def find_input_error(exc: BaseException) -> "DeepSaltInputError | None":
    """The DeepSaltInputError behind an exception that Ray (tasks, Ray Data) wrapped, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DeepSaltInputError):
            return exc
        text = str(exc)
        marker = "deepsalt.errors.DeepSaltInputError: "
        if marker in text:  # Ray Data keeps the original only as text in the traceback it forwards
            line = text.split(marker, 1)[1].splitlines()[0]
            where, _, fault = line.partition(": ")
            return DeepSaltInputError(where, fault)
        exc = exc.__cause__ or getattr(exc, "cause", None) or exc.__context__
    return None
