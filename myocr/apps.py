from django.apps import AppConfig


class MyOcrConfig(AppConfig):
    """The project itself, as an app: it registers the project-wide system checks."""

    name = "myocr"
    verbose_name = "My OCR"

    def ready(self) -> None:
        from myocr import middleware, security  # noqa: F401  (their deploy checks register on import)
