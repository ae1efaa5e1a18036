"""The operator surface: JSON HTTP API (aiohttp) and Prometheus metrics (prometheus-client).
Calls the running Controller's methods; holds no state of its own."""
