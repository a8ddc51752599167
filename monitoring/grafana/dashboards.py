"""Source of the provisioned Grafana dashboards: ``python monitoring/grafana/dashboards.py`` writes them to
``provisioning/dashboards/*.json``.

The JSON files are committed (Grafana reads them from there); the test suite checks they are what this script
makes, that every query parses (promtool), that they type-check against Grafana's own schema (@grafana/schema
with tsc), and that every panel query returns data from a live Prometheus scraping the app and the engine.

Panels use the ``datasource`` variable (default: the provisioned ``prometheus`` data source) and a ``job``
variable, so the same dashboards work for several stacks in one Prometheus.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "provisioning" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
TAGS = ["my-ocr"]
SCHEMA_VERSION = 39  # Grafana 11


@dataclass
class Query:
    expr: str
    legend: str = "__auto"
    instant: bool = False


@dataclass
class Panel:
    title: str
    queries: list[Query]
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 12
    height: int = 8
    description: str = ""
    stack: bool = False
    decimals: int | None = None
    thresholds: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Row:
    title: str


def q(expr: str, legend: str = "__auto") -> Query:
    return Query(" ".join(expr.split()), legend)


def quantiles(metric: str, selector: str, by: str = "", levels: tuple[float, ...] = (0.5, 0.95, 0.99)) -> list[Query]:
    """``histogram_quantile`` queries of ``metric``'s buckets, one per level (legend ``p95`` or ``p95 {{by}}``)."""
    group = f"le, {by}" if by else "le"
    queries = []
    for level in levels:
        name = f"p{round(level * 100)}"
        legend = f"{name} {{{{{by}}}}}" if by else name
        expr = f"histogram_quantile({level}, sum by ({group}) (rate({metric}_bucket{{{selector}}}[{RATE}])))"
        queries.append(q(expr, legend))
    return queries


# --- the dashboards ---------------------------------------------------------------------------------------

API = 'job=~"$job"'


def compose_jobs_overview() -> dict[str, Any]:
    items: list[Panel | Row] = [
        Row("Targets"),
        Panel("Targets up", [q("sum(up)")], kind="stat", width=6, height=5),
        Panel(
            "Targets down",
            [q("count(up == 0) or vector(0)")],
            kind="stat",
            width=6,
            height=5,
            thresholds=[(0, "green"), (1, "red")],
        ),
        Panel("Jobs", [q("count(count by (job) (up))")], kind="stat", width=6, height=5),
        Panel(
            "Samples ingested per second",
            [q(f"sum(rate(prometheus_tsdb_head_samples_appended_total[{RATE}]))")],
            kind="stat",
            unit="ops",
            width=6,
            height=5,
        ),
        Panel(
            "Scrape targets",
            [Query("up", "", instant=True)],
            kind="table",
            width=24,
            height=7,
            description="Every target Prometheus scrapes, with its job, instance and health (1 = up).",
        ),
        Row("Scrapes"),
        Panel("Target health", [q("up", "{{job}} {{instance}}")], width=12, description="1 = up, 0 = down."),
        Panel("Scrape duration", [q("scrape_duration_seconds", "{{job}} {{instance}}")], unit="s"),
        Panel("Samples scraped", [q("scrape_samples_scraped", "{{job}} {{instance}}")]),
        Panel("New series per scrape", [q("scrape_series_added", "{{job}} {{instance}}")]),
    ]
    return dashboard(
        "compose-jobs-overview",
        "Compose Jobs Overview",
        "Health of every scrape target of the compose stack: the API, the vLLM engine, Prometheus itself.",
        items,
        variables=[],
    )


