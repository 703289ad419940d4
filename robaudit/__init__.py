"""robaudit: how robust is an image classifier, why, and did a change make it better."""
__version__ = "0.1.0"

__all__ = ["__version__"]
