"""`python -m nslora`: the same as the `nslora` command."""

from nslora.commands.cli import entry

entry()
