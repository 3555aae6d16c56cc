"""The project's one error type.

Everything a user can get wrong (a damaged file, a bad flag, an out-of-range token id) ends in a
`MinRobertaError` whose message is one line naming the file, key, shape or value at fault. It subclasses
`ValueError` so callers that catch the standard type keep working; the CLI turns it into exit status 2.
"""


class MinRobertaError(ValueError):
    """A problem with the user's input, stated in one line."""
