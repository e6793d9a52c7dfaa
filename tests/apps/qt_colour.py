"""A Qt 6 window filled with one colour (argv[1], e.g. #e04020): a real app for desktop tests."""

import sys

from PyQt6.QtGui import QColor, QPalette
from PyQt6.QtWidgets import QApplication, QWidget

colour = sys.argv[1] if len(sys.argv) > 1 else "#e04020"
app = QApplication(sys.argv[:1])
window = QWidget()
palette = window.palette()
palette.setColor(QPalette.ColorRole.Window, QColor(colour))
window.setPalette(palette)
window.setAutoFillBackground(True)
window.setWindowTitle("moonhowl colour")
window.show()
sys.exit(app.exec())
