"""A GTK 4 window filled with one colour (argv[1], CSS syntax), for the compositor tests.

Prints "mapped" on stdout once the window has been drawn, so a test knows when to look.
"""

from __future__ import annotations

import sys

import gi

gi.require_version("Gtk", "4.0")
from gi.repository import GLib, Gtk  # noqa: E402

COLOUR = sys.argv[1] if len(sys.argv) > 1 else "#20a060"


def on_activate(app: Gtk.Application) -> None:
    css = Gtk.CssProvider()
    css.load_from_string(f"window, window.background {{ background: {COLOUR}; }}")
    Gtk.StyleContext.add_provider_for_display(Gtk.Widget.get_display(Gtk.Window()), css,
                                              Gtk.STYLE_PROVIDER_PRIORITY_APPLICATION)
    window = Gtk.ApplicationWindow(application=app, title="moonhowl gtk4 test")
    window.set_child(Gtk.Label(label=""))
    window.present()

    def drawn() -> bool:
        print("mapped", flush=True)
        return False

    GLib.timeout_add(500, drawn)


app = Gtk.Application(application_id="org.moonhowl.GtkColour")
app.connect("activate", on_activate)
sys.exit(app.run([]))