def api_http_overview() -> dict[str, Any]:
    requests = f"rate(http_requests_total{{{API}}}[{RATE}])"
    items: list[Panel | Row] = [
        Row("Traffic"),
        Panel("Requests per second", [q(f"sum({requests})")], kind="stat", unit="reqps", width=6, height=5),
        Panel(
            "Server errors (5xx share)",
            [q(f'(sum(rate(http_requests_total{{{API},status=~"5.."}}[{RATE}])) or vector(0)) / sum({requests})')],
            kind="stat",
            unit="percentunit",
            width=6,
            height=5,
            thresholds=[(0, "green"), (0.01, "orange"), (0.05, "red")],
        ),
        Panel(
            "In-flight requests",
            [q(f"sum(http_in_flight_requests{{{API}}})")],
            kind="stat",
            width=6,
            height=5,
            description="Requests being answered now; a stream counts until its last byte.",
        ),
        Panel(
            "Client errors (4xx share)",
            [q(f'(sum(rate(http_requests_total{{{API},status=~"4.."}}[{RATE}])) or vector(0)) / sum({requests})')],
            kind="stat",
            unit="percentunit",
            width=6,
            height=5,
        ),
        Panel("Requests per second by route", [q(f"sum by (path) ({requests})", "{{path}}")], unit="reqps"),
        Panel(
            "Responses per second by status",
            [q(f"sum by (status) ({requests})", "{{status}}")],
            unit="reqps",
            stack=True,
        ),
        Row("Latency (until the last byte)"),
        Panel(
            "p95 latency by route",
            quantiles("http_request_duration_seconds", API, by="path", levels=(0.95,)),
            unit="s",
            description="Streams are timed until their last byte, not until the view returned.",
        ),
        Panel(
            "p99 latency by route",
            quantiles("http_request_duration_seconds", API, by="path", levels=(0.99,)),
            unit="s",
        ),
        Panel(
            "Time to first frame of streams",
            quantiles("http_time_to_first_byte_seconds", API, by="path", levels=(0.5, 0.95)),
            unit="s",
            description="Streaming responses: from the request reaching Django to the first NDJSON frame on the wire.",
        ),
        Panel(
            "Response bytes per second by route",
            [q(f"sum by (path) (rate(http_response_bytes_total{{{API}}}[{RATE}]))", "{{path}}")],
            unit="Bps",
        ),
        Panel("In-flight requests over time", [q(f"sum(http_in_flight_requests{{{API}}})", "in flight")]),
        Panel(
            "Error responses per second by route and status",
            [
                q(
                    f'sum by (path, status) (rate(http_requests_total{{{API},status=~"[45].."}}[{RATE}]))',
                    "{{status}} {{path}}",
                )
            ],
            unit="reqps",
        ),
    ]
    return dashboard(
        "api-http-overview",
        "API HTTP Overview",
        "My OCR's HTTP traffic by route pattern: rates, statuses, latency until the last byte, in-flight requests.",
        items,
        variables=[job_variable("my-ocr-api", "http_requests_total")],
    )


