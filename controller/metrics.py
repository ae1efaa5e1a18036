"""Prometheus metrics of one controller, in their own registry (several controllers can live in
one process: tests, benchmarks). Names follow Prometheus conventions (_total, _seconds)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controller.domain.ingest import REASONS
from controller.security.broker_stats import SYS_STATS


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.received = Counter(
            "idufleet_messages_received", "MQTT messages received from devices", registry=r
        )
        self.stored = Counter(
            "idufleet_messages_stored", "Messages newly stored (each exactly once)", registry=r
        )
        self.rows = Counter("idufleet_metric_rows_stored", "Metric samples stored", registry=r)
        self.duplicates = Counter(
            "idufleet_messages_duplicate",
            "Messages already in the store (redelivery, a second controller)",
            registry=r,
        )
        self.death_cleared = Counter(
            "idufleet_death_cleared",
            "Zero-length retained messages on death: devices back, clearing their retained DEATH",
            registry=r,
        )
        self.rejected = Counter(
            "idufleet_messages_rejected", "Messages refused, by reason", ["reason"], registry=r
        )
        for reason in REASONS:
            self.rejected.labels(reason)
        self.batch_size = Histogram(
            "idufleet_batch_messages",
            "Messages per store commit",
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "idufleet_batch_commit_seconds",
            "Store commit latency",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.store_errors = Counter(
            "idufleet_store_errors", "Failed store commits (retried)", registry=r
        )
        self.quarantined = Counter(
            "idufleet_messages_quarantined",
            "Messages the store refused to commit, kept in the quarantine table, by driver error",
            ["kind"],
            registry=r,
        )
        self.updates_refused = Counter(
            "idufleet_device_updates_refused",
            "Device-state updates the store refused (the messages themselves were stored)",
            registry=r,
        )
        self.late = Counter(
            "idufleet_messages_late",
            "Messages older than the replay window, handed to the store's key to decide",
            registry=r,
        )
        self.replayed = Counter(
            "idufleet_quarantine_replayed",
            "Quarantined messages replayed, by outcome",
            ["outcome"],
            registry=r,
        )
        self.store_reconnects = Gauge(
            "idufleet_store_reconnects", "Store connections reopened since start", registry=r
        )
        self.store_failing = Gauge(
            "idufleet_store_failing_seconds",
            "Seconds every store call has been failing (0 while the store works)",
            registry=r,
        )
        self.unhealthy = Gauge(
            "idufleet_unhealthy",
            "1 while /health answers 503, by reason",
            ["reason"],
            registry=r,
        )
        self.broker = {
            name: Gauge(
                f"idufleet_broker_{name}",
                f"The broker's {topic} (Mosquitto $SYS, cumulative since the broker started)",
                registry=r,
            )
            for topic, name in SYS_STATS.items()
        }
        self.commands = Counter(
            "idufleet_commands_sent", "Commands published to devices", ["op"], registry=r
        )
        self.confirms = Counter(
            "idufleet_confirms_sent", "CONFIRMs published to devices that opted in", registry=r
        )
        self.confirm_ranges = Counter(
            "idufleet_confirm_ranges_sent",
            "Ranges of stored messages named in CONFIRMs",
            registry=r,
        )
        self.online = Gauge("idufleet_devices_online", "Devices currently online", registry=r)
        self.known = Gauge("idufleet_devices_known", "Devices in the registry cache", registry=r)
        self.mqtt_up = Gauge(
            "idufleet_mqtt_connected", "1 while connected to the broker", registry=r
        )
        self.ts_implausible = Gauge(
            "idufleet_messages_ts_implausible",
            "Messages stored under rule ts_implausible (docs/PROTOCOL.md section 5): their ts was"
            " outside the plausibility window and was replaced (counts up from controller start)",
            registry=r,
        )

    def bind(
        self,
        online: Callable[[], float],
        known: Callable[[], float],
        up: Callable[[], float],
        ts_implausible: Callable[[], float] | None = None,
    ) -> None:
        self.online.set_function(online)
        self.known.set_function(known)
        self.mqtt_up.set_function(up)
        if ts_implausible is not None:
            self.ts_implausible.set_function(ts_implausible)

    def rejected_count(self, reason: str) -> float:
        v = self.registry.get_sample_value("idufleet_messages_rejected_total", {"reason": reason})
        return v or 0.0
