"""The one exception of the graders package: a grader (or the item given with it) that cannot be used."""

from __future__ import annotations


class GraderError(ValueError):
    """A grader that cannot be used as given: the API answers it with 400 naming `param`.

    Attributes:
        message: What is wrong, in a sentence the user can act on.
        param: Where, as a path from the request body's root (`grader.graders.a.operation`).
        code: OpenAI's error code (`invalid_value`, `unknown_parameter`, `missing_required_parameter`,
            `invalid_type`, `unsupported_value`).
    """

    def __init__(self, message: str, *, param: str, code: str = "invalid_value") -> None:
        """Keep the message, the path and the code."""
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
