"""The management API: HTTP over a unix socket, described by openapi.json."""
