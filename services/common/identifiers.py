"""What a sku or a customer id may look like: letters, digits and `. : @ - _`, at most 64 characters,
and neither `.` nor `..`.

Checked at the edge, so a NUL byte or a stray control character is a 422, never a database error. The
order service puts identifiers in URL paths, where percent-encoding leaves `.` as it is and HTTP clients
resolve the dot segments `.` and `..` (RFC 3986, 5.2.4): `/products/.` would reach `/products`."""

from typing import Annotated

from pydantic import AfterValidator, StringConstraints

PATTERN = r"^[\w.:@-]{1,64}$"
DOT_SEGMENTS = frozenset({".", ".."})


def not_a_dot_segment(value: str) -> str:
    # a separate check: pydantic's regex engine has no look-ahead to say this in PATTERN
    if value in DOT_SEGMENTS:
        raise ValueError(f"{value!r} cannot be an identifier: HTTP rewrites it as a path segment")
    return value


Identifier = Annotated[str, StringConstraints(pattern=PATTERN), AfterValidator(not_a_dot_segment)]
