"""robaudit-example: a complete robaudit plugin (attack, check, architecture) to copy from.

Modules are imported by robaudit only when their entry-point name is looked up, so keep this
file free of heavy imports.
"""

__version__ = "0.1.0"
