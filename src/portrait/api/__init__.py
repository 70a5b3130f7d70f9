"""The HTTP layer: thin routers over :class:`portrait.service.Portrait`."""

from portrait.api.app import create_app

__all__ = ["create_app"]
