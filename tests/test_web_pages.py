"""The browser pages: access, isolation between users (404 for others' ids), CSRF, downloads, page images."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken
from accounts.tokens import token_create
from ocr.exports import download_name
from ocr.models import OcrJob, OcrPage
from testing.documents import SAMPLES, make_numbered_pdf

from .conftest import PASSWORD

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

GROUNDED = (
    "<|ref|>title<|/ref|><|det|>[[180, 40, 820, 70]]<|/det|>\n# Report\n\n"
    "<|ref|>text<|/ref|><|det|>[[80, 100, 920, 160], [80, 170, 500, 190]]<|/det|>\nBody <script>alert(1)</script>\n"
)


def make_job(owner, *, status="done", text="Hello", kind="image", data=None, pages=1, **fields) -> OcrJob:
    job = OcrJob(
        owner=owner,
        kind=kind,
        source="web",
        status=status,
        file_name=fields.pop("file_name", "scan.png" if kind == "image" else "doc.pdf"),
        content_type="image/png" if kind == "image" else "application/pdf",
        engine="openai",
        model="deepseek-ai/DeepSeek-OCR",
        page_count=pages,
        pages_done=pages if status == "done" else 0,
        prompt_tokens=10,
        completion_tokens=20,
        **fields,
    )
    if data is not None:
        job.upload.save("upload", ContentFile(data), save=False)
    job.save()
    for number in range(1, pages + 1):
        OcrPage.objects.create(
            job=job, number=number, status="done" if status == "done" else "running", text=text, width=640, height=426
        )
    return job


@pytest.fixture
def alice_client(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def bob_client(bob) -> Client:
    client = Client()
    client.force_login(bob)
    return client


@pytest.mark.parametrize("path", ["/", "/jobs/", "/usage/", "/accounts/tokens/", "/accounts/password/"])
def test_pages_need_a_login(path, transactional_db):
    response = Client().get(path)

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("path", ["/", "/jobs/", "/usage/", "/accounts/tokens/", "/accounts/password/"])
def test_pages_render_for_a_signed_in_user(path, alice_client):
    response = alice_client.get(path)

    assert response.status_code == 200
    assert b"<main" in response.content


def test_without_auth_the_pages_belong_to_the_anonymous_user(settings, transactional_db):
    settings.AUTH_ENABLED = False
    from django.contrib.auth import get_user_model

    anonymous = get_user_model().objects.create(username="anonymous")
    make_job(anonymous, file_name="shared.png")

    response = Client().get("/jobs/")

    assert response.status_code == 200
    assert b"shared.png" in response.content


def test_register_logs_the_new_user_in(transactional_db):
    client = Client()
    response = client.post(
        "/accounts/register/", {"username": "erin", "password1": PASSWORD, "password2": PASSWORD}, follow=True
    )

    assert response.status_code == 200
    assert response.context["user"].username == "erin"


def test_register_refuses_a_weak_password(transactional_db):
    response = Client().post("/accounts/register/", {"username": "erin", "password1": "123", "password2": "123"})

    assert response.status_code == 400
    assert b"error-text" in response.content


def test_login_and_logout(alice):
    client = Client()
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"

    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert client.get("/").status_code == 302


def test_history_lists_only_my_jobs_newest_first(alice, bob, alice_client):
    make_job(alice, file_name="older.png", created_at=timezone.now() - timedelta(hours=1))
    make_job(alice, file_name="newer.png")
    make_job(bob, file_name="bobs-secret.png")

    content = alice_client.get("/jobs/").content.decode()

    assert content.index("newer.png") < content.index("older.png")
    assert "bobs-secret.png" not in content


def test_history_is_paginated(alice, alice_client):
    for index in range(23):
        make_job(alice, file_name=f"file-{index:02}.png", created_at=timezone.now() - timedelta(minutes=index))

    first = alice_client.get("/jobs/").content.decode()
    second = alice_client.get("/jobs/?page=2").content.decode()

    assert "file-00.png" in first and "file-19.png" in first and "file-20.png" not in first
    assert "file-22.png" in second and 'rel="prev"' in second


def test_job_page_shows_the_rendered_result_usage_and_boxes(alice, alice_client):
    job = make_job(alice, text=GROUNDED, data=SAMPLES["short"].render())

    content = alice_client.get(f"/jobs/{job.pk}/").content.decode()

    assert "<h1>Report</h1>" in content
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in content and "<script>alert" not in content
    assert "<|ref|>" not in content.split('class="page__raw"')[0]  # markup only in the raw view
    assert len(re.findall(r"<rect x=", content)) == 3
    assert 'id="usage"' in content and ">10<" in content and ">20<" in content


def test_a_running_job_page_connects_to_its_stream_and_offers_cancel(alice, alice_client):
    job = make_job(alice, status="running", text="partial te", live_seq=7)

    content = alice_client.get(f"/jobs/{job.pk}/").content.decode()

    assert f'sse-connect="/jobs/{job.pk}/events?since=7"' in content
    assert "partial te" in content
    assert f'action="/jobs/{job.pk}/cancel"' in content
    assert 'class="button no-js-only" href' in content  # a refresh link for browsers without JS
    assert '<noscript><meta http-equiv="refresh" content="5"></noscript>' in content


def test_a_running_job_s_elapsed_time_is_in_the_page_s_language(alice, alice_client):
    """The server's text and the formats the page's ticking clock uses: no English unit on a Chinese page."""
    job = make_job(alice, status="running", text="partial", live_seq=1)
    alice_client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})

    content = alice_client.get(f"/jobs/{job.pk}/").content.decode()

    assert 'data-seconds-format="%(seconds)s 秒"' in content
    assert 'data-minutes-format="%(minutes)s 分 %(seconds)02d 秒"' in content
    assert re.search(r"data-started=\"[^\"]+\"[^>]*>\d+ 秒<", content)


OTHERS = [
    "/jobs/{id}/",
    "/jobs/{id}/events",
    "/jobs/{id}/result.md",
    "/jobs/{id}/result.txt",
    "/jobs/{id}/result.json",
    "/jobs/{id}/pages/1/image",
]


@pytest.mark.parametrize("path", OTHERS)
def test_another_users_job_is_not_found(path, alice, bob_client):
    job = make_job(alice, data=SAMPLES["short"].render())

    response = bob_client.get(path.format(id=job.pk))

    assert response.status_code == 404


@pytest.mark.parametrize("path", ["/jobs/{id}/delete", "/jobs/{id}/cancel"])
def test_another_user_cannot_delete_or_cancel_my_job(path, alice, bob_client):
    job = make_job(alice)

    response = bob_client.post(path.format(id=job.pk))

    assert response.status_code == 404
    assert OcrJob.objects.get(pk=job.pk).deleted_at is None


def test_another_users_token_cannot_be_revoked(alice, bob_client):
    issued = token_create(user=alice, name="alice's")

    response = bob_client.post(f"/accounts/tokens/{issued.token.pk}/revoke")

    assert response.status_code == 404
    assert ApiToken.objects.get(pk=issued.token.pk).revoked_at is None


def test_tokens_page_lists_only_my_tokens(alice, bob, alice_client):
    token_create(user=alice, name="my laptop")
    token_create(user=bob, name="bob's server")

    content = alice_client.get("/accounts/tokens/").content.decode()

    assert "my laptop" in content and "bob&#x27;s server" not in content and "bob's server" not in content


def test_a_new_token_is_shown_once_and_stored_hashed(alice, alice_client):
    posted = alice_client.post("/accounts/tokens/", {"name": "ci"})
    assert posted.status_code == 302 and posted["Location"] == "/accounts/tokens/", "post/redirect/get"
    response = alice_client.get("/accounts/tokens/")

    secret = re.search(r'<code id="new-token">(mocr_[^<]+)</code>', response.content.decode()).group(1)
    token = ApiToken.objects.get(user=alice, name="ci")
    assert token.digest != secret and secret not in token.digest
    assert secret not in alice_client.get("/accounts/tokens/").content.decode()
    assert f"Bearer {secret}" in response.content.decode()  # the curl example is ready to paste


def test_revoking_a_token_stops_it(alice, alice_client):
    issued = token_create(user=alice, name="old")

    response = alice_client.post(f"/accounts/tokens/{issued.token.pk}/revoke", headers={"HX-Request": "true"})

    assert response.status_code == 200 and b"Revoked" in response.content
    assert Client().get("/api/users/me", headers={"Authorization": f"Bearer {issued.secret}"}).status_code == 401


def test_deleting_a_job_removes_its_text_and_file_but_keeps_the_usage(alice, alice_client):
    job = make_job(alice, data=SAMPLES["short"].render())
    path = job.upload.path

    response = alice_client.post(f"/jobs/{job.pk}/delete")

    assert response.status_code == 302
    job.refresh_from_db()
    assert job.deleted_at is not None and not job.upload
    assert not OcrPage.objects.filter(job=job).exists()
    import os

    assert not os.path.exists(path)
    assert alice_client.get(f"/jobs/{job.pk}/").status_code == 404
    assert f'id="job-{job.pk}"' not in alice_client.get("/jobs/").content.decode()
    assert alice_client.get("/usage/").context["totals"]["completion_tokens"] == 20


def test_a_running_job_cannot_be_deleted(alice, alice_client):
    job = make_job(alice, status="running")

    alice_client.post(f"/jobs/{job.pk}/delete")

    assert OcrJob.objects.get(pk=job.pk).deleted_at is None


def test_downloads_have_safe_names_and_the_right_content(alice, alice_client):
    job = make_job(alice, text=GROUNDED, file_name='../we"ird\r\nname.png')

    md = alice_client.get(f"/jobs/{job.pk}/result.md")
    txt = alice_client.get(f"/jobs/{job.pk}/result.txt")
    data = json.loads(alice_client.get(f"/jobs/{job.pk}/result.json").content)

    assert md["Content-Type"] == "text/markdown; charset=utf-8"
    assert md["Content-Disposition"].startswith("attachment;")
    assert "\r" not in md["Content-Disposition"] and "\n" not in md["Content-Disposition"]
    assert '"' not in md["Content-Disposition"].split("filename=")[1].strip('"')
    assert md.content.decode().startswith("# Report")
    assert "<|ref|>" not in txt.content.decode()
    blocks = data["pages_detail"][0]["blocks"]
    assert blocks[0] == {"label": "title", "boxes": [[180, 40, 820, 70]], "text": "# Report"}
    assert blocks[1]["boxes"] == [[80, 100, 920, 160], [80, 170, 500, 190]]
    assert data["usage"]["completion_tokens"] == 20


def test_pdf_downloads_mark_the_pages(alice, alice_client):
    job = make_job(alice, kind="pdf", pages=2, text="same")

    body = alice_client.get(f"/jobs/{job.pk}/result.md").content.decode()

    assert "<!-- page 1 -->" in body and "<!-- page 2 -->" in body


@pytest.mark.parametrize(
    ("name", "expected"),
    [("scan.png", "scan.md"), ("../../etc/passwd", "passwd.md"), ('a"b;c.pdf', "abc.md"), ("", "ocr-result.md")],
)
def test_download_names(name, expected):
    assert download_name(name.rsplit("/", 1)[-1], "md") == expected


def test_page_images_are_served_with_a_sniffed_type_and_caching(alice, alice_client):
    job = make_job(alice, kind="pdf", pages=3, data=make_numbered_pdf(3))

    response = alice_client.get(f"/jobs/{job.pk}/pages/2/image")

    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg" and response.content[:3] == b"\xff\xd8\xff"
    assert "private" in response["Cache-Control"]
    assert response["X-Content-Type-Options"] == "nosniff"
    again = alice_client.get(f"/jobs/{job.pk}/pages/2/image", headers={"If-None-Match": response["ETag"]})
    assert again.status_code == 304
    assert alice_client.get(f"/jobs/{job.pk}/pages/4/image").status_code == 404


def test_usage_page_charts_the_last_30_days(alice, alice_client):
    make_job(alice)
    make_job(alice, created_at=timezone.now() - timedelta(days=40))

    response = alice_client.get("/usage/")

    assert response.context["totals"]["jobs"] == 2
    days = response.context["days"]
    assert len(days) == 30 and days[-1].total_tokens == 30 and sum(d.jobs for d in days) == 1
    assert response.content.count(b'class="chart__completion"') == 30


CSRF_FORMS = [
    ("/jobs/new", {}),
    ("/jobs/preview", {}),
    ("/jobs/{id}/cancel", {}),
    ("/jobs/{id}/delete", {}),
    ("/accounts/tokens/", {"name": "x"}),
    ("/accounts/tokens/{token}/revoke", {}),
    ("/accounts/password/", {}),
    ("/accounts/logout/", {}),
    ("/i18n/setlang/", {"language": "zh-hans"}),
]


@pytest.mark.parametrize(("path", "data"), CSRF_FORMS)
def test_every_browser_form_needs_the_csrf_token(path, data, alice):
    job = make_job(alice)
    token = token_create(user=alice, name="t").token
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)

    response = client.post(path.format(id=job.pk, token=token.pk), data)

    assert response.status_code == 403
    assert OcrJob.objects.get(pk=job.pk).deleted_at is None
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None


def test_a_refused_form_explains_itself(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)

    response = client.post("/accounts/tokens/", {"name": "x"})

    assert response.status_code == 403
    assert "The form expired" in response.content.decode()


def test_an_unknown_page_is_a_styled_404(alice_client, settings):
    settings.DEBUG = False

    response = alice_client.get("/jobs/00000000-0000-0000-0000-000000000000/")

    assert response.status_code == 404
    assert "There is nothing here, or it is not yours to see." in response.content.decode()


@pytest.mark.parametrize(("path", "data"), [("/accounts/login/", {"username": "alice"}), ("/accounts/register/", {})])
def test_the_login_and_register_forms_need_the_csrf_token(path, data, alice):
    response = Client(enforce_csrf_checks=True).post(path, data)

    assert response.status_code == 403


def test_a_form_with_the_csrf_token_passes(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    page = client.get("/accounts/tokens/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)

    response = client.post("/accounts/tokens/", {"name": "x", "csrfmiddlewaretoken": token})

    assert response.status_code == 302 and ApiToken.objects.filter(name="x").exists()


def test_an_upload_that_is_not_an_image_or_pdf_is_refused_on_the_form(alice_client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = alice_client.post(
        "/jobs/new", {"file": SimpleUploadedFile("x.html", b"<html>hi</html>"), "preset": "default"}
    )

    assert response.status_code == 415
    assert "not a supported file" in response.content.decode()
    assert not OcrJob.objects.exists()


def test_custom_prompt_needs_text(alice_client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = alice_client.post(
        "/jobs/new", {"file": SimpleUploadedFile("a.png", SAMPLES["short"].render()), "preset": "custom", "text": ""}
    )

    assert response.status_code == 400
    assert not OcrJob.objects.exists()


def test_preview_shows_thumbnails_of_the_first_pdf_pages(alice_client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = alice_client.post("/jobs/preview", {"file": SimpleUploadedFile("d.pdf", make_numbered_pdf(6))})

    content = response.content.decode()
    assert response.status_code == 200
    assert content.count('src="data:image/jpeg;base64,') == 4
    assert "6 pages" in content


def test_the_language_switcher_shows_chinese(alice_client):
    alice_client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/jobs/"})

    content = alice_client.get("/jobs/").content.decode()

    assert 'lang="zh-hans"' in content
    assert "历史记录" in content


def test_the_chinese_catalogue_is_compiled_and_complete():
    """The compiled catalogue ships in the repository and matches its source: every message translated."""
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "locale" / "zh_Hans" / "LC_MESSAGES"
    source = (folder / "django.po").read_text(encoding="utf-8")
    assert (folder / "django.mo").stat().st_size > 1000
    assert "#, fuzzy" not in source
    entries = source.split("\n\n")[1:]
    untranslated = [entry for entry in entries if 'msgstr ""' in entry and 'msgstr ""\n"' not in entry]
    assert untranslated == []


def test_a_queued_job_page_says_it_waits_follows_its_stream_and_offers_cancel(alice, alice_client):
    job = make_job(alice, status="queued", pages=0, detached=True)

    content = alice_client.get(f"/jobs/{job.pk}/").content.decode()

    assert "Waiting for a worker" in content
    assert f'sse-connect="/jobs/{job.pk}/events?since=0"' in content
    assert f'action="/jobs/{job.pk}/cancel"' in content


def test_cancelling_a_queued_job_ends_it_at_once(alice, alice_client):
    job = make_job(alice, status="queued", pages=0, detached=True)

    response = alice_client.post(f"/jobs/{job.pk}/cancel")

    assert response.status_code == 302
    job.refresh_from_db()
    assert (job.status, job.error_code) == ("cancelled", "cancelled") and job.cancel_requested_at is not None


def test_a_partial_job_page_offers_to_retry_its_failed_pages(alice, alice_client):
    job = make_job(alice, status="partial", kind="pdf", data=make_numbered_pdf(3), pages=3, detached=True)
    OcrJob.objects.filter(pk=job.pk).update(pages_done=1)

    content = alice_client.get(f"/jobs/{job.pk}/").content.decode()

    assert f'action="/jobs/{job.pk}/retry"' in content
    done = make_job(alice, kind="pdf", data=make_numbered_pdf(1), pages=1)
    assert "/retry" not in alice_client.get(f"/jobs/{done.pk}/").content.decode(), "nothing to retry"


def test_uploads_past_their_retention_are_deleted_and_the_job_page_says_so(alice, alice_client, settings):
    settings.OCR_UPLOAD_RETENTION_DAYS = 30
    old = make_job(alice, data=SAMPLES["short"].render(), finished_at=timezone.now() - timedelta(days=31))
    recent = make_job(alice, data=SAMPLES["short"].render(), finished_at=timezone.now() - timedelta(days=29))
    old_path = Path(old.upload.path)

    from ocr.housekeeping import expire_uploads

    assert expire_uploads() == 1
    old.refresh_from_db()
    recent.refresh_from_db()
    assert not old.upload and old.upload_expired_at is not None and not old_path.exists()
    assert recent.upload and Path(recent.upload.path).exists()
    assert OcrPage.objects.filter(job=old).exists(), "the text stays"
    assert "The uploaded file was deleted on" in alice_client.get(f"/jobs/{old.pk}/").content.decode()
    assert expire_uploads() == 0


def test_reloading_after_creating_a_token_creates_no_second_one(alice, alice_client):
    alice_client.post("/accounts/tokens/", {"name": "laptop"}, follow=True)
    alice_client.get("/accounts/tokens/")  # a reload is a GET of the page it was redirected to

    assert ApiToken.objects.filter(user=alice, name="laptop").count() == 1


def test_pages_a_cancelled_job_never_read_say_so_instead_of_waiting_for_ever(alice, alice_client):
    job = make_job(alice, status="cancelled", kind="pdf", pages=0, error_code="cancelled")
    OcrJob.objects.filter(pk=job.pk).update(page_count=3)
    OcrPage.objects.create(job=job, number=1, status="done", text="read")
    OcrPage.objects.create(job=job, number=2, status="cancelled", text="")

    content = alice_client.get(f"/jobs/{job.pk}/").content.decode()

    assert "Waiting for its turn" not in content
    assert content.count("Not read: the job ended before this page.") == 1  # page 3
    assert "No text was found on this page." not in content, "a cancelled page is not an empty one"


def test_one_pages_markdown_downloads_for_its_owner_only(alice, alice_client, bob_client):
    job = make_job(alice, text=GROUNDED, kind="pdf", pages=2, file_name="report.pdf")
    OcrPage.objects.filter(job=job, number=2).update(text="")

    response = alice_client.get(f"/jobs/{job.pk}/pages/1.md")

    assert response.status_code == 200 and response["Content-Type"] == "text/markdown; charset=utf-8"
    assert response.content.decode() == "# Report\n\nBody <script>alert(1)</script>\n"
    assert response["Content-Disposition"] == 'attachment; filename="report.page-1.md"'
    assert alice_client.get(f"/jobs/{job.pk}/pages/2.md").status_code == 404, "a page without text"
    assert alice_client.get(f"/jobs/{job.pk}/pages/3.md").status_code == 404
    assert bob_client.get(f"/jobs/{job.pk}/pages/1.md").status_code == 404
    content = alice_client.get(f"/jobs/{job.pk}/").content.decode()
    assert f'href="/jobs/{job.pk}/pages/1.md"' in content and f'href="/jobs/{job.pk}/pages/2.md"' not in content


def test_a_cancelled_jobs_unfinished_pages_all_say_cancelled_in_the_page_list_too(alice, alice_client):
    job = make_job(alice, status="cancelled", kind="pdf", pages=0, error_code="cancelled")
    OcrJob.objects.filter(pk=job.pk).update(page_count=3)
    OcrPage.objects.create(job=job, number=1, status="done", text="read")
    OcrPage.objects.create(job=job, number=2, status="cancelled", text="")

    content = alice_client.get(f"/jobs/{job.pk}/").content.decode()

    statuses = re.findall(r'data-page-status="(\w+)">([^<]+)<', content)
    assert statuses == [("done", "Done"), ("cancelled", "Cancelled"), ("cancelled", "Cancelled")] * 2
    assert "Not read<" not in content
    assert "Cancelled before any text of this page was read." in content  # page 2
    assert '<progress class="progress__bar" max="3" value="2"' in content


def test_downloads_are_offered_only_when_there_is_text(alice, alice_client):
    empty = make_job(alice, text="")
    full = make_job(alice, text="Some text")

    assert "/result.md" not in alice_client.get(f"/jobs/{empty.pk}/").content.decode()
    assert "/result.md" in alice_client.get(f"/jobs/{full.pk}/").content.decode()


def test_a_requested_cancel_says_so_until_the_job_ends(alice, alice_client):
    job = make_job(alice, status="running", detached=True, cancel_requested_at=timezone.now())

    content = alice_client.get(f"/jobs/{job.pk}/").content.decode()

    assert "Cancelling the job…" in content
    assert f'action="/jobs/{job.pk}/cancel"' not in content, "nothing more to cancel"


def test_the_progress_bar_names_the_page_being_read_and_estimates_the_time_left(alice, alice_client):
    job = make_job(alice, status="running", kind="pdf", pages=0, detached=True)
    OcrJob.objects.filter(pk=job.pk).update(page_count=4, created_at=timezone.now() - timedelta(seconds=20))
    OcrPage.objects.create(job=job, number=1, status="done", text="one")
    OcrPage.objects.create(job=job, number=2, status="running", text="tw")

    content = alice_client.get(f"/jobs/{job.pk}/").content.decode()

    assert '<progress class="progress__bar" max="4" value="1"' in content
    assert "1 of 4 pages finished" in content and "Reading page 2" in content
    left = re.search(r"about (\d+) s left|about (\d+) min", content)
    assert left is not None, "three pages at the pace of the first: about a minute"


def test_a_resumed_job_s_estimate_counts_only_the_pages_of_this_run(alice):
    """Pages finished before the job was taken again took none of this run's time: the pace is this run's."""
    from ocr.fragments import progress_view

    job = make_job(alice, status="running", kind="pdf", pages=0, detached=True)
    now = timezone.now()
    OcrJob.objects.filter(pk=job.pk).update(page_count=100, claimed_at=now - timedelta(seconds=30))
    earlier = now - timedelta(hours=1)
    for number in range(1, 91):
        OcrPage.objects.create(job=job, number=number, status="done", text="x", finished_at=earlier)
    OcrPage.objects.create(job=job, number=91, status="done", text="x", finished_at=now)
    job.refresh_from_db()

    progress = progress_view(job, list(job.pages.all()))

    assert progress.ended == 91 and progress.paced == 1
    # Nine pages left at this run's pace of one page in 30 s: about four and a half minutes, not three seconds.
    assert 9 * 29_000 <= progress.remaining_ms <= 9 * 31_000


def test_the_page_list_shows_each_pages_own_ending(alice, alice_client):
    job = make_job(alice, status="partial", kind="pdf", pages=0, detached=True)
    OcrJob.objects.filter(pk=job.pk).update(page_count=3)
    OcrPage.objects.create(job=job, number=1, status="done", text="read")
    OcrPage.objects.create(job=job, number=2, status="truncated", text="cut", error_code="engine_cut_off")
    OcrPage.objects.create(job=job, number=3, status="failed", error_code="engine_timeout")

    content = alice_client.get(f"/jobs/{job.pk}/").content.decode()

    links = re.findall(r'<li id="page-link-(\d)".*?data-page-status="(\w+)">([^<]+)<', content, re.DOTALL)
    assert links == [("1", "done", "Done"), ("2", "truncated", "Cut off"), ("3", "failed", "Failed")]
