"""Value types of the CLI's options, each with the regex that decides which texts it accepts.

The CLI's parser checks a value with the type's regex (one readable line on a mistake, exit 2)
and the Flex Template metadata (``beam_pipeline/flex_template.py``) hands Dataflow the same
regex for the template parameter of the same name, so a console or ``gcloud`` launch refuses
the values the CLI refuses, before any VM starts.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from lantern.errors import ConfigError
from lantern.partner import VERSION_NAME_PATTERN

DATE = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
HTTP_ROOT = r"^https?://[^/\s?#]+/?$"
RATIO = r"^(0(\.[0-9]*)?|\.[0-9]+|1(\.0*)?)$"
BOOLEAN = r"^(true|false)$"


@dataclasses.dataclass(frozen=True)
class OptionType:
    """Parses an option's text; ``problem`` (with ``{value}``) is the one-line error for a text
    the regex refuses. It raises ConfigError, not ArgumentTypeError, so the message stays as written."""

    regex: str
    parse: Callable[[str], Any]
    problem: str

    def __call__(self, text: str) -> Any:
        if not re.fullmatch(self.regex, text):
            raise ConfigError(self.problem.format(value=text))
        return self.parse(text)


AS_OF = OptionType(DATE, str, "--as-of {value!r} is not a date YYYY-MM-DD")
ENDPOINT_URL = OptionType(HTTP_ROOT, str,
                          "--endpoint-url {value!r} is not scheme://host[:port] (http or https, no path)")
AUTH_SECRET = OptionType(VERSION_NAME_PATTERN, str,
                         "--auth-secret {value!r} is not a Secret Manager version "
                         "(projects/PROJECT/secrets/NAME/versions/VERSION)")
DEAD_LETTER_RATIO = OptionType(RATIO, float,
                               "--max-dead-letter-ratio {value} is not between 0 and 1 (1 turns the check off)")


def switch(flag: str) -> OptionType:
    """A yes/no option given bare (``--flag``) or with a value (``--flag=true``, as a template passes it)."""
    return OptionType(BOOLEAN, lambda text: text == "true", f"{flag} {{value!r}} is not true or false")
