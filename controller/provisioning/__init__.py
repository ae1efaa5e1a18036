"""Field provisioning (docs/PROVISIONING.md): claim tokens and the claim responder, broker
accounts for new devices, key rotation and revocation. Builds on controller.registry,
controller.keys and controller.security.dynsec; the wire format is protocol.claim."""
