"""Settings for the benchmark server: Prism's own settings, unchanged, plus the floor
view's URL. Both arms are served by the same process with these settings."""

from controlplane.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
DEBUG = False
