"""moonhowl: a Moonlight (GameStream) host with a virtual Wayland desktop per client."""

__version__ = "0.1.0"
