"""The untrusted host service: REST API, job store, artifact store, enclave management."""
