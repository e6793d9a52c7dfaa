import sys


def main() -> int:
    print("moonhowl placeholder", sys.version)
    return 0
