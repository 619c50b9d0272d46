"""The error every bad-input path raises: one sentence naming the problem."""


class DataError(ValueError):
    """A dataset that is missing, corrupt, of the wrong shape or with invalid values."""
