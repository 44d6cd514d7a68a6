"""A fleet of simulated agent harnesses that drive Prism's REST API through
``prism_client``, exactly as real harnesses would. ``manage.py simulate`` runs it."""
