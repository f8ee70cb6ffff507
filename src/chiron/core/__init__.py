"""Code shared by every party: cryptography, file formats, schemas, attestation checks.

Nothing here imports torch or another Chiron package, and nothing here decides where
data goes: callers pass paths and streams in.
"""
