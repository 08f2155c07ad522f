"""Errors that mean "the input is wrong": the CLI prints them without a traceback and exits 2."""


class HermesFlowError(Exception):
    """Bad input from the user (data, config, flags, checkpoint). The message says what and where."""


class UsageError(HermesFlowError):
    """A flag or config value that cannot be used."""


class DataError(HermesFlowError):
    """One or more bad records in a data file; `problems` holds one line per bad record."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))
