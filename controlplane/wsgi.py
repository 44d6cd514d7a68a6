import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
application = get_wsgi_application()

# Everything loaded so far (Django, the apps, URL patterns) lives as long as the process.
# Freezing it keeps the cyclic collector from re-scanning it in every full collection,
# which otherwise shows up as tail latency on the session hot path.
gc.freeze()