def ocr_overview() -> dict[str, Any]:
    items: list[Panel | Row] = [
        Row("Jobs"),
        Panel(
            "OCR jobs per second by kind",
            [q(f"sum by (kind) (rate(ocr_requests_total{{{API}}}[{RATE}]))", "{{kind}}")],
            unit="reqps",
            width=8,
        ),
        Panel(
            "Jobs finished per second by status",
            [q(f"sum by (status) (rate(ocr_jobs_total{{{API}}}[{RATE}]))", "{{status}}")],
            unit="reqps",
            width=8,
            stack=True,
        ),
        Panel(
            "Jobs in progress",
            [q(f"sum by (kind) (ocr_in_progress{{{API}}})", "{{kind}}")],
            width=8,
        ),
        Panel(
            "Processing time (whole stream) by kind",
            quantiles("ocr_processing_seconds", API, by="kind", levels=(0.95, 0.99)),
            unit="s",
            width=8,
        ),
        Panel(
            "Time to first text",
            quantiles("ocr_time_to_first_text_seconds", API, levels=(0.5, 0.95)),
            unit="s",
            width=8,
            description="From a job's start to the first recognised text the engine streamed.",
        ),
        Panel(
            "Input bytes per second by kind",
            [q(f"sum by (kind) (rate(ocr_input_bytes_total{{{API}}}[{RATE}]))", "{{kind}}")],
            unit="Bps",
            width=8,
        ),
        Row("Pages"),
        Panel(
            "Pages per second by status",
            [q(f"sum by (status) (rate(ocr_pages_total{{{API}}}[{RATE}]))", "{{status}}")],
            unit="ops",
            width=8,
            stack=True,
        ),
        Panel(
            "Time per page",
            quantiles("ocr_page_processing_seconds", f'{API},status="done"', levels=(0.5, 0.95, 0.99)),
            unit="s",
            width=8,
        ),
        Panel(
            "Finish reasons per second",
            [q(f"sum by (finish_reason) (rate(ocr_finish_reasons_total{{{API}}}[{RATE}]))", "{{finish_reason}}")],
            unit="ops",
            width=8,
            description="'length' means the engine stopped at its token limit, usually in a repetition loop.",
        ),
        Panel(
            "Pages cut off by the token limit",
            [
                q(
                    f'sum(rate(ocr_finish_reasons_total{{{API},finish_reason="length"}}[{RATE}]))'
                    f" / sum(rate(ocr_finish_reasons_total{{{API}}}[{RATE}]))",
                    "cut off",
                )
            ],
            unit="percentunit",
            width=8,
        ),
        Panel(
            "Engine errors per second by code",
            [q(f"sum by (code) (rate(ocr_engine_errors_total{{{API}}}[{RATE}]))", "{{code}}")],
            unit="ops",
            width=8,
        ),
        Panel(
            "Requests refused before a job, by code",
            [q(f"sum by (code) (rate(ocr_requests_rejected_total{{{API}}}[{RATE}]))", "{{code}}")],
            unit="reqps",
            width=8,
        ),
        Row("Engine queue"),
        Panel(
            "Pages waiting and in flight",
            [
                q(f"sum(ocr_pages_waiting{{{API}}})", "waiting for a slot"),
                q(f"sum(ocr_pages_in_flight{{{API}}})", "in flight"),
                q(f"sum(ocr_engine_slots{{{API}}})", "slots"),
            ],
            width=12,
        ),
        Panel(
            "Wait for an engine slot",
            quantiles("ocr_page_queue_seconds", API, levels=(0.5, 0.95)),
            unit="s",
            width=12,
        ),
        Row("Engine servers, the model and repetition loops"),
        Panel(
            "Engine requests per second by server and result",
            [q(f"sum by (server, result) (rate(ocr_engine_requests_total{{{API}}}[{RATE}]))", "{{server}} {{result}}")],
            unit="reqps",
            width=6,
            description="Each vLLM server of LLM_BASE_URL: done, cancelled or an error code.",
        ),
        Panel(
            "Engine requests in flight by server",
            [q(f"sum by (server) (ocr_engine_server_in_flight{{{API}}})", "{{server}}")],
            width=6,
            description="Pages go to the healthy server with the fewest requests in flight.",
        ),
        Panel(
            "Token-limit and loop endings by model profile",
            [
                q(
                    f'sum by (profile) (rate(ocr_engine_completions_total{{{API},finish_reason=~"length|loop"}}'
                    f"[{RATE}])) / sum by (profile) (rate(ocr_engine_completions_total{{{API}}}[{RATE}]))",
                    "{{profile}}",
                )
            ],
            unit="percentunit",
            width=6,
            description="Share of vLLM requests that ran to the token limit or were stopped in a repetition loop "
            "(the OcrRepetitionLoops alert fires above 5%).",
        ),
        Panel(
            "Repetition loops and retries per second",
            [
                q(
                    f"sum by (profile, stage) (rate(ocr_engine_loops_total{{{API}}}[{RATE}]))",
                    "loop {{profile}} {{stage}}",
                ),
                q(
                    f"sum by (profile, result) (rate(ocr_engine_loop_retries_total{{{API}}}[{RATE}]))",
                    "retry {{profile}} {{result}}",
                ),
            ],
            unit="ops",
            width=6,
            description="Loops found while streaming (the request stopped early) or at the token limit, and the "
            "pages asked again with another strategy: recovered, looped again, failed or skipped.",
        ),
        Row("Detached jobs and the task queue"),
        Panel(
            "Detached jobs by event",
            [q(f"sum by (event) (rate(ocr_queue_jobs_total{{{API}}}[{RATE}]))", "{{event}}")],
            unit="ops",
            width=6,
            description=(
                "Browser uploads and POST /api/jobs: submitted, started by a runner, resumed after a runner died, "
                "finished, refused by the broker; helped (a long PDF's pages shared by another worker), pages "
                "released by a worker that was gone."
            ),
        ),
        Panel(
            "Waiting for a runner / running",
            [
                q(f"max(ocr_queue_depth{{{API}}})", "waiting"),
                q(f"sum(ocr_queue_running{{{API}}})", "running"),
            ],
            width=6,
            description="Waiting: queued jobs in the ledger. Running: detached jobs in web and worker processes.",
        ),
        Panel(
            "Wait for a runner",
            quantiles("ocr_queue_wait_seconds", API, levels=(0.5, 0.95)),
            unit="s",
            width=6,
        ),
        Panel(
            "Engine retries per second by code",
            [q(f"sum by (code) (rate(ocr_engine_retries_total{{{API}}}[{RATE}]))", "{{code}}")],
            unit="ops",
            width=6,
            description="Engine requests tried again after a transient failure (refused, 502/503/504, dropped).",
        ),
        Row("Usage"),
        Panel(
            "Tokens per second",
            [
                q(f"sum(rate(prompt_tokens_total{{{API}}}[{RATE}]))", "prompt"),
                q(f"sum(rate(completion_tokens_total{{{API}}}[{RATE}]))", "completion"),
            ],
            width=8,
        ),
        Panel(
            "Recognised characters per second",
            [q(f"sum(rate(ocr_completion_chars_total{{{API}}}[{RATE}]))", "characters")],
            width=8,
        ),
        Panel("Users", [q(f"max(users_total{{{API}}})", "users")], kind="stat", width=4),
        Panel(
            "Image / PDF jobs in range",
            [
                q(f"sum(increase(image_requests_total{{{API}}}[$__range]))", "image"),
                q(f"sum(increase(pdf_requests_total{{{API}}}[$__range]))", "pdf"),
            ],
            kind="stat",
            width=4,
            decimals=0,
        ),
    ]
    return dashboard(
        "ocr-overview",
        "OCR Overview",
        "OCR jobs and pages: rates, statuses, latency, engine errors, finish reasons, the engine queue, usage.",
        items,
        variables=[job_variable("my-ocr-api", "ocr_requests_total")],
    )


