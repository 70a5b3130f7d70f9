"""Portrait: a self-hosted customer data platform."""

__version__ = "0.1.0"
