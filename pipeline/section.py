"""Building blocks of configuration schemas, shared by every stage's ``config.py``."""

from __future__ import annotations

from typing import Annotated

import fsspec
from pydantic import AfterValidator, BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_input_exists(url: str) -> str:
    """Validator for :data:`InputPath`: the file or folder must exist when the run starts."""
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        raise ValueError(f"input {url!r} does not exist; fix the path or create the file first")
    return url


#: A path or URL the run reads; validated to exist before any work starts.
InputPath = Annotated[str, AfterValidator(_check_input_exists)]
