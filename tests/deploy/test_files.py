"""The deployment files agree with each other and with the daemon: the compose services are wired
by the names and ports the other files use, the settings files load, the broker config starts a
real Mosquitto, and the systemd unit is hardened. There is no container engine here, so compose
and the Containerfile are checked structurally."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from meter.config import load_settings
from tests.conftest import MOSQUITTO, free_port, wait_port
from tests.deploy.tools import DEPLOY, ROOT
from tests.missing import missing

#: Keys a compose service may use (the subset of the Compose Specification these files need).
_SERVICE_KEYS = frozenset({
    "image", "build", "restart", "ports", "volumes", "environment", "command", "depends_on",
    "read_only", "tmpfs", "cap_drop", "security_opt", "stop_grace_period", "healthcheck", "user",
    "profiles", "hostname",
})


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def _unit() -> dict[str, dict[str, list[str]]]:
    """meter.service as section -> key -> values (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = ""
    for raw in (DEPLOY / "meter.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections.setdefault(current, {})
            continue
        key, _, value = line.partition("=")
        sections[current].setdefault(key, []).append(value)
    return sections


# --- compose.yaml -------------------------------------------------------------------------------

def test_compose_runs_the_five_services() -> None:
    """mosquitto, meter, prometheus, alertmanager and grafana, and rabbitmq only in the durable
    profile; each has an image and only known keys."""
    services = _compose()["services"]
    assert ["mosquitto", "rabbitmq", "meter", "prometheus", "alertmanager", "grafana"] == list(
        services)
    assert {"rabbitmq": ["durable"]} == {
        name: s["profiles"] for name, s in services.items() if "profiles" in s}
    for name, service in services.items():
        assert "image" in service, name
        assert set() == set(service) - _SERVICE_KEYS, name


def test_compose_dependencies_name_services_that_exist() -> None:
    """meter waits for the broker, Prometheus for the meter and Alertmanager, Grafana for
    Prometheus."""
    services = _compose()["services"]
    assert {"meter": ["mosquitto"], "prometheus": ["meter", "alertmanager"],
            "grafana": ["prometheus"]} == {
        name: s["depends_on"] for name, s in services.items() if "depends_on" in s}


def test_compose_volumes_are_declared_or_files_in_the_repository() -> None:
    """Named volumes are declared at the top level; bind mounts point at files that exist."""
    doc = _compose()
    declared = set(doc["volumes"])
    used = set()
    for name, service in doc["services"].items():
        for mount in service.get("volumes", []):
            source, target, *_ = mount.split(":")
            assert target.startswith("/"), (name, mount)
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
            else:
                used.add(source)
    assert declared == used


def test_compose_publishes_ports_on_loopback_only() -> None:
    """Nothing in the stack listens on the host's public interfaces."""
    ports = {name: s.get("ports", []) for name, s in _compose()["services"].items()}
    assert {"mosquitto": ["127.0.0.1:1883:1883"], "rabbitmq": ["127.0.0.1:1884:1883"],
            "meter": [], "prometheus": ["127.0.0.1:9090:9090"],
            "alertmanager": ["127.0.0.1:9093:9093"], "grafana": ["127.0.0.1:3000:3000"]} == ports


def test_compose_meter_environment_is_valid_for_the_daemon() -> None:
    """The meter's METER_* variables load as settings: broker is the mosquitto service, /metrics
    listens where Prometheus scrapes it, the database is on the meter's volume."""
    meter = _compose()["services"]["meter"]
    settings = load_settings({}, environ=meter["environment"])
    assert ("mosquitto", 1883, False) == (settings.broker.host, settings.broker.port, settings.broker.tls)
    assert ("0.0.0.0", 9464) == settings.metrics_addr  # noqa: S104 - inside the container network
    assert Path("/var/lib/meter/meter.db") == settings.db
    assert "meter-data:/var/lib/meter" in meter["volumes"]
    contracts = next(m for m in meter["volumes"] if m.endswith(f":{settings.contracts}:ro"))
    assert (DEPLOY / contracts.split(":")[0]).is_file()


def test_compose_durable_override_points_the_meter_at_rabbitmq_with_mqtt_3_1_1() -> None:
    """compose.durable.yaml: the meter's environment merged with it loads as settings for the
    rabbitmq service at MQTT 3.1.1, and the meter waits for that broker."""
    meter = _compose()["services"]["meter"]
    durable = yaml.safe_load((DEPLOY / "compose.durable.yaml").read_text())["services"]["meter"]
    assert ["rabbitmq"] == durable["depends_on"]
    settings = load_settings({}, environ={**meter["environment"], **durable["environment"]})
    assert ("rabbitmq", 1883, "3.1.1") == (settings.broker.host, settings.broker.port,
                                            settings.mqtt_version)
    assert "mqtt.listeners.tcp.default = 1883" in (DEPLOY / "rabbitmq.conf").read_text()


def test_compose_meter_is_built_from_the_containerfile_and_locked_down() -> None:
    """The meter image is built from the repository root with deploy/Containerfile, runs with a
    read-only root, no capabilities and no privilege gain."""
    meter = _compose()["services"]["meter"]
    assert {"context": "..", "dockerfile": "deploy/Containerfile"} == meter["build"]
    assert (DEPLOY / meter["build"]["context"] / meter["build"]["dockerfile"]).resolve() == (
        DEPLOY / "Containerfile")
    assert (True, ["ALL"], ["no-new-privileges:true"]) == (
        meter["read_only"], meter["cap_drop"], meter["security_opt"])


def test_prometheus_scrapes_the_meter_service_and_loads_the_rules() -> None:
    """prometheus.yml's target is the compose meter on the port the meter listens on, and the rule
    file it names is mounted beside it."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert ("meter", ["meter:9464"]) == (job["job_name"], job["static_configs"][0]["targets"])
    prometheus = _compose()["services"]["prometheus"]
    for rule_file in config["rule_files"]:
        assert f"./{rule_file}:/etc/prometheus/{rule_file}:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_prometheus_sends_alerts_to_the_compose_alertmanager() -> None:
    """prometheus.yml's `alerting:` block names the alertmanager service on the port it listens
    on, and Alertmanager reads deploy/alertmanager.yml, mounted where its command says, with its
    cluster port off (one instance)."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (manager,) = config["alerting"]["alertmanagers"]
    assert [{"targets": ["alertmanager:9093"]}] == manager["static_configs"]
    alertmanager = _compose()["services"]["alertmanager"]
    assert ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager",
            "--web.listen-address=:9093", "--cluster.listen-address="] == alertmanager["command"]
    assert ["./alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro",
            "alertmanager-data:/alertmanager"] == alertmanager["volumes"]


def test_grafana_datasource_is_the_compose_prometheus() -> None:
    """The provisioned datasource points at the prometheus service's listen port, with the uid the
    dashboard can use, and the provisioning and dashboard folders are mounted where they are read."""
    doc = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    (source,) = doc["datasources"]
    assert ("prometheus", "prometheus", "http://prometheus:9090") == (
        source["type"], source["uid"], source["url"])
    assert "--web.listen-address=:9090" in _compose()["services"]["prometheus"]["command"]
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/license-meter.yaml").read_text())
    (provider,) = providers["providers"]
    grafana = _compose()["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (DEPLOY / "grafana/dashboards" / Path(home).name).is_file()


def test_grafana_admin_password_is_never_a_default() -> None:
    """Compose refuses to start Grafana without an admin password from the environment."""
    env = _compose()["services"]["grafana"]["environment"]
    assert "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD}" == env["GF_SECURITY_ADMIN_PASSWORD"]


# --- Containerfile --------------------------------------------------------------------------------

def _instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Containerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_containerfile_builds_from_the_repository_and_runs_as_a_user() -> None:
    """Two stages on Python 3.11; it copies only files that exist in the repository, runs as a
    dedicated non-root user and starts `meter serve` with /metrics on the port Prometheus scrapes."""
    steps = _instructions()
    froms = [arg for op, arg in steps if op == "FROM"]
    assert 2 == len(froms)
    assert all(f.startswith("docker.io/library/python:3.11-") for f in froms)
    for op, arg in steps:
        if op == "COPY" and not arg.startswith("--from"):
            *sources, _target = arg.split()
            for source in sources:
                assert (ROOT / source).exists(), source
    assert [("USER", "meter")] == [(op, arg) for op, arg in steps if op == "USER"]
    assert ("EXPOSE", "9464") in steps
    assert ("ENTRYPOINT", '["meter", "serve"]') in steps
    env = " ".join(arg for op, arg in steps if op == "ENV")
    assert "METER_METRICS_ADDR=0.0.0.0:9464" in env
    assert ("VOLUME", '["/var/lib/meter"]') in steps
    assert "METER_DB=/var/lib/meter/meter.db" in env


# --- meter.service and meter.toml -----------------------------------------------------------------

def test_meter_toml_loads_as_daemon_settings() -> None:
    """The example settings file is valid for `meter serve --config` and says what it shows."""
    settings = load_settings({"config": str(DEPLOY / "meter.toml"), "password": "unused"}, environ={})
    assert ("mqtt.example.internal", 8883, True) == (
        settings.broker.host, settings.broker.port, settings.broker.tls)
    assert ("license-meter", "license-meter") == (settings.username, settings.client_id)
    assert Path("/var/lib/meter/meter.db") == settings.db
    assert ("127.0.0.1", 9464) == settings.metrics_addr
    assert ("FULL", 0xFFFFFFFF) == (settings.synchronous, settings.session_expiry)


def test_meter_service_is_hardened() -> None:
    """Dedicated user, read-only system, no privileges, restarted on failure (not on bad config)."""
    service = _unit()["Service"]
    expected = {
        "User": ["meter"], "Group": ["meter"], "ProtectSystem": ["strict"], "ProtectHome": ["yes"],
        "NoNewPrivileges": ["yes"], "PrivateTmp": ["yes"], "PrivateDevices": ["yes"],
        "CapabilityBoundingSet": [""], "Restart": ["on-failure"], "RestartPreventExitStatus": ["2"],
        "StateDirectory": ["meter"], "ReadWritePaths": ["/var/lib/meter"],
        "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
        "SystemCallFilter": ["@system-service", "~@privileged @resources"],
    }
    assert expected == {key: service.get(key) for key in expected}


def test_meter_service_runs_the_example_config_with_its_db_writable() -> None:
    """ExecStart reads /etc/meter/meter.toml; the database that file names lies in ReadWritePaths,
    and the password file it names is the unit's credential."""
    service = _unit()["Service"]
    assert ["/opt/license-meter/bin/meter serve --config /etc/meter/meter.toml"] == service["ExecStart"]
    settings = load_settings({"config": str(DEPLOY / "meter.toml"), "password": "unused"}, environ={})
    (writable,) = service["ReadWritePaths"]
    assert settings.db.parent == Path(writable)
    toml_text = (DEPLOY / "meter.toml").read_text()
    (credential,) = service["LoadCredential"]
    name = credential.split(":")[0]
    assert f'password_file = "/run/credentials/meter.service/{name}"' in toml_text


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` reports no unknown key or bad value (the binary path is swapped
    for one that exists here)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the systemd package)")
    unit = tmp_path / "meter.service"
    unit.write_text((DEPLOY / "meter.service").read_text().replace(
        "/opt/license-meter/bin/meter", shutil.which("true") or "/bin/true"))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=30, check=False)
    assert (0, "") == (result.returncode, result.stderr.strip())


# --- mosquitto.conf ------------------------------------------------------------------------------

def test_mosquitto_conf_keeps_the_meter_queue() -> None:
    """The single-machine profile: persistence saved every second by time (not per change), no
    count limit on queued messages, a byte bound of 1 GiB (a day's backlog), $SYS every 10 s."""
    settings = dict(line.split(None, 1) for line in (DEPLOY / "mosquitto.conf").read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    assert "10" == settings["sys_interval"]
    assert {"persistence": "true", "autosave_on_changes": "false", "autosave_interval": "1",
            "max_queued_messages": "0", "max_queued_bytes": "1073741824"} == {
        k: settings[k] for k in ("persistence", "autosave_on_changes", "autosave_interval",
                                 "max_queued_messages", "max_queued_bytes")}
    assert "persistent_client_expiration" not in settings


@pytest.mark.broker
def test_mosquitto_conf_starts_a_real_broker(tmp_path: Path) -> None:
    """The compose broker config is a valid Mosquitto 2 config (paths and port moved into tmp_path)."""
    if not Path(MOSQUITTO).exists():
        missing(f"mosquitto ({MOSQUITTO})", "mosquitto")
    os.chmod(tmp_path, 0o777)  # noqa: S103 - mosquitto run as root drops to its own user
    port = free_port()
    conf = (DEPLOY / "mosquitto.conf").read_text()
    conf = conf.replace("listener 1883", f"listener {port} 127.0.0.1")
    conf = conf.replace("/mosquitto/data/", f"{tmp_path}/")
    (tmp_path / "mosquitto.conf").write_text(conf)
    log = (tmp_path / "log").open("wb")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(tmp_path / "mosquitto.conf")], stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    try:
        wait_port(port)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)


# --- Grafana dashboard ----------------------------------------------------------------------------

def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DEPLOY / "grafana/dashboards/license-meter.json").read_text())
    return doc


def test_dashboard_has_the_panels_an_operator_watches() -> None:
    """Health, money and seats at a glance, the pools in excess, utilization, the grace clock,
    peaks, overage, event and reject rates, ingest latency and add-on shortfall, in this order."""
    assert [
        "Broker", "Store", "Since last event", "Store size", "Store growth per day", "Disk free",
        "Pools in excess now", "Overage seats billable so far", "Utilization", "Events (24h)",
        "Reconnects (24h)", "Version",
        "Pools in excess now", "Utilization now (top 20)",
        "Active vs licensed", "Excess and grace clock", "Period peak and billable peak",
        "Overage seats billable so far", "Events per second", "Rejected per second",
        "Ingest latency (event time to commit)", "Batch commit time", "Add-on shortfall",
    ] == [p["title"] for p in _dashboard()["panels"]]


def test_dashboard_panels_use_the_datasource_variable_and_do_not_overlap() -> None:
    """Every query panel and query uses ${datasource}; ids are unique; no two panels share a grid
    cell; the only panel without queries is the text that says why there is no disk-free gauge."""
    dash = _dashboard()
    assert "license-meter" == dash["uid"]
    cells: set[tuple[int, int]] = set()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert [("text", "Disk free")] == [(p["type"], p["title"]) for p in dash["panels"]
                                       if "targets" not in p]
    for panel in dash["panels"]:
        if "targets" in panel:
            assert "${datasource}" == panel["datasource"]["uid"]
            assert all("${datasource}" == t["datasource"]["uid"] for t in panel["targets"])
        pos = panel["gridPos"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert set() == cells & mine, panel["title"]
        assert pos["x"] + pos["w"] <= 24
        cells |= mine


def _units(panel: dict[str, Any]) -> dict[str, str]:
    """The unit of each query (by refId) or table column (by name) of a panel: the panel's default
    unless an override for that query or column sets one."""
    config = panel["fieldConfig"]
    units = {t["refId"]: config["defaults"]["unit"] for t in panel["targets"]}
    for override in config["overrides"]:
        for prop in override["properties"]:
            if prop["id"] == "unit":
                units[override["matcher"]["options"]] = prop["value"]
    return units


#: (panel type, title) -> the unit of each query or column: counts of users and seats are
#: "short", durations "s", sizes "bytes", shares "percent", rates "cps", states "none".
UNITS: dict[tuple[str, str], dict[str, str]] = {
    ("stat", "Broker"): {"A": "none"},
    ("stat", "Store"): {"A": "none"},
    ("stat", "Since last event"): {"A": "s"},
    ("stat", "Store size"): {"A": "bytes"},
    ("stat", "Store growth per day"): {"A": "bytes"},
    ("stat", "Pools in excess now"): {"A": "short"},
    ("stat", "Overage seats billable so far"): {"A": "short"},
    ("stat", "Utilization"): {"A": "percent"},
    ("stat", "Events (24h)"): {"A": "short"},
    ("stat", "Reconnects (24h)"): {"A": "short"},
    ("stat", "Version"): {"A": "none"},
    ("table", "Pools in excess now"): {"A": "short", "B": "short", "C": "short", "D": "short",
                                       "E": "short", "Grace left": "s"},
    ("bargauge", "Utilization now (top 20)"): {"A": "percent"},
    ("timeseries", "Active vs licensed"): {"A": "short", "B": "short", "C": "percent"},
    ("timeseries", "Excess and grace clock"): {"A": "short", "B": "s"},
    ("timeseries", "Period peak and billable peak"): {"A": "short", "B": "short"},
    ("timeseries", "Overage seats billable so far"): {"A": "short", "B": "short"},
    ("timeseries", "Events per second"): {"A": "cps", "B": "cps", "C": "cps"},
    ("timeseries", "Rejected per second"): {"A": "cps"},
    ("timeseries", "Ingest latency (event time to commit)"): {"A": "s", "B": "s"},
    ("timeseries", "Batch commit time"): {"A": "s", "B": "s", "C": "cps"},
    ("bargauge", "Add-on shortfall"): {"A": "short"},
}


def test_every_dashboard_panel_has_the_right_unit() -> None:
    """Each query and table column of each panel shows the unit of what it measures."""
    assert UNITS == {(p["type"], p["title"]): _units(p) for p in _dashboard()["panels"]
                     if "targets" in p}


def test_dashboard_lists_the_pools_in_excess_sorted_by_grace_remaining() -> None:
    """A table of instant queries: the grace left of each pool whose excess is above 0 (the 50
    soonest to run out), beside its excess, active, licensed and billable overage, merged into
    one row per pool and sorted by grace left, soonest first."""
    (table,) = [p for p in _dashboard()["panels"] if p["type"] == "table"]
    assert "Pools in excess now" == table["title"]
    sel = 'account=~"$account",pool=~"$pool"'
    excess = f"(meter_excess_users{{{sel}}} > 0)"
    assert [
        ("A", f"bottomk(50, meter_grace_remaining_seconds{{{sel}}} and {excess})"),
        ("B", f"meter_excess_users{{{sel}}} > 0"),
        ("C", f"meter_active_users{{{sel}}} and {excess}"),
        ("D", f"meter_licensed_seats{{{sel}}} and {excess}"),
        ("E", f"meter_period_billable_overage_seats{{{sel}}} and {excess}"),
    ] == [(t["refId"], t["expr"]) for t in table["targets"]]
    assert all((True, "table") == (t["instant"], t["format"]) for t in table["targets"])
    steps = {t["id"]: t["options"] for t in table["transformations"]}
    assert ["merge", "organize", "sortBy"] == [t["id"] for t in table["transformations"]]
    assert "Grace left" == steps["organize"]["renameByName"]["Value #A"]
    assert [{"field": "Grace left", "desc": False}] == steps["sortBy"]["sort"]


#: Outermost functions that bound the number of series a query returns, whatever "All" selects.
_BOUNDED = re.compile(r"^(\d+ \* )?(sum|count|min|max|topk|bottomk|histogram_quantile|time)\(")


def test_no_panel_draws_a_line_per_pool_of_all_accounts() -> None:
    """With "All" of 1,000 accounts, a time series or bar panel must not draw 2,000+ series: every
    such query is a sum, a count, a min or max, a topk or bottomk, or a quantile; per-pool lists
    are the excess table (pools in excess only, at most 50) and top-N bars."""
    for panel in _dashboard()["panels"]:
        if panel["type"] in ("timeseries", "bargauge"):
            for t in panel["targets"]:
                assert _BOUNDED.match(t["expr"]), (panel["title"], t["expr"])


def test_dashboard_says_there_is_no_price_or_disk_metric_instead_of_inventing_one() -> None:
    """Money needs a price metric and free space a host metric; the meter exports neither, so the
    panels say so and show seats and the store's size and growth instead."""
    panels = {(p["type"], p["title"]): p for p in _dashboard()["panels"]}
    for key in (("stat", "Overage seats billable so far"), ("timeseries", "Overage seats billable so far")):
        assert "exports no price metric" in panels[key]["description"]
    assert "exports no disk-free metric" in panels["text", "Disk free"]["options"]["content"]


def test_dashboard_thresholds_on_staleness_and_store_size() -> None:
    """"Since last event" turns orange after 5 minutes and red after an hour; "Store size" orange
    from 20 GiB and red from 50 GiB."""
    panels = {p["title"]: p for p in _dashboard()["panels"] if p["type"] == "stat"}

    def steps(title: str) -> list[tuple[str, float | None]]:
        return [(s["color"], s["value"])
                for s in panels[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]]

    assert [("green", None), ("orange", 300), ("red", 3600)] == steps("Since last event")
    assert [("green", None), ("orange", 20 * 2**30), ("red", 50 * 2**30)] == steps("Store size")


def test_dashboard_annotates_period_rollovers_and_finalization() -> None:
    """Two Prometheus annotations: a new billing period per account (its period start changed),
    and the stretch while an account's ended period waits for finalization, by reason."""
    annotations = {a["name"]: a for a in _dashboard()["annotations"]["list"]}
    assert ["Period rollover", "Finalization"] == list(annotations)
    acc = 'account=~"$account"'
    # Later than any start of the hour before: a restart, which exports 0 until the state is
    # rebuilt and then the same start again, is no rollover.
    start = f"meter_period_start_timestamp_seconds{{{acc}}}"
    assert (f"count by (account) ({start} > max_over_time({start}[1h] offset 1m))"
            == annotations["Period rollover"]["expr"])
    assert (f"max by (account, reason) (meter_finalization_waiting{{{acc}}}) > 0"
            == annotations["Finalization"]["expr"])
    assert all("${datasource}" == a["datasource"]["uid"] and a["enable"] for a in annotations.values())
