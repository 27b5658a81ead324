"""What a sku or a customer id may look like: letters, digits and `. : @ - _`, at most 64 characters.

Checked at the edge, so a NUL byte or a stray control character is a 422, never a database error."""

from typing import Annotated

from pydantic import StringConstraints

PATTERN = r"^[\w.:@-]{1,64}$"

Identifier = Annotated[str, StringConstraints(pattern=PATTERN)]
