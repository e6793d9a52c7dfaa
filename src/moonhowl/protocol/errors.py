"""The one base class for malformed input anywhere in moonhowl.protocol."""


class ProtocolError(ValueError):
    """Input from the network that breaks the protocol; the message says exactly how."""

    status_code: int = 400
