"""The one exception type for bad user input.

Raised anywhere a user can fix the problem (a config value, a path, a corpus); the command-line
entry points print its message as one line and exit non-zero, never a traceback.
"""


class UserError(Exception):
  """A problem with the user's input. The message says what is wrong and what to do."""