def vllm_overview() -> dict[str, Any]:
    engine = 'job=~"$job",model_name=~"$model_name"'
    items: list[Panel | Row] = [
        Row("Scheduler"),
        Panel(
            "Requests running and waiting",
            [
                q(f"sum(vllm:num_requests_running{{{engine}}})", "running"),
                q(f"sum(vllm:num_requests_waiting{{{engine}}})", "waiting"),
            ],
            width=8,
        ),
        Panel(
            "KV-cache usage",
            [q(f"max(vllm:kv_cache_usage_perc{{{engine}}})", "KV cache")],
            unit="percentunit",
            width=8,
        ),
        Panel(
            "Preemptions per second",
            [q(f"sum(rate(vllm:num_preemptions_total{{{engine}}}[{RATE}]))", "preemptions")],
            unit="ops",
            width=8,
        ),
        Row("Requests"),
        Panel(
            "Finished requests per second by reason",
            [
                q(
                    f"sum by (finished_reason) (rate(vllm:request_success_total{{{engine}}}[{RATE}]))",
                    "{{finished_reason}}",
                )
            ],
            unit="reqps",
            stack=True,
            description="'length': cut off at max_tokens (repetition loops); 'abort': the client went away.",
        ),
        Panel(
            "Aborted or failed requests (share)",
            [
                q(
                    f'sum(rate(vllm:request_success_total{{{engine},finished_reason=~"abort|error"}}[{RATE}]))'
                    f" / sum(rate(vllm:request_success_total{{{engine}}}[{RATE}]))",
                    "aborted or failed",
                )
            ],
            unit="percentunit",
        ),
        Panel(
            "End-to-end request latency",
            quantiles("vllm:e2e_request_latency_seconds", engine),
            unit="s",
            width=8,
        ),
        Panel(
            "Time to first token",
            quantiles("vllm:time_to_first_token_seconds", engine),
            unit="s",
            width=8,
        ),
        Panel(
            "Inter-token latency",
            quantiles("vllm:inter_token_latency_seconds", engine, levels=(0.5, 0.95)),
            unit="s",
            width=8,
        ),
        Panel(
            "Mean time per phase",
            [
                q(
                    f"sum(rate(vllm:request_{phase}_time_seconds_sum{{{engine}}}[{RATE}]))"
                    f" / sum(rate(vllm:request_{phase}_time_seconds_count{{{engine}}}[{RATE}]))",
                    phase,
                )
                for phase in ("queue", "prefill", "decode")
            ],
            unit="s",
        ),
        Panel(
            "Prompt and generation length",
            [
                *quantiles("vllm:request_prompt_tokens", engine, levels=(0.5,)),
                *quantiles("vllm:request_generation_tokens", engine, levels=(0.5, 0.95)),
            ],
            description="Tokens per request: prompts are mostly image tokens (273–933 for DeepSeek-OCR).",
        ),
        Row("Tokens"),
        Panel(
            "Token throughput",
            [
                q(f"sum(rate(vllm:prompt_tokens_total{{{engine}}}[{RATE}]))", "prompt (prefill)"),
                q(f"sum(rate(vllm:generation_tokens_total{{{engine}}}[{RATE}]))", "generation"),
            ],
            unit="short",
        ),
        Panel(
            "Tokens in range",
            [
                q(f"sum(increase(vllm:prompt_tokens_total{{{engine}}}[$__range]))", "prompt"),
                q(f"sum(increase(vllm:generation_tokens_total{{{engine}}}[$__range]))", "generation"),
            ],
            kind="stat",
            decimals=0,
        ),
        Row("Process"),
        Panel(
            "Resident memory",
            [q('process_resident_memory_bytes{job=~"$job"}', "{{instance}}")],
            unit="bytes",
            description="The API server process; absent when vLLM runs several API server processes.",
        ),
        Panel(
            "CPU",
            [q(f'rate(process_cpu_seconds_total{{job=~"$job"}}[{RATE}])', "{{instance}}")],
            unit="percentunit",
        ),
    ]
    variables = [
        job_variable("vllm-engine", "vllm:num_requests_running"),
        {
            **query_variable("model_name", "Model", 'label_values(vllm:num_requests_running{job=~"$job"}, model_name)'),
            "includeAll": True,
            "allValue": ".*",
            "current": {"text": "All", "value": "$__all"},
        },
    ]
    return dashboard(
        "vllm-overview",
        "vLLM Overview",
        "The vLLM engine serving DeepSeek-OCR (vLLM V1 metric names): scheduler, latency, tokens, process.",
        items,
        variables=variables,
    )


