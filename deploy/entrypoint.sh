#!/bin/sh
# Start of the api container: apply migrations, create the bootstrap account if configured, then serve.
# One Daphne process by default; WEB_CONCURRENCY > 1 runs that many behind one socket (deploy/serve.py), with
# prometheus_client's multiprocess mode so that /metrics reports all of them.
set -eu

# One-off commands keep their metrics out of the multiprocess directory, which serve.py sets up afresh.
env -u PROMETHEUS_MULTIPROC_DIR python manage.py migrate --noinput
env -u PROMETHEUS_MULTIPROC_DIR python manage.py bootstrap_user

if [ "${WEB_CONCURRENCY:-1}" -gt 1 ]; then
    export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-/tmp/prometheus-multiproc}"
    exec python deploy/serve.py
fi
exec daphne -e "tcp:port=${PORT:-8000}:interface=0.0.0.0:backlog=1024" myocr.asgi:application
