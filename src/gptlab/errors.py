"""The one exception type gptlab raises for bad input; entry points print it as a single line."""


class GptlabError(Exception):
    """Bad input the user can fix: a config value, a file, a checkpoint."""


class ConfigError(GptlabError):
    """A config value that cannot work; the message names its key."""


class DataError(GptlabError):
    """A data file or split that cannot be used; the message names the file."""
