from django.urls import path

from bench.floor import floor
from controlplane.urls import urlpatterns as prism_urlpatterns

urlpatterns = [
    path("bench/floor/", floor, name="bench-floor"),
    *prism_urlpatterns,
]
