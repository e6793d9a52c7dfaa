"""A GTK 4 window filled with one colour (argv[1], e.g. #2080e0): a real app for desktop tests."""

import sys

import gi

gi.require_version("Gtk", "4.0")
from gi.repository import Gtk  # noqa: E402

colour = sys.argv[1] if len(sys.argv) > 1 else "#2080e0"


def on_activate(app: Gtk.Application) -> None:
    css = Gtk.CssProvider()
    css.load_from_string(f"window {{ background: {colour}; }}")
    Gtk.StyleContext.add_provider_for_display(Gtk.Widget.get_display(Gtk.Window()), css, 800)
    window = Gtk.ApplicationWindow(application=app, title="moonhowl colour")
    window.present()


app = Gtk.Application(application_id="org.moonhowl.Colour")
app.connect("activate", on_activate)
app.run([])
