"""The `dsg` command line: commands in :mod:`dsg.cli.app`, run options derived from the
settings in :mod:`dsg.cli.options`."""
