# My OCR's application image: Django served by Daphne, the embedded CPU engine included.
# Built by docker-compose.yml (service api); see README, Deployment.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# OpenCV (RapidOCR's image code) needs GLib; ONNX Runtime needs OpenMP; the searchable PDF's text layer needs a
# TrueType font with Chinese (WenQuanYi Micro Hei, which covers Latin too).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libglib2.0-0 libgomp1 fonts-wqy-microhei \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group app

WORKDIR /app

# Dependencies first, from pyproject.toml, so that a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .

# Static files are collected into the image (outside the data volume, which would hide them).
ENV DJANGO_SETTINGS_MODULE=myocr.settings \
    OCR_DATA_DIR=/app/_data \
    STATIC_ROOT=/app/staticfiles \
    PORT=8000
RUN DEBUG=false SECRET_KEY=collectstatic-only-not-a-secret python manage.py collectstatic --noinput \
    && mkdir -p /app/_data \
    && chown -R app:app /app/_data

USER app
EXPOSE 8000
VOLUME ["/app/_data"]

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]

# Migrations, the bootstrap account, then Daphne on 0.0.0.0:8000 with a listen backlog of 1024.
ENTRYPOINT ["deploy/entrypoint.sh"]
