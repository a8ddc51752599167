"""The upload flow on the server: pending uploads (owner-bound, short-lived, used once), batches, "Run again"."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import AsyncClient
from django.utils import timezone

from accounts.limits import LimitExceeded
from ocr import pending
from ocr.live import live_task
from ocr.models import JobStatus, OcrJob, PendingUpload
from testing.documents import SAMPLES, make_numbered_pdf

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.postgres,
    pytest.mark.usefixtures("fresh_channel_layer"),
]

PNG = SAMPLES["short"].render()
PENDING_FIELD = re.compile(r'name="pending" value="([0-9a-f-]{36})"')


async def client_for(user) -> AsyncClient:
    client = AsyncClient()
    await client.aforce_login(user)
    return client


@pytest.fixture
async def web(alice):
    return await client_for(alice)


async def wait_for_jobs(owner) -> list[OcrJob]:
    jobs = [job async for job in OcrJob.objects.filter(owner=owner).order_by("created_at")]
    tasks = {task for task in (live_task(job.pk) for job in jobs) if task is not None}
    if tasks:
        done, _pending = await asyncio.wait(tasks, timeout=30)
        assert len(done) == len(tasks), "a job did not finish"
    return [job async for job in OcrJob.objects.filter(owner=owner).order_by("created_at")]


async def preview(client: AsyncClient, name: str, data: bytes, **fields) -> str:
    response = await client.post("/jobs/preview", {"file": SimpleUploadedFile(name, data), **fields})
    assert response.status_code == 200
    return response.content.decode()


async def kept_id(client: AsyncClient, name: str = "page.png", data: bytes = PNG) -> str:
    return PENDING_FIELD.search(await preview(client, name, data)).group(1)


async def test_the_preview_keeps_the_file_and_start_sends_only_its_id(web, alice, fake_vllm):
    fake_vllm.set_default(text="Read once.", token_delay=0.001)
    pending_id = await kept_id(web)
    stored = await PendingUpload.objects.aget(pk=pending_id)
    assert stored.owner_id == alice.pk and stored.size == len(PNG) and stored.file_name == "page.png"

    response = await web.post("/jobs/new", {"pending": pending_id, "preset": "default"})

    assert response.status_code == 302
    [job] = await wait_for_jobs(alice)
    assert response["Location"] == f"/jobs/{job.pk}/"
    assert job.status == JobStatus.DONE and job.input_bytes == len(PNG) and job.file_name == "page.png"
    assert not await PendingUpload.objects.filter(pk=pending_id).aexists()  # used, and its file deleted
    assert not stored.data.storage.exists(stored.data.name)


async def test_a_pending_upload_is_used_once(web, alice, fake_vllm):
    fake_vllm.set_default(text="Once.", token_delay=0.001)
    pending_id = await kept_id(web)
    first = await web.post("/jobs/new", {"pending": pending_id, "preset": "default"})
    await wait_for_jobs(alice)

    again = await web.post("/jobs/new", {"pending": pending_id, "preset": "default"})

    assert first.status_code == 302
    assert again.status_code == 400
    assert "no longer kept on the server: choose it again" in again.content.decode()
    assert await OcrJob.objects.filter(owner=alice).acount() == 1


async def test_two_claims_of_one_pending_upload_make_one_winner(web, alice):
    pending_id = uuid.UUID(await kept_id(web))

    claims = [await pending.pending_upload_claim(owner=alice, pending_id=pending_id) for _ in range(2)]

    assert claims[0] is not None and claims[1] is None


async def test_someone_elses_pending_upload_is_as_good_as_unknown(web, alice, bob, fake_vllm):
    pending_id = await kept_id(web)
    bobs = await client_for(bob)

    response = await bobs.post("/jobs/new", {"pending": pending_id, "preset": "default"})

    assert response.status_code == 400
    assert "no longer kept" in response.content.decode()
    assert not await OcrJob.objects.aexists()
    assert await PendingUpload.objects.filter(pk=pending_id, claimed_at__isnull=True).aexists()  # still Alice's
    await bobs.post("/jobs/preview", {"discard": pending_id})
    assert await PendingUpload.objects.filter(pk=pending_id).aexists()  # Bob cannot discard it either


async def test_a_pending_upload_expires_and_housekeeping_deletes_it(web, alice):
    pending_id = await kept_id(web)
    stored = await PendingUpload.objects.aget(pk=pending_id)
    await PendingUpload.objects.filter(pk=pending_id).aupdate(
        created_at=timezone.now() - pending.PENDING_LIFETIME - timedelta(seconds=1)
    )

    response = await web.post("/jobs/new", {"pending": pending_id, "preset": "default"})
    deleted = await sync_to_async(pending.expire_pending_uploads)()

    assert response.status_code == 400 and "choose it again" in response.content.decode()
    assert deleted == 1
    assert not await PendingUpload.objects.aexists()
    assert not stored.data.storage.exists(stored.data.name)


async def test_housekeeping_deletes_the_files_of_pending_uploads_whose_owner_was_deleted(web, alice):
    await kept_id(web)
    stored = await PendingUpload.objects.aget()
    storage, name = stored.data.storage, stored.data.name
    await alice.adelete()  # the rows go with their owner; the file stays until housekeeping
    assert not await PendingUpload.objects.aexists() and storage.exists(name)

    await sync_to_async(pending.expire_pending_uploads)()
    assert storage.exists(name), "a fresh file is not touched: its row may still be on its way"
    await sync_to_async(pending.expire_pending_uploads)(
        timezone.now() + pending.PENDING_LIFETIME + timedelta(seconds=1)
    )
    assert not storage.exists(name)


async def test_a_form_naming_a_file_no_longer_kept_starts_nothing_and_says_so(web, alice):
    first = await kept_id(web, "first.png")
    second = PENDING_FIELD.search(await preview(web, "second.png", PNG)).group(1)
    await PendingUpload.objects.filter(pk=second).aupdate(
        created_at=timezone.now() - pending.PENDING_LIFETIME - timedelta(seconds=1)
    )

    response = await web.post("/jobs/new", {"pending": [first, second], "preset": "default"})

    content = response.content.decode()
    assert response.status_code == 400
    assert "1 file chosen before is no longer kept on the server: choose it again." in content
    assert not await OcrJob.objects.aexists()  # nothing started without it
    assert f'value="{first}"' in content and "first.png" in content  # the one still kept stays, ticked


async def test_a_discard_or_the_expiry_leaves_a_pending_upload_a_submission_has_just_taken(web, alice):
    pending_id = uuid.UUID(await kept_id(web))
    taken = await pending.pending_upload_claim(owner=alice, pending_id=pending_id)
    assert taken is not None
    await PendingUpload.objects.filter(pk=pending_id).aupdate(
        created_at=timezone.now() - pending.PENDING_LIFETIME - timedelta(seconds=1)
    )

    assert await pending.pending_uploads_discard(owner=alice, ids=[pending_id]) == 0
    assert await sync_to_async(pending.expire_pending_uploads)() == 0
    assert await PendingUpload.objects.filter(pk=pending_id).aexists()
    assert taken.data.storage.exists(taken.data.name), "the job being made still reads this file"


async def test_a_file_sent_both_as_kept_and_as_bytes_makes_one_job(web, alice, fake_vllm):
    """A browser that could not leave the bytes out sends a checked file twice: once its id, once itself."""
    pending_id = await kept_id(web, "twice.png")

    response = await web.post(
        "/jobs/new", {"pending": pending_id, "file": SimpleUploadedFile("twice.png", PNG), "preset": "default"}
    )

    assert response.status_code == 302
    jobs = await wait_for_jobs(alice)
    assert [job.file_name for job in jobs] == ["twice.png"]


async def test_a_new_choice_discards_the_files_checked_before(web, alice):
    first = await kept_id(web)

    second = PENDING_FIELD.search(await preview(web, "other.png", PNG, discard=first)).group(1)

    assert [str(pk) async for pk in PendingUpload.objects.values_list("pk", flat=True)] == [second]


async def test_previews_alone_cannot_fill_the_disk(web, alice):
    for _ in range(pending.MAX_PENDING_PER_OWNER + 3):
        await kept_id(web)

    assert await PendingUpload.objects.filter(owner=alice).acount() == pending.MAX_PENDING_PER_OWNER


async def test_the_preview_refuses_a_file_by_name_and_keeps_nothing(web):
    content = await preview(web, "notes.html", b"<html>hi</html>")

    assert "notes.html" in content and "not a supported file" in content
    assert 'data-state="refused"' in content
    assert not await PendingUpload.objects.aexists()


async def test_a_refused_form_keeps_the_file_and_start_needs_no_second_upload(web, alice, fake_vllm):
    fake_vllm.set_default(text="Found it.", token_delay=0.001)
    refused = await web.post("/jobs/new", {"file": SimpleUploadedFile("scan.png", PNG), "preset": "custom", "text": ""})
    content = refused.content.decode()
    [kept] = PENDING_FIELD.findall(content)

    started = await web.post("/jobs/new", {"pending": kept, "preset": "custom", "text": "Read the title."})

    assert refused.status_code == 400
    assert "Type the prompt or the phrase to find." in content
    assert "kept on the server: you need not choose it again" in content and "scan.png" in content
    assert started.status_code == 302
    [job] = await wait_for_jobs(alice)
    assert job.prompt == "Read the title." and job.input_bytes == len(PNG) and job.file_name == "scan.png"


async def test_a_batch_post_starts_one_job_per_file_and_names_the_refused_one(web, alice, fake_vllm):
    fake_vllm.set_default(text="Batch page.", token_delay=0.001)
    files = [
        SimpleUploadedFile("one.png", PNG),
        SimpleUploadedFile("bad.html", b"<html>no</html>"),
        SimpleUploadedFile("two.pdf", make_numbered_pdf(2)),
    ]

    response = await web.post("/jobs/new", {"file": files, "preset": "markdown"})

    assert response.status_code == 302
    jobs = await wait_for_jobs(alice)
    assert sorted(job.file_name for job in jobs) == ["one.png", "two.pdf"]
    assert {job.prompt for job in jobs} == {"Free OCR, output markdown."}
    assert {job.status for job in jobs} == {JobStatus.DONE}
    location = response["Location"]
    assert location.startswith("/jobs/batch?jobs=")
    batch = await web.get(location)
    content = batch.content.decode()
    assert "one.png" in content and "two.pdf" in content
    assert "“bad.html” was not started: This is not a supported file" in content
    assert "2 jobs started." in content


async def test_the_batch_page_lists_only_my_jobs(web, alice, bob, fake_vllm):
    fake_vllm.set_default(text="Mine.", token_delay=0.001)
    files = [SimpleUploadedFile("a.png", PNG), SimpleUploadedFile("b.png", PNG)]
    response = await web.post("/jobs/new", {"file": files, "preset": "default"})
    await wait_for_jobs(alice)

    bobs = await (await client_for(bob)).get(response["Location"])

    assert bobs.status_code == 200
    assert "a.png" not in bobs.content.decode() and "b.png" not in bobs.content.decode()


async def test_a_file_refused_by_a_limit_is_given_back_to_the_form(web, alice, settings, monkeypatch):
    settings.OCR_ENGINE = "openai"
    pending_id = await kept_id(web)

    async def refuse(**kwargs):
        raise LimitExceeded("too many", code="too_many_jobs", retry_after=5)

    monkeypatch.setattr("ocr.batches.submit_job", refuse)

    response = await web.post("/jobs/new", {"pending": pending_id, "preset": "default"})

    assert response.status_code == 429 and response["Retry-After"] == "5"
    content = response.content.decode()
    assert "“page.png” was not started: You have too many jobs running at once." in content
    assert PENDING_FIELD.findall(content) == [pending_id]  # offered again, not lost
    assert await PendingUpload.objects.filter(pk=pending_id, claimed_at__isnull=True).aexists()


async def test_a_form_needs_a_file(web):
    response = await web.post("/jobs/new", {"preset": "default"})

    assert response.status_code == 400
    assert "Choose an image or a PDF." in response.content.decode()


async def test_too_long_a_prompt_is_refused_on_the_server(web):
    response = await web.post(
        "/jobs/new", {"file": SimpleUploadedFile("a.png", PNG), "preset": "custom", "text": "x" * 4001}
    )

    assert response.status_code == 400
    assert not await OcrJob.objects.aexists()


# --- Run again -------------------------------------------------------------------------------------------------


async def finished_job(owner, *, data: bytes | None = PNG) -> OcrJob:
    def make() -> OcrJob:
        job = OcrJob(
            owner=owner, kind="image", source="web", status=JobStatus.DONE, file_name="kept.png",
            content_type="image/png", engine="openai", page_count=1, pages_done=1, prompt="Free OCR.",
        )  # fmt: skip
        if data is not None:
            job.upload.save("upload", ContentFile(data), save=False)
        job.save()
        return job

    return await sync_to_async(make)()


async def test_run_again_makes_a_new_job_from_the_kept_upload_with_the_new_preset(web, alice, fake_vllm):
    fake_vllm.set_default(text="# Again", token_delay=0.001)
    old = await finished_job(alice)

    response = await web.post(f"/jobs/{old.pk}/again", {"preset": "markdown"})

    assert response.status_code == 302
    jobs = await wait_for_jobs(alice)
    [new] = [job for job in jobs if job.pk != old.pk]
    assert response["Location"] == f"/jobs/{new.pk}/"
    assert new.prompt == "Free OCR, output markdown." and new.file_name == "kept.png"
    assert new.input_bytes == len(PNG) and new.status == JobStatus.DONE
    assert (await OcrJob.objects.aget(pk=old.pk)).prompt == "Free OCR."  # the old job is left as it was


async def test_run_again_is_for_the_owner_only(alice, bob, fake_vllm):
    old = await finished_job(alice)
    bobs = await client_for(bob)

    response = await bobs.post(f"/jobs/{old.pk}/again", {"preset": "markdown"})

    assert response.status_code == 404
    assert await OcrJob.objects.acount() == 1


async def test_run_again_needs_a_post_with_the_csrf_token(alice):
    old = await finished_job(alice)
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(alice)

    forged = await client.post(f"/jobs/{old.pk}/again", {"preset": "markdown"})
    got = await client.get(f"/jobs/{old.pk}/again")

    assert forged.status_code == 403 and got.status_code == 405
    assert await OcrJob.objects.acount() == 1


async def test_run_again_without_the_kept_file_says_so(web, alice):
    old = await finished_job(alice, data=None)

    response = await web.post(f"/jobs/{old.pk}/again", {"preset": "markdown"}, follow=True)

    assert "file is no longer kept: upload it again" in response.content.decode()
    assert await OcrJob.objects.acount() == 1


async def test_the_job_page_offers_run_again_only_with_a_kept_upload(web, alice):
    kept = await finished_job(alice)
    gone = await finished_job(alice, data=None)

    with_file = (await web.get(f"/jobs/{kept.pk}/")).content.decode()
    without = (await web.get(f"/jobs/{gone.pk}/")).content.decode()

    assert f'action="/jobs/{kept.pk}/again"' in with_file
    assert "/again" not in without


async def test_the_running_jobs_limit_applies_to_each_file_of_a_batch(web, alice, bob, settings, fake_vllm):
    settings.OCR_USER_MAX_RUNNING_JOBS = 1
    fake_vllm.set_default(tokens=40, token_delay=0.02)  # the first job still runs when the second asks
    files = [SimpleUploadedFile("first.png", PNG), SimpleUploadedFile("second.png", PNG)]

    response = await web.post("/jobs/new", {"file": files, "preset": "default"})

    assert response.status_code == 302
    jobs = await wait_for_jobs(alice)
    assert [job.file_name for job in jobs] == ["first.png"]
    batch = (await web.get(response["Location"])).content.decode()
    assert "“second.png” was not started: You have too many jobs running at once." in batch
    assert "1 job started." in batch
    # The refused file is kept: the batch page offers it again, and the upload page brings it back ticked.
    kept = await PendingUpload.objects.aget(file_name="second.png")
    assert "data-kept-offer" in batch and f"/?kept={kept.pk}" in batch
    home = (await web.get(f"/?kept={kept.pk}")).content.decode()
    assert "upload-item--kept" in home and "second.png" in home and f'value="{kept.pk}"' in home
    others = (await (await client_for(bob)).get(f"/?kept={kept.pk}")).content.decode()
    assert "second.png" not in others  # someone else's kept file is as good as unknown
