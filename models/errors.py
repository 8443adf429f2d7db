"""One error type that carries what went wrong and how to fix it."""


class MarionetteError(ValueError):
    """A user-facing problem: the message names the problem and the fix."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}" + (f" Fix: {fix}" if fix else ""))


class NoPersonError(MarionetteError):
    """No person could be found where one is needed."""