def users_and_usage() -> dict[str, Any]:
    items: list[Panel | Row] = [
        Row("Users"),
        Panel("Users", [q(f"max(users_total{{{API}}})", "users")], kind="stat", width=8, height=5),
        Panel(
            "Active users",
            [q(f"max by (window) (users_active{{{API}}})", "last {{window}}")],
            kind="stat",
            width=16,
            height=5,
            description="Users who started at least one OCR job in the window (counted from the ledger).",
        ),
        Row("Usage in the selected range"),
        Panel(
            "Tokens",
            [
                q(f"sum(increase(prompt_tokens_total{{{API}}}[$__range]))", "prompt"),
                q(f"sum(increase(completion_tokens_total{{{API}}}[$__range]))", "completion"),
                q(f"sum(increase(tokens_total{{{API}}}[$__range]))", "total"),
            ],
            kind="stat",
            width=12,
            height=5,
            decimals=0,
        ),
        Panel(
            "Jobs by kind",
            [q(f"sum by (kind) (increase(ocr_requests_total{{{API}}}[$__range]))", "{{kind}}")],
            kind="stat",
            width=6,
            height=5,
            decimals=0,
        ),
        Panel(
            "Input",
            [q(f"sum(increase(ocr_input_bytes_total{{{API}}}[$__range]))", "uploaded")],
            kind="stat",
            unit="bytes",
            width=6,
            height=5,
        ),
        Row("Rates"),
        Panel(
            "Tokens per second",
            [
                q(f"sum(rate(prompt_tokens_total{{{API}}}[{RATE}]))", "prompt"),
                q(f"sum(rate(completion_tokens_total{{{API}}}[{RATE}]))", "completion"),
                q(f"sum(rate(tokens_total{{{API}}}[{RATE}]))", "total"),
            ],
        ),
        Panel(
            "Completion tokens per page",
            [
                q(
                    f"sum(rate(completion_tokens_total{{{API}}}[{RATE}]))"
                    f" / sum(rate(ocr_pages_total{{{API}}}[{RATE}]))",
                    "tokens per page",
                )
            ],
        ),
        Panel(
            "Pages per second by status",
            [q(f"sum by (status) (rate(ocr_pages_total{{{API}}}[{RATE}]))", "{{status}}")],
            unit="ops",
            stack=True,
        ),
        Panel(
            "Recognised characters per second",
            [q(f"sum(rate(ocr_completion_chars_total{{{API}}}[{RATE}]))", "characters")],
        ),
    ]
    return dashboard(
        "users-usage",
        "Users & Usage",
        "Users and the usage the ledger records (tokens, pages, bytes). Per-user figures are in the admin "
        "console: metrics never carry user labels.",
        items,
        variables=[job_variable("my-ocr-api", "users_total")],
    )


