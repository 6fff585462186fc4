"""Frozen, strict configs: unknown keys are errors, every config round-trips."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from netcompress.core.errors import NetcompressError


class Config(BaseModel):
    """Base for every method and stage config: frozen, extra keys forbidden."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> "Config":
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise NetcompressError(format_validation_error(e, where or cls.__name__)) from None


def format_validation_error(e: ValidationError, where: str) -> str:
    """One readable line per problem: `where: field.path: message`."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}: {loc}: {msg}" if loc else f"{where}: {msg}")
    return "; ".join(parts)
