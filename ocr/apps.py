from django.apps import AppConfig


class OcrAppConfig(AppConfig):  # the settings object is ocr.config.OcrConfig
    name = "ocr"
    verbose_name = "OCR"
