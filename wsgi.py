"""WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`, or any WSGI
server (`waitress-serve wsgi:app`, mod_wsgi, uWSGI)."""
from logsvc import runtime
from logsvc.server import create_app, start_background_with_first_request

app = create_app()
runtime.tune_for_serving()
# Retention runs in the background of each serving process. gunicorn.conf.py
# starts it when a worker is ready; other servers start it with the first
# request their process serves (the same task: it never runs twice).
start_background_with_first_request(app)
