"""The `tierflow` command line: `main` builds the parser from one module per command group."""
