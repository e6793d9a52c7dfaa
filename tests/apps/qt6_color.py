"""A Qt 6 window filled with one colour (argv[1], "#rrggbb"), for the compositor tests.

Run with QT_QPA_PLATFORM=wayland. Prints "mapped" on stdout once the window has been painted.
"""

from __future__ import annotations

import sys

from PyQt6.QtCore import QTimer
from PyQt6.QtGui import QColor, QPainter, QPaintEvent
from PyQt6.QtWidgets import QApplication, QWidget

COLOUR = sys.argv[1] if len(sys.argv) > 1 else "#c04080"


class Filled(QWidget):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("moonhowl qt6 test")
        self.painted = False

    def paintEvent(self, event: QPaintEvent | None) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(COLOUR))
        painter.end()
        if not self.painted:
            self.painted = True
            QTimer.singleShot(300, lambda: print("mapped", flush=True))


app = QApplication(sys.argv[:1])
window = Filled()
window.resize(320, 240)
window.show()
sys.exit(app.exec())