def django_overview() -> dict[str, Any]:
    """django-prometheus' metrics under their own names, as the community Django dashboards query them."""
    by_view = f"rate(django_http_requests_total_by_view_transport_method_total{{{API}}}[{RATE}])"
    items: list[Panel | Row] = [
        Row("Requests"),
        Panel(
            "Requests per second by view",
            [q(f"sum by (view) ({by_view})", "{{view}}")],
            unit="reqps",
            description="URL names (view_name); '<unnamed view>' is a request that matched no URL pattern.",
        ),
        Panel(
            "Responses per second by status",
            [q(f"sum by (status) (rate(django_http_responses_total_by_status_total{{{API}}}[{RATE}]))", "{{status}}")],
            unit="reqps",
            stack=True,
        ),
        Panel(
            "p95 latency by view (until the last byte)",
            quantiles("django_http_requests_latency_seconds_by_view_method", API, by="view", levels=(0.95,)),
            unit="s",
            description="A streaming response is timed until its last byte; Server-Sent Events streams are not in it.",
        ),
        Panel(
            "Latency including middlewares",
            quantiles("django_http_requests_latency_including_middlewares_seconds", API, levels=(0.5, 0.95, 0.99)),
            unit="s",
        ),
        Panel(
            "Responses per second by status, view and method",
            [
                q(
                    f"sum by (status, view, method) "
                    f"(rate(django_http_responses_total_by_status_view_method_total{{{API}}}[{RATE}]))",
                    "{{status}} {{method}} {{view}}",
                )
            ],
            unit="reqps",
        ),
        Panel(
            "Exceptions per second by type",
            [q(f"sum by (type) (rate(django_http_exceptions_total_by_type_total{{{API}}}[{RATE}]))", "{{type}}")],
            unit="ops",
            description="Exceptions raised by views (Http404 and PermissionDenied included).",
        ),
        Panel(
            "Exceptions per second by view",
            [q(f"sum by (view) (rate(django_http_exceptions_total_by_view_total{{{API}}}[{RATE}]))", "{{view}}")],
            unit="ops",
        ),
        Panel(
            "Response body bytes (p95)",
            quantiles("django_http_responses_body_total_bytes", API, levels=(0.5, 0.95)),
            unit="bytes",
            description="Bytes actually sent; for a stream, all of its chunks.",
        ),
        Row("Database"),
        Panel(
            "Queries per second",
            [q(f"sum by (alias, vendor) (rate(django_db_execute_total{{{API}}}[{RATE}]))", "{{alias}} ({{vendor}})")],
            unit="ops",
        ),
        Panel(
            "Query duration",
            quantiles("django_db_query_duration_seconds", API, by="alias", levels=(0.5, 0.95, 0.99)),
            unit="s",
        ),
        Panel(
            "Database errors per second",
            [q(f"sum(rate(django_db_errors_total{{{API}}}[{RATE}])) or vector(0)", "errors")],
            unit="ops",
            description="Exceptions raised by the database driver, by type in the raw metric.",
        ),
        Panel(
            "New connections per second",
            [q(f"sum by (alias) (rate(django_db_new_connections_total{{{API}}}[{RATE}]))", "{{alias}}")],
            unit="ops",
            description="Connections are kept for DB_CONN_MAX_AGE seconds: a steady rate here means they are not.",
        ),
        Row("Cache and models"),
        Panel(
            "Cache gets per second",
            [
                q(f"sum by (backend) (rate(django_cache_get_total{{{API}}}[{RATE}]))", "gets {{backend}}"),
                q(f"sum by (backend) (rate(django_cache_get_hits_total{{{API}}}[{RATE}]))", "hits {{backend}}"),
            ],
            unit="ops",
            description="The sign-in and registration limits and, with Redis, sessions read the cache.",
        ),
        Panel(
            "Cache hit ratio",
            [
                q(
                    f"sum(increase(django_cache_get_hits_total{{{API}}}[$__range])) "
                    f"/ sum(increase(django_cache_get_total{{{API}}}[$__range]))",
                    "hit ratio",
                )
            ],
            kind="stat",
            unit="percentunit",
            width=6,
            decimals=1,
        ),
        Panel(
            "Model operations",
            [
                q(f"sum by (model) (increase(django_model_inserts_total{{{API}}}[$__range]))", "inserts {{model}}"),
                q(f"sum by (model) (increase(django_model_updates_total{{{API}}}[$__range]))", "updates {{model}}"),
                q(f"sum by (model) (increase(django_model_deletes_total{{{API}}}[$__range]))", "deletes {{model}}"),
            ],
            kind="table",
            width=18,
            description="Saves and deletes of jobs, pages, API tokens and users through model instances; "
            "QuerySet.update() and bulk_create() (a page's final write, a job's end) bypass these counters.",
        ),
        Panel(
            "Model inserts per second",
            [q(f"sum by (model) (rate(django_model_inserts_total{{{API}}}[{RATE}]))", "{{model}}")],
            unit="ops",
            width=24,
        ),
    ]
    return dashboard(
        "django-overview",
        "Django Overview",
        "django-prometheus' metrics: requests, latency and responses by view, exceptions, database queries, cache "
        "and model operations. Its metric names are the ones the community Django dashboards query.",
        items,
        variables=[job_variable("my-ocr-api", "django_http_requests_before_middlewares_total")],
    )


