"""Commands in the store: the controller's command epoch, commands sent, and settling them with
the ACKs a batch brings (called from store/writes.py inside the batch transaction)."""

from __future__ import annotations

import json
import time
from typing import Any

from controller.domain.records import Accepted
from controller.store.core import StoreCore
from protocol.messages import R_BAD_TAG


class Commands(StoreCore):
    def next_controller_epoch(self) -> int:
        """A fresh command epoch for this controller process: persisted, strictly increasing."""
        with self._tx():
            rows = self._execute(
                "INSERT INTO controller_state (name, value) VALUES ('epoch', 1)"
                " ON CONFLICT (name) DO UPDATE SET value = controller_state.value + 1"
                " RETURNING value"
            )
        return int(rows[0][0])

    def record_command(
        self,
        epoch: int,
        seq: int,
        device: str,
        op: int,
        args: dict[str, Any] | None,
        issued: float,
        expires: int,
    ) -> None:
        with self._tx():
            self._execute(
                "INSERT INTO commands (epoch, seq, device_id, op, args, issued, expires, status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'sent')",
                (
                    epoch,
                    seq,
                    device,
                    op,
                    json.dumps(args) if args is not None else None,
                    issued,
                    expires,
                ),
            )

    def get_command(self, epoch: int, seq: int) -> dict[str, Any] | None:
        rows = self._execute(
            "SELECT epoch, seq, device_id, op, args, issued, expires, status, result, acked, data"
            " FROM commands WHERE epoch = ? AND seq = ?",
            (epoch, seq),
        )
        if not rows:
            return None
        r = rows[0]
        status = r[7]
        if status == "sent" and r[6] < time.time():
            status = "expired"
        return {
            "epoch": r[0],
            "seq": r[1],
            "device": r[2],
            "op": r[3],
            "args": json.loads(r[4]) if r[4] else None,
            "issued": r[5],
            "expires": r[6],
            "status": status,
            "result": r[8],
            "acked": r[9],
            "data": json.loads(r[10]) if r[10] else None,
        }

    def last_command_data(self, device: str, op: int) -> tuple[float, dict[str, Any]] | None:
        """(acked, data) of the newest command `op` the device answered with data (its last
        diagnostics, say), or None."""
        rows = self._execute(
            "SELECT acked, data FROM commands WHERE device_id = ? AND op = ? AND data IS NOT NULL"
            " AND acked IS NOT NULL ORDER BY acked DESC LIMIT 1",
            (device, op),
        )
        if not rows:
            return None
        return float(rows[0][0]), json.loads(rows[0][1])

    def _apply_acks(self, fresh: list[Accepted]) -> None:
        """Settle the commands that the batch's new ACKs answer. Only the device a command was
        sent to can settle it, and only once (acked IS NULL). An ACK with result 5 (bad tag)
        settles nothing: it names the (epoch, seq) of a message whose tag did not verify, which
        anyone able to publish on the device's cmd topic could have chosen (docs/PROTOCOL.md
        section 7, ACK); the command stays open for the real one's answer."""
        rows = [
            (
                "ok" if m.ack.result == 0 else "failed",
                m.ack.result,
                m.received,
                json.dumps(m.ack.data) if m.ack.data is not None else None,
                m.ack.cmd_epoch,
                m.ack.cmd_seq,
                m.device,
            )
            for m in fresh
            if m.ack is not None and m.ack.result != R_BAD_TAG
        ]
        if rows:
            self._executemany(
                "UPDATE commands SET status = ?, result = ?, acked = ?, data = ?"
                " WHERE epoch = ? AND seq = ? AND device_id = ? AND acked IS NULL",
                rows,
            )
