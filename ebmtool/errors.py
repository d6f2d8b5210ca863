"""One exception type for user mistakes: the CLI prints its message as one line and exits 2."""


class UserError(Exception):
    """A mistake the user can fix (bad file, bad option, bad data). Message is one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class DivergenceError(UserError):
    """Training produced a non-finite value; the message names the step, the quantity and a hint."""


DivergenceError.exit_code = 3
