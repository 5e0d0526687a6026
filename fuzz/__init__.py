"""Coverage-guided fuzzing of every nattrav parser (atheris/libFuzzer).

``python -m fuzz.run --list`` shows the harnesses; ``python -m fuzz.run NAME --seconds N`` runs
one, ``python -m fuzz.run --all --seconds N`` all of them. See docs/threats.md.
"""
