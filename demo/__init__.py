"""The bundled demo catalog for `make demo` and the tests; not part of the installed package.

`python -m demo [FOLDER]` writes the catalog (default `var/demo_catalog`) and prints the path of
its `catalog.csv`, which `make demo` then hands to `lookalike nightly --catalog`.
"""
