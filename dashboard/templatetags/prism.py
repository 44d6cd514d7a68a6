"""Small formatting helpers for the dashboard's templates."""

from __future__ import annotations

from django import template

from controlplane.models import Role
from controlplane.models import role_of as _role_of
from dashboard.services import beat_status, bp_text

register = template.Library()


@register.simple_tag
def role_of(user) -> str:
    role = _role_of(user)
    return Role(role).label.split(" (")[0].lower() if role else "no role"


@register.filter
def duration(seconds) -> str:
    """Seconds as a short human duration: "45 s", "12 min", "3 h 5 min", "2 d 4 h"."""
    if seconds is None:
        return "unknown"
    seconds = max(round(float(seconds)), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


@register.filter
def bp(value) -> str:
    """Basis points as a percent."""
    return bp_text(int(value or 0))


@register.inclusion_tag("dashboard/includes/beat.html", takes_context=True)
def beat_warning(context) -> dict:
    """The late-beat warning, for pages whose view did not already read the beat. Only
    people who are signed in see it: the login page says nothing about Prism's state."""
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"beat": None}
    beat = context.get("beat") or beat_status()
    return {"beat": beat}
