"""The floor every other wing stands on: run-directory artifacts, devices and progress lines.

Nothing here knows about settings, plugins, models or stages."""
