from django.core.management.base import BaseCommand

from llmops.seed import catalog_seed


class Command(BaseCommand):
    help = "Add the default models (local SmolLM2, simulated, OpenAI, Anthropic) and prompts; existing rows are kept."

    def handle(self, *args, **options):
        created = catalog_seed()
        self.stdout.write(f"Catalog seeded: {', '.join(created)}" if created else "Catalog already seeded.")
