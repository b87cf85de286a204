"""The names the environment gives settings (no imports: the CLI's parser uses them)."""

from __future__ import annotations

ENV_PREFIX = "POLLER_"
ENV_DELIMITER = "__"
CONFIG_ENV = "POLLER_CONFIG"
# A directory of files named like the variables (Docker and Kubernetes secrets); no default.
SECRETS_DIR_ENV = "POLLER_SECRETS_DIR"
DOTENV_FILE = ".env"


def env_name(loc: tuple[str | int, ...]) -> str:
    """The environment variable of a setting path such as ('infobip', 'api_key')."""
    return ENV_PREFIX + ENV_DELIMITER.join(str(part).upper() for part in loc)
