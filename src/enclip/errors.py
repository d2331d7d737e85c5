"""The one exception type users see: every error a user can cause is an ``EnclipError``."""


class EnclipError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""
