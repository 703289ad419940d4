"""Command-line interface: thin Typer modules over the library (parse → config → engine → render → exit code)."""
