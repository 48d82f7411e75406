"""``python -m lightning_papers`` and the ``lightning-papers`` console script."""

from lightning_papers.cli import cli_main


def main() -> None:
    """Run the LightningCLI on ``sys.argv``."""
    cli_main()


if __name__ == "__main__":
    main()
