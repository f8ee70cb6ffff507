"""The vendor roots Chiron trusts, shipped with the package and never fetched.

`amd_<product>.pem`: AMD's ASK (or ASVK, for VLEKs) and ARK for Milan, Genoa and Turin.
`intel_sgx_root_ca.pem`: the Intel SGX Root CA, root of every PCK chain and of Intel's
TCB collateral. Replacing a file here changes whom Chiron trusts: do it only from the
vendors' published certificates, and compare fingerprints.
"""
