from django.apps import AppConfig


class LlmopsConfig(AppConfig):
    name = "llmops"
    verbose_name = "Gateway"

    def ready(self) -> None:
        from llmops import catalog

        catalog.connect_invalidation()
