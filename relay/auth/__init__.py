"""Maskinporten authentication: credentials, JWT-bearer grants and refreshed access tokens."""

from relay.auth.credentials import Credentials, load_credentials
from relay.auth.grant import make_assertion
from relay.auth.tokens import OAuthError, TokenProvider

__all__ = ["Credentials", "OAuthError", "TokenProvider", "load_credentials", "make_assertion"]
