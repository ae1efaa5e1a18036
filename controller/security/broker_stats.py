"""The Mosquitto statistics the controller watches: a table, imported by the controller's broker
ACLs (dynsec.controller_acls), the ingest link's subscription and the Prometheus gauges. Imports
nothing."""

# The broker statistics the controller watches ($SYS, published every sys_interval seconds and
# retained), by the name of the Prometheus gauge that mirrors each: idufleet_broker_<name>. The
# controller's broker role may read exactly these (dynsec.controller_acls).
SYS_STATS = {
    # Messages Mosquitto dropped (a client's queue past max_queued_messages/bytes, memory_limit)
    # while it had acknowledged them to the publisher: data lost unless the device still has it.
    "$SYS/broker/publish/messages/dropped": "messages_dropped",
    "$SYS/broker/store/messages/count": "stored_messages",  # held: retained + queued + inflight
    "$SYS/broker/store/messages/bytes": "stored_bytes",
    "$SYS/broker/heap/current": "heap_bytes",
}
DROPPED = "messages_dropped"
