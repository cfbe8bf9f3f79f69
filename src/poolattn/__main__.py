"""``python -m poolattn`` (also ``accelerate launch -m poolattn train ...``)."""

from .cli import app

app()
