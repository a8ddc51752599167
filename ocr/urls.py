from django.urls import path, register_converter

from ocr import views


class DownloadFormat:
    regex = "md|txt|json|pdf|docx"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(DownloadFormat, "download_format")

app_name = "ocr"

urlpatterns = [
    path("", views.home, name="home"),
    path("jobs/new", views.job_new, name="job-new"),
    path("jobs/preview", views.preview, name="preview"),
    path("jobs/batch", views.job_batch, name="job-batch"),
    path("jobs/", views.history, name="history"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job"),
    path("jobs/<uuid:job_id>/events", views.job_events, name="job-events"),
    path("jobs/<uuid:job_id>/cancel", views.job_cancel, name="job-cancel"),
    path("jobs/<uuid:job_id>/delete", views.job_remove, name="job-delete"),
    path("jobs/<uuid:job_id>/retry", views.job_retry, name="job-retry"),
    path("jobs/<uuid:job_id>/again", views.job_run_again, name="job-again"),
    path("jobs/<uuid:job_id>/result.<download_format:fmt>", views.job_download, name="job-download"),
    path("jobs/<uuid:job_id>/pages/<int:number>/image", views.page_image, name="page-image"),
    path("jobs/<uuid:job_id>/pages/<int:number>.md", views.page_download, name="page-download"),
    path("usage/", views.usage, name="usage"),
]
