"""streamrec: recommendations and personalised artwork for streaming catalogues."""

__version__ = "0.1.0"
