"""The operators' console: usage totals per user, filters, read-only ledger, CSV export, index totals."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from ocr.models import OcrJob

from .conftest import make_user
from .test_web_pages import make_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]


@pytest.fixture
def admin_client(transactional_db) -> Client:
    operator = make_user("operator", staff=True)
    operator.is_superuser = True
    operator.save()
    client = Client()
    client.force_login(operator)
    return client


def test_users_list_shows_usage_totals_sortable_by_tokens(admin_client, alice, bob):
    make_job(alice, pages=2)
    make_job(alice)
    make_job(bob)

    response = admin_client.get("/admin/auth/user/?o=-9")  # completion token total, descending

    assert response.status_code == 200
    rows = list(response.context["cl"].result_list)
    by_name = {user.username: user for user in rows}
    assert by_name["alice"].job_count == 2 and by_name["alice"].page_total == 3
    assert by_name["alice"].completion_token_total == 40 and by_name["bob"].completion_token_total == 20
    assert rows[0].username == "alice"
    assert f"/admin/ocr/ocrjob/?owner__id__exact={alice.pk}" in response.content.decode()


def test_jobs_can_be_filtered_by_user_status_and_kind(admin_client, alice, bob):
    make_job(alice, file_name="alice-done.png")
    make_job(alice, kind="pdf", status="failed", file_name="alice-failed.pdf")
    make_job(bob, file_name="bob.png")

    by_owner = admin_client.get(f"/admin/ocr/ocrjob/?owner__id__exact={alice.pk}").content.decode()
    failed_pdfs = admin_client.get("/admin/ocr/ocrjob/?status__exact=failed&kind__exact=pdf").content.decode()
    searched = admin_client.get("/admin/ocr/ocrjob/?q=bob").content.decode()

    assert "alice-done.png" in by_owner and "bob.png" not in by_owner
    assert "alice-failed.pdf" in failed_pdfs and "alice-done.png" not in failed_pdfs
    assert "bob.png" in searched and "alice-done.png" not in searched


def test_usage_fields_are_read_only_and_jobs_cannot_be_added(admin_client, alice):
    job = make_job(alice)

    page = admin_client.get(f"/admin/ocr/ocrjob/{job.pk}/change/").content.decode()

    assert 'name="prompt_tokens"' not in page and 'name="completion_tokens"' not in page
    assert admin_client.get("/admin/ocr/ocrjob/add/").status_code == 403


def test_usage_exports_as_csv(admin_client, alice, bob):
    jobs = [make_job(alice), make_job(bob)]

    response = admin_client.post(
        "/admin/ocr/ocrjob/",
        {"action": "export_usage_csv", "_selected_action": [str(job.pk) for job in jobs]},
    )

    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert {row["owner"] for row in rows} == {"alice", "bob"}
    assert all(row["completion_tokens"] == "20" for row in rows)


def test_user_usage_exports_as_csv(admin_client, alice, bob):
    make_job(alice)
    make_job(bob)

    response = admin_client.post("/admin/auth/user/", {"action": "export_usage_csv", "_selected_action": [alice.pk]})

    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["owner"] for row in rows] == ["alice"]


def test_admin_index_shows_totals_for_today_and_the_last_7_days(admin_client, alice):
    make_job(alice)
    make_job(alice, created_at=timezone.now() - timedelta(days=3))
    make_job(alice, created_at=timezone.now() - timedelta(days=10))

    content = admin_client.get("/admin/").content.decode()

    summary = content[content.index('id="ocr-usage-summary"') :]
    today, week = summary.split('<tr><th scope="row">')[1:3]
    assert today.split("<td>")[1].startswith("1<") and week.split("<td>")[1].startswith("2<")


def test_the_console_is_for_staff_only(alice):
    client = Client()
    client.force_login(alice)

    assert client.get("/admin/ocr/ocrjob/").status_code == 302
    assert OcrJob.objects.count() == 0


def test_pending_uploads_are_listed_read_only_and_deleting_one_deletes_its_file(admin_client, alice):
    from django.core.files.base import ContentFile

    from ocr.models import PendingUpload

    pending = PendingUpload(owner=alice, file_name="scan.png", kind="image", size=4)
    pending.data.save("x", ContentFile(b"\x89PNG"), save=False)
    pending.save()
    storage, name = pending.data.storage, pending.data.name
    listing = admin_client.get("/admin/ocr/pendingupload/").content.decode()
    assert "scan.png" in listing and "alice" in listing
    assert admin_client.get("/admin/ocr/pendingupload/add/").status_code == 403

    response = admin_client.post(f"/admin/ocr/pendingupload/{pending.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not PendingUpload.objects.exists() and not storage.exists(name)
