"""Exceptions that the command line turns into one clear message and a non-zero exit."""


class VidfuseError(Exception):
    """Base for errors caused by user input (files, configs, arguments), not by bugs."""


class ConfigError(VidfuseError):
    """A config file or override is malformed, has an unknown key, or a wrong type."""
