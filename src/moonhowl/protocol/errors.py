"""The one base class for malformed input anywhere in moonhowl.protocol."""


class ProtocolError(ValueError):
    """Input from the network that breaks the protocol; the message says exactly how.

    GameStream clients treat an HTTP status >= 400 as a transport failure, so HTTP handlers answer
    200 and put ``status_code`` into the XML root (Sunshine's ``nvhttp.cpp`` does the same).
    """

    status_code: int = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
