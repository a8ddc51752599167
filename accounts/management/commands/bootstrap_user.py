from django.conf import settings
from django.core.management.base import BaseCommand

from accounts.services import bootstrap_user_ensure


class Command(BaseCommand):
    help = "Create the BOOTSTRAP_USER account with BOOTSTRAP_PASS if both are set and it does not exist."

    def handle(self, *args: object, **options: object) -> None:
        username, password = settings.BOOTSTRAP_USER, settings.BOOTSTRAP_PASS
        if not username or not password:
            self.stdout.write("BOOTSTRAP_USER/BOOTSTRAP_PASS not set; no demo account created.")
            return
        _, created = bootstrap_user_ensure(username=username, password=password)
        state = "created" if created else "already exists"
        self.stdout.write(f"Bootstrap account '{username}' {state}.")
