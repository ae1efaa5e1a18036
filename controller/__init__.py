"""The idufleet fleet controller: verified ingest, presence, IDU store, operator API.

Layout: domain/ (pure state machines, no I/O), store/ (SQLite and PostgreSQL behind one
interface), transport/ (the paho adapter), api/ (HTTP + Prometheus), app.py (wiring).
"""
