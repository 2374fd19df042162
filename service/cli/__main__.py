"""`python -m service.cli`: what `tagflow up` starts its worker with."""

from service.cli import app

app()
