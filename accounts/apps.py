from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = _("Accounts")

    def ready(self) -> None:
        # Registers the deploy checks that see this project's security middleware (manage.py check --deploy).
        from accounts import signals
        from myocr import security  # noqa: F401

        signals.connect()
