"""Headers every answer carries (the console and the API docs have their own content policies, see api.app)."""

from __future__ import annotations

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# JSON answers never run anything.
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
# What a JSON answer of /api or /v1 carries (never cached: it may hold personal data).
API_HEADERS = {**SECURITY_HEADERS, "Content-Security-Policy": API_POLICY, "Cache-Control": "no-store"}
