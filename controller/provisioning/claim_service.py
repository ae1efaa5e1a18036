"""The claim responder: answers boards that publish a claim request on the bootstrap topics.

`ClaimResponder.handle(topic, payload)` is the whole decision (token lookup, MAC, single use,
device + broker account creation, the sealed answer) with the store and the broker admin
injected; `ClaimService` is the thin paho shell around it (its own connection and its own store
connection, so it can run beside the controller or inside its process). Every outcome is counted
in `idufleet_claims_total{result}`; secrets and keys are never logged."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from controller import registry
from controller.errors import ControllerError, KeyWrapError, SecurityError, TransportError
from controller.keys import MasterKey
from controller.provisioning import tokens as T
from controller.security import dynsec
from controller.store.base import Store
from controller.transport import blocking
from controller.transport.blocking import BlockingClient
from protocol import ProtocolError
from protocol import claim as wire

log = logging.getLogger("idufleet.claim")

CLAIM_USER = "claim"  # the shared bootstrap account every claim bundle carries
BOARD_ROLE = "idu-claim-board"
RESPONDER_ROLE = "idu-claim-responder"
REQ_FILTER = wire.ROOT + "+/" + wire.REQ
RESP_FILTER = wire.ROOT + "+/" + wire.RESP

_STATUS = {T.USED: wire.USED, T.EXPIRED: wire.EXPIRED, T.REFUSED: wire.REFUSED}


def bootstrap_commands(claim_password: str, responder_user: str) -> list[dynsec.Command]:
    """The bootstrap account (publish requests, read answers, nothing else) and the responder
    role, added to an existing account (the controller's). Topics carry only token ids; answers
    are sealed to each board's key, so boards seeing each other's answers learn nothing."""
    return [
        {
            "command": "createRole",
            "rolename": BOARD_ROLE,
            "textname": "boards holding a claim token",
            "acls": [
                {"acltype": "publishClientSend", "topic": REQ_FILTER, "allow": True},
                {"acltype": "subscribePattern", "topic": RESP_FILTER, "allow": True},
                {"acltype": "publishClientReceive", "topic": RESP_FILTER, "allow": True},
            ],
        },
        {
            "command": "createClient",
            "username": CLAIM_USER,
            "password": claim_password,
            "textname": "claim bootstrap account",
            "roles": [{"rolename": BOARD_ROLE}],
        },
        {
            "command": "createRole",
            "rolename": RESPONDER_ROLE,
            "textname": "claim responder",
            "acls": [
                {"acltype": "subscribePattern", "topic": REQ_FILTER, "allow": True},
                {"acltype": "publishClientReceive", "topic": REQ_FILTER, "allow": True},
                {"acltype": "publishClientSend", "topic": RESP_FILTER, "allow": True},
            ],
        },
        {"command": "addClientRole", "username": responder_user, "rolename": RESPONDER_ROLE},
    ]


def ensure_device_account(
    admin: dynsec.DynsecClient, site: str, device: str, password: str
) -> None:
    """Create the device's role and account; if a crashed earlier attempt left them, replace
    them (the new password is the only one handed out)."""
    try:
        admin.create_device(site, device, password)
    except SecurityError:
        admin.run(dynsec.delete_device_commands(site, device), check=False)
        admin.create_device(site, device, password)


class ClaimCounters:
    def __init__(self, reg: CollectorRegistry | None = None) -> None:
        self.registry = reg or CollectorRegistry()
        self.claims = Counter(
            "idufleet_claims", "Claim requests by outcome", ["result"], registry=self.registry
        )
        for r in T.RESULTS:
            self.claims.labels(r)

    def inc(self, result: str) -> None:
        self.claims.labels(result).inc()

    def get(self, result: str) -> float:
        v = self.registry.get_sample_value("idufleet_claims_total", {"result": result})
        return v or 0.0


class ClaimResponder:
    """Decides one request. Not thread-safe (the store is not): call from one thread."""

    def __init__(
        self,
        store: Store,
        master: MasterKey,
        admin: dynsec.DynsecClient | None,
        counters: ClaimCounters | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.store = store
        self.master = master
        self.tokens = T.TokenStore(store, master)
        self.admin = admin  # None: a broker without accounts (demo); identities carry no password
        self.counters = counters or ClaimCounters()
        self.clock = clock
        self.rand = rand

    def handle(self, topic: str, payload: bytes) -> tuple[str, bytes] | None:
        """The answer to publish, or None when the request deserves no answer (malformed,
        unknown token, forged: there is no token secret to authenticate an answer with)."""
        try:
            req = wire.parse_request(topic, payload)
        except ProtocolError as e:
            self._drop(T.MALFORMED, topic, e.code)
            return None
        rec = self.tokens.get(req.token_id)
        if rec is None:
            self._drop(T.UNKNOWN, topic)
            return None
        try:
            secret = self.tokens.secret(rec)
            req.verify(secret)
        except (ProtocolError, KeyWrapError):
            self._drop(T.FORGED, topic)
            return None
        now = self.clock()
        try:
            decision = T.decide(rec, req.public, now)
            ident = self._identity(rec, req, now, decision == T.REDELIVERED)
        except ControllerError as e:
            result = e.code if e.code in _STATUS else T.REFUSED
            self.counters.inc(result)
            log.warning("claim refused", extra={"token": rec.id, "result": result, "why": str(e)})
            return wire.encode_response(req, secret, _STATUS[result])
        self.counters.inc(decision)
        log.info(
            "device claimed",
            extra={"token": rec.id, "device": ident[wire.I_DEVICE], "result": decision},
        )
        return wire.encode_response(req, secret, wire.OK, ident, self.rand(32))

    def _drop(self, result: str, topic: str, detail: str = "") -> None:
        self.counters.inc(result)
        log.warning(
            "claim request dropped", extra={"result": result, "topic": topic[:80], "detail": detail}
        )
        return None

    def _identity(
        self, rec: T.TokenRecord, req: wire.Request, now: float, again: bool
    ) -> dict[int, object]:
        device = rec.device_id if again and rec.device_id else T.device_id_for(rec.zone, rec.id)
        password = dynsec.new_password() if self.admin is not None else None
        if again:
            key = registry.device_key(self.store, self.master, device)
            if self.admin is not None and password is not None:
                self.admin.set_client_password(device, password)
        else:
            if self.admin is not None and password is not None:
                try:
                    ensure_device_account(self.admin, rec.site, device, password)
                except SecurityError as e:
                    raise T.ClaimError(f"broker refused the account: {e}", T.REFUSED) from e
            try:
                with self.store.transaction():
                    if not self.tokens.mark_used(rec.id, device, req.public, now):
                        raise T.ClaimError(f"token {rec.id} was claimed concurrently", T.USED)
                    new = registry.create_device(
                        self.store,
                        self.master,
                        device,
                        rec.site,
                        rec.zone,
                        rec.kind,
                        {"claimed_with": rec.id},
                    )
            except ControllerError:
                if self.admin is not None:  # nothing half-made: take the account back
                    try:
                        self.admin.run(dynsec.delete_device_commands(rec.site, device), False)
                    except SecurityError:
                        log.error("could not remove broker account", extra={"device": device})
                raise
            key = new.key
        return {
            wire.I_DEVICE: device,
            wire.I_KEY: key,
            wire.I_USERNAME: device,
            wire.I_PASSWORD: password,
            wire.I_SITE: rec.site,
            wire.I_ZONE: rec.zone,
            wire.I_KIND: rec.kind,
        }


class ClaimService:
    """paho shell: subscribe to requests, hand each to the responder on one worker thread,
    publish the answer (QoS 1). start()/stop(); raises ControllerError if the broker refuses."""

    def __init__(
        self,
        responder: ClaimResponder,
        host: str,
        port: int,
        username: str = "",
        password: str = "",
        client_id: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.responder = responder
        self._client = BlockingClient(
            host,
            port,
            client_id or f"idufleet-claim-{os.urandom(4).hex()}",
            REQ_FILTER,
            self._on_message,
            username=username,
            password=password,
            v5=False,
            timeout=timeout,
        )
        self._lock = threading.Lock()
        self.handled = 0

    def _on_message(self, client: Any, topic: str, payload: bytes) -> None:
        """paho's network thread: one request at a time, the answer published at QoS 1."""
        with self._lock:
            try:
                out = self.responder.handle(topic, payload)
            except Exception:  # keep serving the others; the board retries
                log.exception("claim responder failed", extra={"topic": topic[:80]})
                return
            self.handled += 1
        if out is not None:
            client.publish(out[0], out[1], qos=1)

    def start(self) -> ClaimService:
        """Connect and subscribe. Raises TransportError naming the fix."""
        try:
            self._client.connect()
        except TransportError as e:
            if e.code == blocking.UNREACHABLE:
                raise TransportError(f"claim service: {e}") from e
            raise TransportError(
                f"broker refused the claim service ({e}): check its account has the "
                "idu-claim-responder role (`idufleet claim setup`)"
            ) from e
        return self

    def stop(self) -> None:
        self._client.close()
