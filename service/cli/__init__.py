"""The `tagflow` command line (`tagflow --help`)."""

from service.cli.main import app

__all__ = ["app"]