DASHBOARDS = {
    "compose-jobs-overview.json": compose_jobs_overview,
    "api-http-overview.json": api_http_overview,
    "ocr-overview.json": ocr_overview,
    "vllm-overview.json": vllm_overview,
    "users-usage.json": users_and_usage,
    "django-overview.json": django_overview,
}


# --- JSON -------------------------------------------------------------------------------------------------


def datasource_variable() -> dict[str, Any]:
    return {
        "type": "datasource",
        "name": "datasource",
        "label": "Data source",
        "query": "prometheus",
        "current": {"text": "Prometheus", "value": "prometheus"},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
    }


def query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "sort": 1,
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "regex": "",
    }


def job_variable(default: str, metric: str) -> dict[str, Any]:
    return {
        **query_variable("job", "Job", f"label_values({metric}, job)"),
        "current": {"text": default, "value": default},
    }


def panel_json(panel: Panel, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
    targets = []
    for index, query in enumerate(panel.queries):
        target: dict[str, Any] = {
            "refId": chr(ord("A") + index),
            "datasource": DATASOURCE,
            "expr": query.expr,
            "legendFormat": query.legend,
            "range": not (query.instant or panel.kind == "table"),
            "instant": query.instant or panel.kind == "table",
        }
        if panel.kind == "table":
            target["format"] = "table"
        targets.append(target)
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    steps = panel.thresholds or [(0, "green")]
    defaults["thresholds"] = {
        "mode": "absolute",
        "steps": [{"color": color, "value": None if i == 0 else value} for i, (value, color) in enumerate(steps)],
    }
    options: dict[str, Any]
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": True,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
        }
        options = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif panel.kind == "stat":
        defaults["color"] = {"mode": "thresholds"}
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        }
    else:
        options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"]}}
    result: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "datasource": DATASOURCE,
        "gridPos": grid,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
    }
    if panel.description:
        result["description"] = panel.description
    if panel.kind == "table":
        result["transformations"] = [
            {"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True}, "renameByName": {}}}
        ]
    return result


def dashboard(
    uid: str, title: str, description: str, items: list[Panel | Row], *, variables: list[dict[str, Any]]
) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    x = y = row_height = 0
    for panel_id, item in enumerate(items, start=1):
        if isinstance(item, Row):
            if x:
                y += row_height
            x, row_height = 0, 0
            panels.append(
                {
                    "id": panel_id,
                    "type": "row",
                    "title": item.title,
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                    "panels": [],
                }
            )
            y += 1
            continue
        if x + item.width > 24:
            x, y, row_height = 0, y + row_height, 0
        panels.append(panel_json(item, panel_id, {"h": item.height, "w": item.width, "x": x, "y": y}))
        x += item.width
        row_height = max(row_height, item.height)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": TAGS,
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "type": "dashboards",
                "title": "My OCR",
                "tags": TAGS,
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "templating": {"list": [datasource_variable(), *variables]},
        "panels": panels,
    }


def render(builder: Any) -> str:
    return json.dumps(builder(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    """Write the dashboards; with ``--check``, only report whether the files are up to date."""
    check = "--check" in argv
    stale = []
    for name, builder in DASHBOARDS.items():
        path = OUTPUT / name
        text = render(builder)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not check:
            path.write_text(text, encoding="utf-8")
    if check and stale:
        print("out of date (run python monitoring/grafana/dashboards.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
