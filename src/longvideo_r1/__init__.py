"""longvideo-r1: answer questions about long videos by navigating a tree of captions."""

__version__ = "0.1.0"
