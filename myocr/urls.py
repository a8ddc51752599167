from django.contrib import admin
from django.urls import include, path

from accounts import api as accounts_api
from accounts.views import login_rate_limited
from myocr import openapi
from myocr.metrics import metrics_view
from ocr import api as ocr_api
from ocr.views import favicon, healthz

api_patterns = [
    path("ocr/image", ocr_api.ocr_image, name="ocr-image"),
    path("ocr/pdf", ocr_api.ocr_pdf, name="ocr-pdf"),
    path("jobs", ocr_api.jobs, name="jobs"),
    path("jobs/<str:job_id>", ocr_api.job_detail, name="job-detail"),
    path("jobs/<str:job_id>/events", ocr_api.job_events, name="job-events"),
    path("jobs/<str:job_id>/cancel", ocr_api.job_cancel, name="job-cancel"),
    path("jobs/<str:job_id>/retry", ocr_api.job_retry, name="job-retry"),
    *(
        path(f"jobs/<str:job_id>/result.{fmt}", ocr_api.job_result, {"fmt": fmt}, name=f"job-result-{fmt}")
        for fmt in ("md", "txt", "json", "pdf", "docx")
    ),
    path("auth/register", accounts_api.register, name="register"),
    path("auth/token", accounts_api.issue_token, name="token"),
    path("users/me", accounts_api.me, name="me"),
    path("users/me/usage", accounts_api.my_usage, name="my-usage"),
    path("users/me/usage/summary", accounts_api.my_usage_summary, name="my-usage-summary"),
    path("users/me/webhook", ocr_api.my_webhook, name="my-webhook"),
    path("users/me/webhook/rotate", ocr_api.my_webhook_rotate, name="my-webhook-rotate"),
    path("openapi.json", openapi.openapi_json, name="openapi"),
    path("docs", openapi.api_docs, name="docs"),
]

urlpatterns = [
    path("metrics", metrics_view, name="metrics"),
    path("api/metrics", metrics_view, name="api-metrics"),
    path("api/", include((api_patterns, "api"))),
    # The admin's own login form, behind the same brute-force limit as ours.
    path("admin/login/", login_rate_limited(admin.site.login), name="admin-login"),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("favicon.ico", favicon, name="favicon"),
    path("accounts/", include("accounts.urls")),
    path("i18n/", include("django.conf.urls.i18n")),
    path("", include("ocr.urls")),
]

handler400 = "myocr.http.bad_request"
handler404 = "myocr.http.not_found"
handler500 = "myocr.http.server_error"
