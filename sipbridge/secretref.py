"""A secret in the config: given inline or read from an environment variable."""

from __future__ import annotations

import os

from pydantic import model_validator

from sipbridge.callsettings import StrictModel


class SecretRef(StrictModel):
    """A secret given inline (``value``) or read from an environment variable (``env``)."""

    value: str | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.value is None) == (self.env is None):
            raise ValueError("give exactly one of 'value' or 'env'")
        if self.env is not None and not os.environ.get(self.env):
            raise ValueError(f"environment variable {self.env!r} is not set or empty")
        return self

    def resolve(self) -> str:
        if self.value is not None:
            return self.value
        assert self.env is not None
        return os.environ[self.env]
