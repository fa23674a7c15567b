"""Batches, items and files in the admin: there to watch, never to edit, and as cheap to list
for fifty batches as for two."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from llmops.batches.models import Batch, BatchFile, BatchItem
from llmops.batches.runner import batch_run
from tests.batches.test_batches_page import batch_submitted

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _nothing_else_runs_batches(settings):
    settings.LLMOPS_BATCH_EXECUTOR = "off"
    settings.LLMOPS_BATCH_POLL_S = 0.05


@pytest.fixture
def staff_client(client, transactional_db):
    client.force_login(get_user_model().objects.create_superuser("staff", "staff@example.com", "pw-for-tests-only"))
    return client


@pytest.fixture
def ran(seeded) -> Batch:
    """A batch that really ran: items answered, output file written."""
    batch = batch_submitted("nightly-eval", 3)
    async_to_sync(batch_run)(batch.id)
    return Batch.objects.get(id=batch.id)


def custom_ids(listing) -> list[str]:
    return sorted(re.findall(r'<td class="field-custom_id">([^<]*)</td>', listing.content.decode()))


def test_staff_see_batches_items_and_files(staff_client, ran):
    assert ran.status == "completed" and ran.output_file_id
    listing = staff_client.get(reverse("admin:llmops_batch_changelist")).content.decode()
    assert ran.id in listing and "nightly-eval" in listing and "completed" in listing
    page = staff_client.get(reverse("admin:llmops_batch_change", args=[quote(ran.id)]))
    assert page.status_code == 200
    html = page.content.decode()
    items_url = f"{reverse('admin:llmops_batchitem_changelist')}?batch={ran.id}"
    assert f'href="{items_url}"' in html
    # Read-only: the view page has no form to save.
    assert 'name="_save"' not in html and "View batch" in html

    other = batch_submitted("mobile-app", 2)
    async_to_sync(batch_run)(other.id)
    assert custom_ids(staff_client.get(items_url)) == ["nightly-eval-0", "nightly-eval-1", "nightly-eval-2"]
    searched = staff_client.get(reverse("admin:llmops_batchitem_changelist"), {"q": other.id})
    assert custom_ids(searched) == ["mobile-app-0", "mobile-app-1"]
    item = BatchItem.objects.filter(batch=ran).first()
    assert staff_client.get(reverse("admin:llmops_batchitem_change", args=[quote(item.pk)])).status_code == 200

    files = staff_client.get(reverse("admin:llmops_batchfile_changelist")).content.decode()
    assert ran.input_file_ref in files and ran.output_file_id in files
    output_page = reverse("admin:llmops_batchfile_change", args=[quote(ran.output_file_id)])
    assert staff_client.get(output_page).status_code == 200


def test_nothing_about_a_batch_can_be_added_changed_or_deleted_in_the_admin(staff_client, ran):
    item = BatchItem.objects.filter(batch=ran).first()
    for model, obj in (("batch", ran), ("batchitem", item), ("batchfile", ran.input_file)):
        assert staff_client.get(reverse(f"admin:llmops_{model}_add")).status_code == 403, model
        change = reverse(f"admin:llmops_{model}_change", args=[quote(obj.pk)])
        assert staff_client.post(change, {"status": "failed", "filename": "x.jsonl"}).status_code == 403, model
        delete = reverse(f"admin:llmops_{model}_delete", args=[quote(obj.pk)])
        assert staff_client.post(delete).status_code == 403, model
    ran.refresh_from_db()
    assert ran.status == "completed"
    assert BatchItem.objects.filter(batch=ran).count() == 3 and BatchFile.objects.filter(id=ran.input_file_id).exists()


@pytest.mark.parametrize("model", ["batch", "batchitem", "batchfile"])
def test_a_list_costs_the_same_queries_for_many_rows_as_for_few(staff_client, seeded, model):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert staff_client.get(reverse(f"admin:llmops_{model}_changelist")).status_code == 200
        return len(captured)

    def ran(name: str) -> None:
        async_to_sync(batch_run)(batch_submitted(name, 2).id)

    ran("first")
    few = queries()
    for n in range(4):
        ran(f"more-{n}")
    assert queries() == few
