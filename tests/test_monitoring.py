"""The monitoring stack, checked with the real tools: promtool, a live Prometheus, the Compose v2 binary, tsc
with Grafana's schema, Daphne processes. Nothing here needs Docker or a Grafana server."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from testing.documents import SAMPLES, make_numbered_pdf
from testing.monitoring import (
    DASHBOARDS,
    DATASOURCE_UID,
    MONITORING,
    PROVISIONING,
    ROOT,
    Prometheus,
    all_queries,
    compose_binary,
    dashboard_files,
    load_dashboard,
    loopback_prometheus_config,
    panels,
    tool,
)
from testing.servers import AppServer, free_port
from testing.waiting import wait_until

from .conftest import AppServers

pytestmark = pytest.mark.slow
SCHEMA_CHECK = MONITORING / "grafana" / "schema-check"
EXPECTED_DASHBOARDS = {
    "compose-jobs-overview": "Compose Jobs Overview",
    "api-http-overview": "API HTTP Overview",
    "ocr-overview": "OCR Overview",
    "vllm-overview": "vLLM Overview",
    "users-usage": "Users & Usage",
    "django-overview": "Django Overview",
}
# The django-prometheus series the community Django dashboards (grafana.com 17617, 17616, 17613, 9528) query.
COMMUNITY_DJANGO_SERIES = (
    "django_http_requests_total_by_view_transport_method_total",
    "django_http_responses_total_by_status_view_method_total",
    "django_http_requests_latency_seconds_by_view_method_bucket",
    "django_http_requests_latency_including_middlewares_seconds_bucket",
    "django_http_exceptions_total_by_type_total",
    "django_http_exceptions_total_by_view_total",
    "django_db_execute_total",
    "django_db_query_duration_seconds_bucket",
    "django_db_new_connections_total",
    "django_cache_get_total",
    "django_cache_get_hits_total",
    "django_model_inserts_total",
    "django_model_updates_total",
)


def run(*command: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT, **kwargs)


# --- Prometheus configuration and alert rules -------------------------------------------------------------


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """The shipped files, as promtool 2.42 reads them. The full check also opens the bearer-token file, which
    only exists inside the container; it runs on a copy that points it at a real file."""
    for name in ("prometheus.yml", "prometheus.cpu.yml"):
        syntax = run(tool("promtool"), "check", "config", "--syntax-only", str(MONITORING / name))
        assert syntax.returncode == 0, syntax.stdout + syntax.stderr
        config = yaml.safe_load((MONITORING / name).read_text())
        token = tmp_path / "token"
        token.write_text("secret")
        config["rule_files"] = [str(MONITORING / rule) for rule in config["rule_files"]]
        for job in config["scrape_configs"]:
            if "authorization" in job:
                job["authorization"]["credentials_file"] = str(token)
        copy = tmp_path / name
        copy.write_text(yaml.safe_dump(config))
        full = run(tool("promtool"), "check", "config", str(copy))
        assert full.returncode == 0, full.stdout + full.stderr
        assert "SUCCESS: 11 rules found" in full.stdout


def test_prometheus_scrapes_the_app_and_the_engine() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["my-ocr-api"]["static_configs"] == [{"targets": ["api:8000"]}]
    assert jobs["my-ocr-api"]["metrics_path"] == "/metrics"
    assert jobs["vllm-engine"]["static_configs"] == [{"targets": ["engine:8000"]}]


def test_cpu_prometheus_config_is_the_gpu_one_without_the_engine() -> None:
    gpu = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    cpu = yaml.safe_load((MONITORING / "prometheus.cpu.yml").read_text())
    gpu["scrape_configs"] = [job for job in gpu["scrape_configs"] if job["job_name"] != "vllm-engine"]
    assert cpu == gpu


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    result = run(tool("promtool"), "test", "rules", str(MONITORING / "tests" / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = (MONITORING / "tests" / "alerts_test.yml").read_text()
    fired = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n", tests))
    assert alerts == {
        "ScrapeTargetDown",
        "MyOcrMetricsAbsent",
        "VllmEngineDown",
        "OcrEngineUnreachable",
        "MyOcrHighErrorRate",
        "OcrPagesFailing",
        "OcrPageLatencyHigh",
        "MyOcrApiLatencyHigh",
        "OcrPagesCutOff",
        "OcrJobsNotTaken",
        "OcrRepetitionLoops",
    }
    assert alerts <= fired, f"alerts never shown firing: {alerts - fired}"


# --- Grafana provisioning ---------------------------------------------------------------------------------


def test_dashboards_are_generated_from_their_source() -> None:
    result = run(sys.executable, "monitoring/grafana/dashboards.py", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {path.stem for path in dashboard_files()} == set(EXPECTED_DASHBOARDS)


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """Every panel query, macros and variables substituted, checked by promtool as a recording rule."""
    queries = all_queries()
    assert len(queries) > 60
    rules = [{"record": f"dashboard:query_{index}", "expr": expr} for index, (_, expr) in enumerate(queries)]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run(tool("promtool"), "check", "rules", str(path))
    if result.returncode:
        # promtool numbers rules from 1; name the panel of each broken query.
        broken = [
            f"{queries[int(index) - 1][0]}: {error}"
            for index, error in re.findall(r"rule (\d+),.*?: (.*)", result.stderr + result.stdout)
        ]
        pytest.fail("\n".join(broken) or result.stderr)
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_dashboards_are_well_formed() -> None:
    uids = set()
    for path in dashboard_files():
        dashboard = load_dashboard(path)
        uid = dashboard["uid"]
        assert EXPECTED_DASHBOARDS[uid] == dashboard["title"]
        assert uid not in uids
        uids.add(uid)
        assert "id" not in dashboard, "provisioned dashboards must not carry a database id"
        variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["current"]["value"] == DATASOURCE_UID
        ids = [panel["id"] for panel in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{uid}: duplicate panel ids"
        occupied: set[tuple[int, int]] = set()
        for panel in panels(dashboard):
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"{uid}/{panel['title']}: outside the grid"
            cells = {
                (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not cells & occupied, f"{uid}/{panel['title']} overlaps another panel"
            occupied |= cells
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], f"{uid}/{panel['title']} has no query"
            refs = [target["refId"] for target in panel["targets"]]
            assert len(refs) == len(set(refs))
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"]
                used = set(re.findall(r"\$\{?(\w+)", target["expr"])) - {"__rate_interval", "__range", "__interval"}
                assert used <= set(variables), f"{uid}/{panel['title']}: unknown variables {used - set(variables)}"


def test_provisioning_files_point_at_the_dashboards_and_prometheus() -> None:
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yml").read_text())["providers"]
    assert providers[0]["folder"] == "My OCR"
    assert providers[0]["options"]["path"] == "/etc/grafana/provisioning/dashboards"
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasources[0]["uid"] == DATASOURCE_UID
    assert datasources[0]["url"] == "http://prometheus:9090"


def test_dashboards_type_check_against_grafana_schema() -> None:
    """@grafana/schema's dashboard types with tsc (npm packages pinned in schema-check/package-lock.json)."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("npm and node are not installed: cannot type-check the dashboards with @grafana/schema")
    if not (SCHEMA_CHECK / "node_modules" / ".bin" / "tsc").exists():
        install = subprocess.run(
            [npm, "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=SCHEMA_CHECK,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert install.returncode == 0, install.stdout + install.stderr
    files = [str(path) for path in dashboard_files()]
    result = subprocess.run(
        ["node", "check-dashboards.mjs", *files], cwd=SCHEMA_CHECK, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK: {len(files)} dashboards" in result.stdout


# --- docker compose ---------------------------------------------------------------------------------------

SECRETS = {"SECRET_KEY": "test-only-secret-key", "GRAFANA_ADMIN_PASSWORD": "test-only-password"}


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": os.environ.get("PATH", ""), "HOME": str(ROOT), **(env or {})}
    return subprocess.run(
        [compose_binary(), "--env-file", str(ROOT / ".env.example"), *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        check=False,
    )


def compose_config(*files: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    options = [item for name in files for item in ("-f", name)]
    result = compose(*options, "config", "--format", "json", env={**SECRETS, **(env or {})})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_file_passes_compose_v2_validation() -> None:
    result = compose("-f", "docker-compose.yml", "config", "-q", env=SECRETS)
    assert result.returncode == 0, result.stderr
    result = compose("-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml", "config", "-q", env=SECRETS)
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_its_secrets() -> None:
    for missing, present in (("SECRET_KEY", "GRAFANA_ADMIN_PASSWORD"), ("GRAFANA_ADMIN_PASSWORD", "SECRET_KEY")):
        result = compose("-f", "docker-compose.yml", "config", "-q", env={present: SECRETS[present]})
        assert result.returncode != 0
        assert f"required variable {missing} is missing a value" in result.stderr


def test_compose_stack_has_the_services_the_original_had() -> None:
    config = compose_config("docker-compose.yml")
    services = config["services"]
    assert set(services) == {"api", "engine", "prometheus", "grafana"}
    api = services["api"]
    assert api["ports"][0]["published"] == "9000" and api["ports"][0]["target"] == 8000
    assert api["environment"]["LLM_BASE_URL"] == "http://engine:8000/v1"
    assert "api" in api["environment"]["ALLOWED_HOSTS"].split(",")
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    engine = services["engine"]
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", engine["image"]), "the engine image is pinned"
    command = engine["command"]
    assert command[0] == "deepseek-ai/DeepSeek-OCR"
    for flag in (
        "--logits-processors=vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor",
        "--no-enable-prefix-caching",
        "--mm-processor-cache-gb=0",
        "--chat-template=/etc/vllm/template_deepseek_ocr.jinja",
    ):
        assert flag in command
    template = [v for v in engine["volumes"] if v["target"] == "/etc/vllm/template_deepseek_ocr.jinja"]
    assert template and Path(template[0]["source"]) == ROOT / "deploy" / "vllm" / "template_deepseek_ocr.jinja"
    assert any(v["target"] == "/root/.cache/huggingface" for v in engine["volumes"])
    devices = engine["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    assert "/health" in " ".join(engine["healthcheck"]["test"])
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", services["prometheus"]["image"])
    assert "--web.enable-lifecycle" in services["prometheus"]["command"]
    grafana = services["grafana"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"])
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == SECRETS["GRAFANA_ADMIN_PASSWORD"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == "/etc/grafana/provisioning/dashboards/compose-jobs-overview.json"
    assert (DASHBOARDS / Path(home).name).is_file()


def test_cpu_override_runs_the_embedded_engine_without_a_gpu() -> None:
    config = compose_config("docker-compose.yml", "docker-compose.cpu.yml")
    services = config["services"]
    assert "engine" not in services
    assert services["api"]["environment"]["OCR_ENGINE"] == "local"
    assert services["api"]["environment"]["LLM_BASE_URL"] == ""
    assert "--config.file=/etc/prometheus/prometheus.cpu.yml" in services["prometheus"]["command"]
    assert not any("deploy" in service for service in services.values())


def test_postgres_profile_adds_postgresql_and_redis() -> None:
    services = compose_config("docker-compose.yml", env={"COMPOSE_PROFILES": "postgres"})["services"]
    assert {"postgres", "redis"} <= set(services)
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_queue_profile_adds_scalable_workers_with_their_broker() -> None:
    services = compose_config("docker-compose.yml", env={"COMPOSE_PROFILES": "queue"})["services"]
    assert {"worker", "rabbitmq", "postgres", "redis"} <= set(services)
    worker = services["worker"]
    assert worker["command"][:3] == ["python", "manage.py", "ocr_worker"] and "--metrics-port" in worker["command"]
    assert "ports" not in worker and "container_name" not in worker, "replicas must not clash: --scale worker=N"
    assert (
        worker["environment"]["OCR_QUEUE_URL"].startswith("amqp://")
        and "@rabbitmq:5672" in worker["environment"]["OCR_QUEUE_URL"]
    )
    assert worker["environment"]["DATABASE_URL"].startswith("postgres://")
    assert {volume["target"] for volume in worker["volumes"]} == {"/app/_data"}, "the uploads the api keeps"
    for needed in ("rabbitmq", "postgres", "redis"):
        assert worker["depends_on"][needed]["condition"] == "service_healthy"
    assert re.fullmatch(r"rabbitmq:\d+\.\d+\.\d+", services["rabbitmq"]["image"]), "the broker image is pinned"
    prometheus = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    [api_job] = [job for job in prometheus["scrape_configs"] if job["job_name"] == "my-ocr-api"]
    assert api_job["dns_sd_configs"] == [{"names": ["worker"], "type": "A", "port": 9100, "refresh_interval": "30s"}]


def test_env_example_lists_every_setting() -> None:
    """.env.example and the README's tables name the same variables, and every variable compose uses."""
    example = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    readme = (ROOT / "README.md").read_text()
    documented = set()
    for cell in re.findall(r"^\| ((?:`[A-Z][A-Z0-9_]*`(?:, )?)+) \|", readme, re.MULTILINE):
        documented |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", cell))
    compose_text = (ROOT / "docker-compose.yml").read_text() + (ROOT / "docker-compose.cpu.yml").read_text()
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", compose_text))
    assert documented - example == set(), "in the README but not in .env.example"
    assert example - documented == set(), "in .env.example but not in the README"
    assert interpolated - example == set(), "used by compose but not in .env.example"


def test_dockerfile_builds_a_slim_non_root_daphne_image() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11[\d.]*-slim-\w+$", dockerfile, re.MULTILINE)
    assert re.search(r"^USER app$", dockerfile, re.MULTILINE)
    assert "manage.py collectstatic --noinput" in dockerfile
    assert "/healthz" in dockerfile
    entrypoint = (ROOT / "deploy" / "entrypoint.sh").read_text()
    assert "python manage.py migrate --noinput" in entrypoint
    assert 'daphne -e "tcp:port=${PORT:-8000}:interface=0.0.0.0:backlog=1024" myocr.asgi:application' in entrypoint
    assert run("sh", "-n", "deploy/entrypoint.sh").returncode == 0
    assert os.access(ROOT / "deploy" / "entrypoint.sh", os.X_OK)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env", "_data"} <= set(ignored)


# --- the chat template ------------------------------------------------------------------------------------


def render_template(messages: list[dict[str, str]]) -> str:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    # The environment transformers (and so vLLM) renders chat templates in.
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = raise_exception
    source = (ROOT / "deploy" / "vllm" / "template_deepseek_ocr.jinja").read_text()
    return environment.from_string(source).render(messages=messages, bos_token="<｜begin▁of▁sentence｜>")


def test_chat_template_renders_deepseek_ocrs_plain_prompt() -> None:
    bos = "<｜begin▁of▁sentence｜>"
    assert render_template([{"role": "user", "content": "<image>\nFree OCR."}]) == bos + "<image>\nFree OCR."
    with_system = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert render_template(with_system) == bos + "SU"
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert render_template(turns) == bos + "abc"


def test_chat_template_refuses_roles_out_of_turn() -> None:
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="must alternate"):
        render_template([{"role": "assistant", "content": "a"}])
    with pytest.raises(TemplateError, match="must alternate"):
        render_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


# --- live: a real Prometheus scraping a real server -------------------------------------------------------

METRICS_TOKEN = "monitoring-test-token"
PASSWORD = "correct horse battery staple"  # AppServer.register_and_login's default
FAILURES = ({"fail_status": 500}, {"finish_reason": "length", "tokens": 30}, {"error_after": 2})


@pytest.fixture(scope="module")
def fake(fake_vllm_server: Any) -> Iterator[Any]:
    fake_vllm_server.reset()
    fake_vllm_server.set_default(tokens=30, token_delay=0.004, first_token_delay=0.02)
    yield fake_vllm_server
    fake_vllm_server.reset()


@pytest.fixture(scope="module")
def app(fake: Any, module_app_server: AppServers) -> AppServer:
    return module_app_server(
        {
            "OCR_ENGINE": "openai",
            "LLM_BASE_URL": fake.base_url,
            "METRICS_TOKEN": METRICS_TOKEN,
            "OCR_PAGE_CONCURRENCY": "3",
            "OCR_ENGINE_IDLE_TIMEOUT": "5",
        },
        name="monitored",
    )


@pytest.fixture(scope="module")
def prometheus(app: AppServer, fake: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    directory = tmp_path_factory.mktemp("prometheus")
    token = directory / "metrics_token"
    token.write_text(METRICS_TOKEN)
    port = free_port()
    config = loopback_prometheus_config(
        api_target=f"127.0.0.1:{app.port}",
        engine_target=f"127.0.0.1:{fake.port}",
        prometheus_target=f"127.0.0.1:{port}",
        token_file=token,
    )
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    server = Prometheus(path, directory, port)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def user_token(app: AppServer) -> str:
    return app.register_and_login("monitored")


def ocr(app: AppServer, token: str, endpoint: str, data: bytes, name: str) -> list[dict[str, Any]]:
    with httpx.stream(
        "POST",
        f"{app.url}/api/ocr/{endpoint}",
        files={"file": (name, data)},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    ) as response:
        body = b"".join(response.iter_bytes())
    return [json.loads(line) for line in body.splitlines()] if response.status_code == 200 else []


def scrape_app(app: AppServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = httpx.get(f"{app.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def wait_for_scrapes(prometheus: Prometheus, after: float) -> None:
    """Until Prometheus has scraped every target once more since ``after`` (a Unix time)."""

    def scraped() -> bool:
        targets = httpx.get(f"{prometheus.url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        return len(targets) == 3 and all(
            target["health"] == "up" and _timestamp(target["lastScrape"]) > after for target in targets
        )

    prometheus.wait(scraped, 20, "scraping all targets")


def _timestamp(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def test_every_panel_of_every_dashboard_shows_data_from_a_live_prometheus(
    app: AppServer, fake: Any, prometheus: Prometheus, user_token: str
) -> None:
    """Prometheus scrapes the app (with the metrics token) and the engine every second while image and PDF
    jobs run in three waves, each with an engine failure, a page cut off, a stream error, a refused upload and a
    client that leaves; then every panel query of every dashboard returns at least one finite value."""
    png = SAMPLES["short"].render()
    pdf = make_numbered_pdf(3)
    wait_for_scrapes(prometheus, time.time())  # counters exist before the load, so rates see it
    with ThreadPoolExecutor(max_workers=6) as pool:
        for _wave in range(3):
            fake.push_script(*FAILURES)
            for _failure in FAILURES:
                ocr(app, user_token, "image", png, "page.png")
            ocr(app, user_token, "image", b"not an image", "notes.txt")
            sign_in_after_a_typo(app, "monitored")
            open_a_stale_job_link(app, "monitored")
            fake.push_script(*[{"first_token_delay": 3.0}] * 3)
            leave_early(app, user_token, pdf)
            jobs = [pool.submit(ocr, app, user_token, "image", png, "page.png") for _ in range(4)]
            jobs += [pool.submit(ocr, app, user_token, "pdf", pdf, "doc.pdf") for _ in range(2)]
            for job in jobs:
                assert job.result()[-1]["type"] == "end"
            fake.push_script({"drop_after": 2})  # a dropped stream: retried (a transient failure)
            assert detached_job(app, user_token, png)[-1]["status"] == "done"
            wait_for_scrapes(prometheus, time.time())

    finished = scrape_app(app)
    jobs_total = sum(value for (name, _), value in finished.items() if name == "ocr_jobs_total")
    prometheus.wait(lambda: prometheus.value('sum(ocr_jobs_total{job="my-ocr-api"})') == jobs_total, 10, "caught up")
    empty, not_finite = [], []
    for where, expr in all_queries():
        result = prometheus.query(expr)
        values = [float(item["value"][1]) for item in result]
        if not values:
            empty.append(f"{where}: {expr}")
        elif not any(math.isfinite(value) for value in values):
            not_finite.append(f"{where}: {expr} = {values}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert not not_finite, "panels without a finite value:\n" + "\n".join(not_finite)
    assert prometheus.value('sum(increase(ocr_engine_errors_total{code="engine_error"}[5m]))') > 0
    assert prometheus.value('sum(increase(ocr_finish_reasons_total{finish_reason="length"}[5m]))') > 0
    assert prometheus.value('sum(increase(ocr_jobs_total{status="cancelled"}[5m]))') > 0
    missing = [name for name in COMMUNITY_DJANGO_SERIES if not prometheus.query(f'{name}{{job="my-ocr-api"}}')]
    assert not missing, f"django-prometheus series missing: {missing}"
    assert prometheus.value('sum(django_http_exceptions_total_by_view_total{view="ocr:job"})') >= 3


def detached_job(app: AppServer, token: str, data: bytes) -> list[dict[str, Any]]:
    """A job through the job API (detached: it counts in the queue's metrics), followed to its end."""
    headers = {"Authorization": f"Bearer {token}"}
    submitted = httpx.post(f"{app.url}/api/jobs", files={"file": ("page.png", data)}, headers=headers, timeout=30)
    assert submitted.status_code == 202, submitted.text
    events_url = app.url + submitted.json()["jobs"][0]["events_url"]
    body = httpx.get(events_url, headers=headers, timeout=60).content
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def sign_in_after_a_typo(app: AppServer, username: str) -> None:
    """A wrong password, then the right one: the sign-in limit reads its failure counter from the cache."""
    url = f"{app.url}/api/auth/token"
    assert httpx.post(url, data={"username": username, "password": "typo"}).status_code == 401
    assert httpx.post(url, data={"username": username, "password": PASSWORD}).status_code == 200


def open_a_stale_job_link(app: AppServer, username: str) -> None:
    """A signed-in browser opens the page of a job that does not exist: the view raises Http404."""
    with httpx.Client(base_url=app.url, timeout=10) as browser:
        browser.get("/accounts/login/")
        signed_in = browser.post(
            "/accounts/login/",
            data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
            headers={"Referer": f"{app.url}/accounts/login/"},
        )
        assert signed_in.status_code == 302, signed_in.text[:500]
        assert browser.get("/jobs/00000000-0000-4000-8000-000000000000/").status_code == 404


def leave_early(app: AppServer, token: str, pdf: bytes) -> None:
    """A client that reads the first frame of a slow PDF and hangs up: the job is cancelled."""
    with httpx.stream(
        "POST",
        f"{app.url}/api/ocr/pdf",
        files={"file": ("doc.pdf", pdf)},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ) as response:
        next(response.iter_lines())


def test_alert_rules_load_and_evaluate_in_prometheus(prometheus: Prometheus) -> None:
    def evaluated() -> bool:
        groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) == 11
        assert all(rule["health"] == "ok" for rule in rules), [r for r in rules if r["health"] != "ok"]
        return all(rule.get("lastEvaluation", "").startswith("20") for rule in rules)

    prometheus.wait(evaluated, 10, "evaluating the alert rules")


def test_stream_of_known_duration_is_timed_to_its_last_byte(app: AppServer, fake: Any, user_token: str) -> None:
    """A stream the engine takes at least 1.5 s to produce (15 tokens 0.1 s apart) appears in the duration
    histogram as that long, although its first byte (the view's return) came before the engine's first token."""
    fake.push_script({"tokens": 15, "token_delay": 0.1})
    before = scrape_app(app)
    with httpx.stream(
        "POST",
        f"{app.url}/api/ocr/image",
        files={"file": ("page.png", SAMPLES["short"].render())},
        headers={"Authorization": f"Bearer {user_token}"},
        timeout=30,
    ) as response:
        for _ in response.iter_bytes():
            pass
    after = scrape_app(app)
    labels = (("method", "POST"), ("path", "/api/ocr/image"))

    def delta(name: str, extra: tuple[tuple[str, str], ...] = ()) -> float:
        key = (name, tuple(sorted(labels + extra)))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("http_request_duration_seconds_count") == 1
    recorded = delta("http_request_duration_seconds_sum")
    first_byte = delta("http_time_to_first_byte_seconds_sum")
    assert recorded >= 1.4, recorded  # the fake engine cannot be faster than its delays
    assert recorded - first_byte >= 1.3, (recorded, first_byte)  # the tokens came after the first byte
    assert delta("http_request_duration_seconds_bucket", (("le", "1.0"),)) == 0
    assert delta("http_request_duration_seconds_bucket", (("le", "+Inf"),)) == 1


# --- several processes ------------------------------------------------------------------------------------


def test_several_daphne_processes_report_one_set_of_metrics(fake: Any, app_server: AppServers) -> None:
    """deploy/serve.py runs two Daphne processes on one socket; any scrape reports what both did."""
    server = app_server({"OCR_ENGINE": "openai", "LLM_BASE_URL": fake.base_url}, name="multiprocess", workers=2)
    url = server.url
    metrics = Path(server.env["PROMETHEUS_MULTIPROC_DIR"])
    try:
        httpx.post(f"{url}/api/auth/register", json={"username": "multi", "password": "correct horse battery"})
        token = httpx.post(
            f"{url}/api/auth/token", data={"username": "multi", "password": "correct horse battery"}
        ).json()["access_token"]
        png = SAMPLES["short"].render()
        with ThreadPoolExecutor(max_workers=8) as pool:
            streams = [pool.submit(ocr_url, url, token, png) for _ in range(16)]
            assert all(stream.result() for stream in streams)
        pids = {int(m) for m in re.findall(r"_(\d+)\.db", " ".join(os.listdir(metrics)))}
        assert len(pids) == 2, f"both workers should have served requests: {pids}"
        scrapes = [scrape_url(url) for _ in range(8)]
        for sample in scrapes:
            assert sample[("ocr_requests_total", (("kind", "image"),))] == 16
            assert sample[("users_total", ())] == 1
            assert sample[("http_in_flight_requests", ())] == 1  # the scrape itself
        # A worker that dies is replaced; what it counted stays, its live gauges go.
        dead = min(pids)
        os.kill(dead, signal.SIGKILL)
        wait_until(
            lambda: not (metrics / f"gauge_livesum_{dead}.db").exists(),
            timeout=15,
            what="the dead worker's live gauges are gone",
        )
        assert scrape_url(url)[("ocr_requests_total", (("kind", "image"),))] == 16
    finally:
        server.stop()
    assert server.process.returncode == 0


def ocr_url(url: str, token: str, png: bytes) -> bool:
    response = httpx.post(
        f"{url}/api/ocr/image",
        files={"file": ("page.png", png)},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    return response.status_code == 200 and b'"type":"end"' in response.content


def scrape_url(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
