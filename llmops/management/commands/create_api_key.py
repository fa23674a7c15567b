from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from llmops.auth import api_key_create


class Command(BaseCommand):
    help = "Create a gateway API key. The key is printed once, as the last line; only its hash is stored."

    def add_arguments(self, parser):
        parser.add_argument("name", help="What the key is for, e.g. the app using it")
        parser.add_argument("--owner", help="Username of the user who owns the key")

    def handle(self, *args, name, owner=None, **options):
        if not name.strip():
            raise CommandError("The key needs a non-empty NAME.")
        user = None
        if owner:
            user = get_user_model().objects.filter(username=owner).first()
            if user is None:
                raise CommandError(f"There is no user named {owner!r}.")
        key, raw = api_key_create(name=name.strip(), owner=user)
        self.stderr.write(f"Created API key {key.name!r} (prefix {key.prefix}). Store it now: it is not shown again.")
        self.stdout.write(raw)
