"""Broker security and device trust material: the project CA and certificates (ca), generated
Mosquitto configs (broker_config) and runtime broker accounts (dynsec). Imports no controller
domain or store code, so provisioning flows and the CLI can call it directly. Errors are
controller.errors.SecurityError (the controller's one exception tree)."""
