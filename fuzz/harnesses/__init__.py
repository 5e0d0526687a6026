"""One atheris harness per parser; the module name is the harness name (``fuzz.run NAME``)."""
