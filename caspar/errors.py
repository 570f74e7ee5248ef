"""The errors the library raises for a problem the user can fix; a job prints each as one line
(caspar.cli) and exits with 2. Kept apart so that no module imports the command-line module for them."""


class UserError(Exception):
    """A problem the user can fix (bad input, a server that does not answer); one-line message."""


class InputError(UserError):
    """Input or output that cannot be used; the message is one line for the user."""
