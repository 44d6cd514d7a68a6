"""API authentication (``Authorization: Token <key>``) and the role permission."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions, permissions

from controlplane.models import ApiToken, Role, hash_key, role_of

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class TokenAuthentication(authentication.TokenAuthentication):
    """One query: the token, its user and the user's role, joined."""

    keyword = "Token"

    def authenticate_credentials(self, key: str):
        try:
            token = ApiToken.objects.select_related("user", "user__profile").get(
                key_hash=hash_key(key)
            )
        except ApiToken.DoesNotExist:
            raise exceptions.AuthenticationFailed(_("Invalid token.")) from None
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return (token.user, token)


class RolePermission(permissions.BasePermission):
    """Decide by role and by what a view declares.

    A view lists ``read_roles`` (for safe methods) and ``write_roles`` (for the rest).
    By default every role reads except the harness, and only release managers write.
    Harness-facing views (sessions, routing) widen these lists explicitly.
    """

    default_read = frozenset({Role.VIEWER, Role.RELEASE_MANAGER})
    default_write = frozenset({Role.RELEASE_MANAGER})

    def has_permission(self, request, view) -> bool:
        role = role_of(request.user)
        if role is None:
            if request.user and request.user.is_authenticated:
                self.message = "Your account has no Prism role."
            return False
        if request.method in READ_METHODS:
            allowed = getattr(view, "read_roles", self.default_read)
        else:
            allowed = getattr(view, "write_roles", self.default_write)
        if role not in allowed:
            self.message = f"The {role} role may not do this."
            return False
        return True
