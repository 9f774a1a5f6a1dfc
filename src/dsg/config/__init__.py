"""What a run is asked to do: the declared settings, their checks, and how a config file,
the CLI and a case's defaults resolve into one frozen :class:`~dsg.config.settings.Settings`."""
