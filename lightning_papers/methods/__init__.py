"""One sub-package per paper; see ``lightning_papers.cli.METHODS`` for the registered ones."""
